"""What an HL7 v2 acknowledgement means for the outbox row (original mode, the ACK rules of docs/hospital-it.md).

============================================  =====================================================
MSA-1 AA (or CA) and MSA-2 = the sent MSH-10   delivered
MSA-1 AE (or CE)                               retry with backoff (the row's limits apply)
MSA-1 AR (or CR)                               parked, with MSA-3 and the ERR segment's text
MSA-2 not the sent MSH-10                      unseen: resent later with the same MSH-10
no MSA, an unparsable answer                   unseen: resent later with the same MSH-10
============================================  =====================================================

MONAI Deploy's gateway takes any ACK as success; here an AA for another message is not one for this message.
"""

from __future__ import annotations

import hl7

from node.dicom.scu import SendOutcome


def _text(msg: hl7.Message, segment: str, *path: int) -> str:
    try:
        seg = msg.segment(segment)
    except KeyError:
        return ""
    try:
        value = seg[path[0]]
        for i in path[1:]:
            value = value[0][i - 1] if isinstance(value, hl7.Field) else value[i - 1]
    except (IndexError, KeyError, TypeError):
        return ""
    return msg.unescape(str(value)).strip()


def reason_text(msg: hl7.Message) -> str:
    """The peer's words: MSA-3 (text message), ERR-3 (error code text), ERR-8 (user message)."""
    parts = [_text(msg, "MSA", 3), _text(msg, "ERR", 3, 2) or _text(msg, "ERR", 3, 1), _text(msg, "ERR", 8)]
    return "; ".join(p for p in parts if p)[:500] or "no reason given"


def classify_ack(answer: bytes, control_id: str) -> SendOutcome:
    """The outcome of one ORU from the peer's answer block (see the module docstring)."""
    try:
        msg = hl7.parse(answer.decode("utf-8", errors="replace").strip("\r\n"))
        code = _text(msg, "MSA", 1).upper()
        acked = _text(msg, "MSA", 2)
    except (hl7.ParseException, KeyError, IndexError, ValueError):
        return SendOutcome("retry", "ack-garbled", "the answer is not an HL7 message with an MSA segment",
                           unseen=True)
    if not code:
        return SendOutcome("retry", "ack-garbled", "the answer has no MSA-1 acknowledgment code", unseen=True)
    if acked != control_id:
        return SendOutcome("retry", f"ack-{code}-other",
                           f"the ACK answers message {acked or '(none)'!r}, not {control_id!r}", unseen=True)
    if code in ("AA", "CA"):
        return SendOutcome("delivered", code, "accepted")
    if code in ("AE", "CE"):
        return SendOutcome("retry", code, f"application error: {reason_text(msg)}")
    if code in ("AR", "CR"):
        return SendOutcome("park", code, f"rejected by the receiver: {reason_text(msg)}")
    return SendOutcome("retry", f"ack-{code}", f"unknown acknowledgment code {code!r}", unseen=True)
