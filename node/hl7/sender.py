"""Return to a RIS: the :class:`~node.flow.deliver.Sender` of ``type: hl7v2`` destinations (ORU^R01 over MLLP).

Each outbox row names a stored report (:mod:`node.reports`); its ORU is built (:func:`node.hl7.oru.build_oru`),
sent over one MLLP connection per batch (reopened when the peer closes after each message) and its ACK classified
(:mod:`node.hl7.ack`). A message that may have reached the RIS without an ACK seen is sent again later with the
same MSH-10: delivery to a RIS is at-least-once, and a receiver that deduplicates on MSH-10 sees it once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from node.config import DestinationSection
from node.dicom.scu import OutgoingFile, SendOutcome
from node.dicom.tls import client_tls_args
from node.hl7.ack import classify_ack
from node.hl7.mllp import MllpClient, MllpError
from node.hl7.oru import build_oru
from node.reports.model import Report

log = logging.getLogger(__name__)


def load_report(path: Path) -> Report:
    """The stored report of an outbox row (raises OSError or ValueError)."""
    return Report.from_json(Path(path).read_bytes())


def send_hl7(dest: DestinationSection, calling_ae: str, files: Sequence[OutgoingFile]) -> dict[int, SendOutcome]:
    """Send the ORU of each row's report, one after the other; every row gets an outcome (never an exception)."""
    if not files:
        return {}
    return asyncio.run(_send_all(dest, files))


async def _send_all(dest: DestinationSection, files: Sequence[OutgoingFile]) -> dict[int, SendOutcome]:
    client = MllpClient(str(dest.host), int(dest.port or 0), timeout=dest.timeout_seconds,
                        max_bytes=dest.max_message_bytes, tls=client_tls_args(dest.tls, str(dest.host)))
    out: dict[int, SendOutcome] = {}
    try:
        for f in files:
            try:
                oru = build_oru(load_report(f.path), dest)
            except (OSError, ValueError, ValidationError) as exc:
                out[f.key] = SendOutcome("park", "report", f"the stored report cannot be read or built: "
                                                           f"{type(exc).__name__}: {exc}")
                continue
            try:
                answer = await client.exchange(oru.data)
            except MllpError as exc:
                out[f.key] = SendOutcome("retry", exc.status, str(exc), unseen=exc.sent)
                if exc.status == "connect":  # the RIS is unreachable: the rest of the batch waits too
                    for g in files:
                        out.setdefault(g.key, SendOutcome("retry", "connect", str(exc)))
                    break
                continue
            outcome = classify_ack(answer, oru.control_id)
            if outcome.unseen:  # an answer out of step: start the next message on a fresh connection
                await client.close()
            out[f.key] = outcome
            log.debug("ORU %s to %s:%s: %s", oru.control_id, dest.host, dest.port, outcome.status)
    finally:
        await client.close()
    return out
