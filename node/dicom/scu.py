"""Return: C-STORE SCU to a configured destination, with every answer classified.

The classification (PS3.4 B.2.3, PS3.7 C, and ``../shared/NOTES.md``):

=========================================  ==========================================================
0x0000                                     delivered
0xB000, 0xB006, 0xB007 (warnings)          delivered (stored with coercion/elements discarded)
0x0111 (duplicate SOP instance)            delivered (a resend of something already stored)
0xA7xx (out of resources), 0x0213          retry with backoff
0x0110 (processing failure), 0xCxxx        retry a few times (``max_processing_failure_attempts``), then park
0xA9xx (data set does not match SOP class) park: a bug in the object, not the network
0x0122 (SOP class not supported), 0x0124   park: a configuration problem on the PACS side
association rejected, transient            retry
association rejected, permanent            park (e.g. calling AE title not allowed there)
network error, abort, timeout              retry
=========================================  ==========================================================
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.config import DestinationSection
from node.dicom.tls import client_tls_args

log = logging.getLogger(__name__)

Verdict = Literal["delivered", "retry", "retry_limited", "park"]


@dataclass(frozen=True)
class SendOutcome:
    verdict: Verdict
    status: str  # e.g. "0x0000", "rejected-permanent", "network"
    reason: str
    # The C-STORE request may have reached the PACS though no answer came: ask before sending it again.
    unseen: bool = False


def classify_status(status: int) -> SendOutcome:
    """What a C-STORE response status means for the outbox row."""
    code = f"0x{status:04X}"
    if status == 0x0000:
        return SendOutcome("delivered", code, "stored")
    if status in (0xB000, 0xB006, 0xB007):
        return SendOutcome("delivered", code, "stored with a warning")
    if status == 0x0111:
        return SendOutcome("delivered", code, "duplicate SOP instance: already stored there")
    if (status & 0xFF00) == 0xA700 or status == 0x0213:
        return SendOutcome("retry", code, "destination out of resources")
    if status == 0x0110 or (status & 0xF000) == 0xC000:
        return SendOutcome("retry_limited", code, "destination failed to process the instance")
    if (status & 0xFF00) == 0xA900:
        return SendOutcome("park", code, "destination says the data set does not match its SOP class")
    if status in (0x0122, 0x0124):
        return SendOutcome("park", code, "destination refuses this SOP class or is not authorised")
    return SendOutcome("retry_limited", code, "unexpected status")


@dataclass(frozen=True)
class OutgoingFile:
    key: int  # the outbox row id
    path: Path
    sop_class_uid: str


def send_files(dest: DestinationSection, calling_ae: str, files: Sequence[OutgoingFile]) -> dict[int, SendOutcome]:
    """Send ``files`` over one association; every file gets an outcome (never an exception)."""
    if not files:
        return {}
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = dest.timeout_seconds
    ae.dimse_timeout = dest.timeout_seconds
    ae.network_timeout = dest.timeout_seconds
    sop_classes = sorted({f.sop_class_uid for f in files})
    # Propose only what we send: picky PACS reject large proposals.
    contexts = [build_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in sop_classes]
    try:
        assoc = ae.associate(dest.host, dest.port, contexts=contexts, ae_title=dest.ae_title,
                             tls_args=client_tls_args(dest.tls, dest.host))
    except (OSError, RuntimeError) as exc:
        out = SendOutcome("retry", "network", f"cannot associate: {exc}")
        return {f.key: out for f in files}
    if not assoc.is_established:
        if assoc.is_rejected:
            prim = assoc.acceptor.primitive
            result = getattr(prim, "result", None)
            diag = f"result={result} source={getattr(prim, 'result_source', None)} reason={getattr(prim, 'diagnostic', None)}"
            if result == 0x01:
                out = SendOutcome("park", "rejected-permanent", f"association rejected permanently ({diag})")
            else:
                out = SendOutcome("retry", "rejected-transient", f"association rejected transiently ({diag})")
        else:
            out = SendOutcome("retry", "network", "association aborted or the destination is unreachable")
        return {f.key: out for f in files}
    set_nodelay(assoc)
    outcomes: dict[int, SendOutcome] = {}
    try:
        for f in files:
            if not assoc.is_established:
                outcomes[f.key] = SendOutcome("retry", "network", "association ended before this instance was sent")
                continue
            try:
                ds = pydicom.dcmread(f.path)
            except (OSError, ValueError) as exc:
                outcomes[f.key] = SendOutcome("park", "local", f"cannot read the result file: {exc}")
                continue
            try:
                rsp = assoc.send_c_store(ds)
            except (OSError, RuntimeError, ValueError) as exc:
                outcomes[f.key] = SendOutcome("retry", "network", f"C-STORE failed: {exc}", unseen=True)
                continue
            if rsp is None or "Status" not in rsp:
                outcomes[f.key] = SendOutcome("retry", "network", "no C-STORE response (timeout or abort)",
                                              unseen=True)
            else:
                outcomes[f.key] = classify_status(int(rsp.Status))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def set_nodelay(assoc: Any) -> None:
    """Turn Nagle's algorithm off on an outgoing association (loopback PACS: ~40 ms per DIMSE message otherwise)."""
    try:
        sock = assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
