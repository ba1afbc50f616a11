"""One message in, one ACK out: what the MLLP listener does with each block it reads (original mode).

1. decode by MSH-18 (UNICODE UTF-8, 8859/n, ASCII; UTF-8 when absent);
2. refuse (AR) what cannot be taken at all: not HL7, a version hl7apy does not know (before 2.1, after 2.8.2), a
   message type no one takes (:func:`node.hl7.handlers.accepted_types`), a structure hl7apy cannot parse;
3. refuse (AE) content the node needs and the message lacks: PID-3; for an order an ORC/OBR group with an
   accession number (IPC-1 or OBR-18) and its order control; for ORU^R01 an OBR;
4. keep it (``hl7_messages``, and ``hl7_orders`` per accession) with the type's handlers' writes in one
   transaction, then answer AA. A database failure answers nothing (the sender resends on its timeout); a resend of
   a message already kept (same sender, MSH-10 and text) is answered AA without being kept twice.

The ACK echoes MSH-10 in MSA-2, carries the reason in MSA-3 (and, from v2.5, in ERR-3/ERR-8), and is encoded like
the message it answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import hl7
from hl7apy import parser as hl7apy_parser
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from node.hl7.handlers import InboundMessage, Refusal, accepted_types, handlers_for
from node.hl7.oru import esc
from node.hl7.orders import accession_of_report, orders_of, patient_of

log = logging.getLogger(__name__)

CODECS = {"UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "ASCII": "ascii", "8859/1": "latin_1",
          "8859/2": "iso8859_2", "8859/3": "iso8859_3", "8859/4": "iso8859_4", "8859/5": "iso8859_5",
          "8859/6": "iso8859_6", "8859/7": "iso8859_7", "8859/8": "iso8859_8", "8859/9": "iso8859_9",
          "8859/15": "iso8859_15"}
VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
ORDERS = ("ORM^O01", "OMI^O23")
# HL7 table 0357 message error condition codes
REQUIRED_MISSING, UNSUPPORTED_TYPE, UNSUPPORTED_VERSION, SEGMENT_SEQUENCE, INTERNAL = "101", "200", "203", "100", "207"
ERROR_TEXT = {"101": "Required field missing", "200": "Unsupported message type", "203": "Unsupported version id",
              "100": "Segment sequence error", "207": "Application internal error"}


@dataclass
class Outcome:
    """What the listener answers and what happened (for the log: no PHI)."""

    ack: bytes | None  # None: answer nothing, close the connection (the sender resends)
    code: str  # AA | AE | AR | none
    message_type: str = ""
    control_id: str = ""
    reason: str = ""
    sending_application: str = ""  # MSH-3 and MSH-4 (first components), for the audit trail
    sending_facility: str = ""
    order_control: str = ""  # ORC-1 of the first order group of an order taken


def _msh_fields(raw: bytes) -> list[str]:
    first = raw.split(b"\r", 1)[0].decode("latin_1", errors="replace")
    return first.split(first[3]) if first.startswith("MSH") and len(first) > 3 else []


def charset_of(raw: bytes) -> str:
    fields = _msh_fields(raw)
    return fields[17].split("^")[0].strip() if len(fields) > 17 else ""


def build_ack(*, code: str, control_id: str, msh: list[str], reason: str = "", error: str = "",
              receiving_application: str, receiving_facility: str | None) -> str:
    """An ACK (hl7apy) in the version of the message it answers (2.5.1 when that one is unknown)."""
    version = msh[11].split("^")[0] if len(msh) > 11 and msh[11].split("^")[0] in VERSIONS else "2.5.1"
    ack = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    ack.msh.msh_3 = esc(receiving_application)
    if receiving_facility:
        ack.msh.msh_4 = esc(receiving_facility)
    for ours, theirs in (("msh_5", 2), ("msh_6", 3)):
        if len(msh) > theirs and msh[theirs]:
            setattr(ack.msh, ours, msh[theirs])
    ack.msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
    trigger = msh[8].split("^")[1] if len(msh) > 8 and len(msh[8].split("^")) > 1 else ""
    ack.msh.msh_9 = f"ACK^{esc(trigger)}^ACK" if trigger and version >= "2.3.1" else "ACK"
    ack.msh.msh_10 = f"ACK{int(time.time() * 1000) % 10**15}"
    ack.msh.msh_11 = msh[10] if len(msh) > 10 and msh[10] else "P"
    ack.msh.msh_12 = version
    if len(msh) > 17 and msh[17]:
        ack.msh.msh_18 = msh[17]
    ack.msa.msa_1 = code
    ack.msa.msa_2 = esc(control_id)
    if reason:
        ack.msa.msa_3 = esc(reason[:80])
        if version >= "2.5":
            err = ack.add_segment("ERR")
            err.err_3 = f"{error or INTERNAL}^{ERROR_TEXT.get(error or INTERNAL, '')}^HL70357"
            err.err_4 = "E"
            err.err_8 = esc(reason[:250])
    return ack.to_er7()


class Inbound:
    """Takes messages for one node: ``handle(raw, peer)`` -> :class:`Outcome` (see the module docstring)."""

    def __init__(self, store: Any, receiving_application: str, receiving_facility: str | None = None) -> None:
        self.store = store
        self.app = receiving_application
        self.facility = receiving_facility

    def _ack(self, code: str, msh: list[str], control_id: str, codec: str, reason: str = "",
             error: str = "", message_type: str = "") -> Outcome:
        text = build_ack(code=code, control_id=control_id, msh=msh, reason=reason, error=error,
                         receiving_application=self.app, receiving_facility=self.facility)
        return Outcome(text.encode(codec, errors="replace"), code, message_type, control_id, reason,
                       *_sender(msh))

    def refuse_oversized(self, limit: int) -> Outcome:
        """The answer to a frame over ``max_message_bytes`` (its MSH is not known)."""
        return self._ack("AR", [], "", "ascii", f"message larger than {limit} bytes", INTERNAL)

    def handle(self, raw: bytes, peer: str = "") -> Outcome:
        """Validate, keep and acknowledge one message (the block's bytes, framing removed)."""
        msh = _msh_fields(raw)
        codec = CODECS.get(charset_of(raw), "utf-8")
        if not msh or len(msh) < 12:
            return self._ack("AR", msh, "", "ascii", "not an HL7 v2 message (no MSH with MSH-12)", SEGMENT_SEQUENCE)
        control_id = msh[9]
        try:
            text = raw.decode(codec).strip("\r\n")
        except UnicodeDecodeError:
            return self._ack("AR", msh, control_id, "latin_1", f"not valid {codec} (MSH-18)", INTERNAL)
        kind = "^".join(msh[8].split("^")[:2])
        version = msh[11].split("^")[0]
        if version not in VERSIONS:
            return self._ack("AR", msh, control_id, codec, f"version {version!r} is not supported",
                             UNSUPPORTED_VERSION, kind)
        if kind not in accepted_types():
            return self._ack("AR", msh, control_id, codec, f"message type {kind} is not taken here "
                             f"(taken: {', '.join(sorted(accepted_types()))})", UNSUPPORTED_TYPE, kind)
        try:
            parsed = hl7.parse(text)
            hl7apy_parser.parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT,
                                        find_groups=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means the structure cannot be read
            return self._ack("AR", msh, control_id, codec, f"the message cannot be parsed: {type(exc).__name__}",
                             SEGMENT_SEQUENCE, kind)
        problem, orders, accession = self._content(kind, parsed)
        if problem:
            return self._ack("AE", msh, control_id, codec, problem, REQUIRED_MISSING, kind)
        sender, facility = msh[2].split("^")[0], msh[3].split("^")[0] if len(msh) > 3 else ""
        if self.store.find_hl7_message(sender, control_id, text) is not None:
            return self._ack("AA", msh, control_id, codec, message_type=kind)  # a resend: kept already
        received = time.time()
        message = {"message_type": kind, "control_id": control_id[:199], "sending_application": sender[:227],
                   "sending_facility": facility[:227], "accession": accession[:64] or None, "peer": peer[:64],
                   "text": text}

        def run_handlers(conn: Any, message_id: int) -> None:
            for handler in handlers_for(kind):
                handler(InboundMessage(id=message_id, message_type=kind, control_id=control_id, version=version,
                                       sending_application=sender, sending_facility=facility,
                                       accession=accession, text=text, parsed=parsed, received_at=received), conn)

        try:
            self.store.record_hl7_message(message, orders or [], [run_handlers])
        except Refusal as exc:
            return self._ack(exc.code, msh, control_id, codec, exc.text, INTERNAL, kind)
        except Exception as exc:  # noqa: BLE001
            if _is_database_error(exc):
                log.error("HL7 %s %s could not be stored (%s): no ACK, the sender will resend", kind, control_id,
                          type(exc).__name__)
                return Outcome(None, "none", kind, control_id, "storage failed", sender, facility)
            log.exception("HL7 %s %s: a handler failed", kind, control_id)
            return self._ack("AE", msh, control_id, codec, f"could not be processed ({type(exc).__name__})",
                             INTERNAL, kind)
        out = self._ack("AA", msh, control_id, codec, message_type=kind)
        out.order_control = str((orders or [{}])[0].get("order_control") or "")
        return out

    def _content(self, kind: str, parsed: hl7.Message) -> tuple[str, list[dict[str, Any]] | None, str]:
        """(what is missing or '', the order rows to keep, the accession number)."""
        if not patient_of(parsed)[0]:
            return "PID-3 (patient identifier) is missing", None, ""
        if kind in ORDERS:
            orders = orders_of(parsed)
            if not orders or not any(o["has_obr"] for o in orders):
                return "no ORC/OBR order group", None, ""
            missing = [i + 1 for i, o in enumerate(orders) if not o["accession"]]
            if missing:
                return (f"order group {missing[0]}: no accession number (IPC-1 or OBR-18)", None, "")
            rows = [{k: v for k, v in o.items() if k != "has_obr"} for o in orders]
            return "", rows, orders[0]["accession"]
        if kind == "ORU^R01":
            try:
                parsed.segment("OBR")
            except KeyError:
                return "no OBR segment", None, ""
            return "", None, accession_of_report(parsed)
        return "", None, accession_of_report(parsed)


def _sender(msh: list[str]) -> tuple[str, str]:
    """(MSH-3, MSH-4) first components; '' when the message has no MSH."""
    return (msh[2].split("^")[0] if len(msh) > 2 else "", msh[3].split("^")[0] if len(msh) > 3 else "")


def _is_database_error(exc: Exception) -> bool:
    """The database is unavailable (locked, gone, disk full): answer nothing rather than AE."""
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError)
