"""Return by STOW-RS: the :class:`~node.flow.deliver.Sender` of ``type: dicomweb`` destinations.

``POST {url}/studies`` with ``multipart/related; type="application/dicom"`` (PS3.18 10.5), up to
``instances_per_request`` instances per request. The answer is read per instance (PS3.18 10.5.3, and the Azure
DICOM service's conformance statement, see ``/work/shared/NOTES.md``):

================================================  ===========================================================
in ReferencedSOPSequence (200, or 202 partial)     delivered (a WarningReason is logged by the outbox status)
FailedSOPSequence, FailureReason 45070 (0xB00E)    delivered: the archive already holds it (Azure: a resend)
FailureReason 0x0111 (duplicate SOP instance)      delivered
FailureReason 45071 (0xB00F, being created)        retry
other FailureReason                                classified like a C-STORE status (node.dicom.scu)
HTTP 200 and the instance not named                delivered (the archive stored the whole request)
HTTP 202/409 and the instance not named            retry a few times, then park
HTTP 408, 429, 5xx, network error, timeout         retry
HTTP 401                                           retry a few times (a cached token is dropped), then park
HTTP 403, 404, 405, 415, other 4xx                 park: configuration (URL, permissions) or an object refused
================================================  ===========================================================
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import httpx
import pydicom

from node.config import DestinationSection
from node.dicom.scu import OutgoingFile, SendOutcome, classify_status
from node.dicomweb import multipart
from node.dicomweb.auth import base_url, client_for
from node.invoke.auth import AuthError

log = logging.getLogger(__name__)

ALREADY_STORED = 45070  # Azure DICOM service: same study, series and SOP instance UIDs already stored
BEING_CREATED = 45071  # Azure DICOM service: the instance is being created by another request

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


def classify_failure(reason: int | None) -> SendOutcome:
    """What a FailureReason of a STOW-RS answer means for the outbox row."""
    if reason is None:
        return SendOutcome("retry_limited", "stow-failed", "the archive refused the instance without a reason")
    code = f"stow-0x{reason:04X}"
    if reason == ALREADY_STORED:
        return SendOutcome("delivered", code, "already stored there (45070)")
    if reason == BEING_CREATED:
        return SendOutcome("retry", code, "the archive is storing the same instance from another request (45071)")
    out = classify_status(reason)
    return SendOutcome(out.verdict, code, out.reason)


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def read_response(status: int, body: dict[str, Any] | None, uids: Sequence[str]) -> dict[str, SendOutcome]:
    """The outcome of each SOP Instance UID of one STOW-RS request, from its HTTP status and DICOM JSON body."""
    body = body or {}
    out: dict[str, SendOutcome] = {}
    for item in (_value(body, REFERENCED_SOP_SEQUENCE) and body[REFERENCED_SOP_SEQUENCE]["Value"]) or []:
        uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
        warning = _value(item, WARNING_REASON)
        if uid:
            out[uid] = SendOutcome("delivered", f"http-{status}" + (f"/warning-0x{int(warning):04X}" if warning else ""),
                                   "stored" + (" with a warning" if warning else ""))
    for item in (_value(body, FAILED_SOP_SEQUENCE) and body[FAILED_SOP_SEQUENCE]["Value"]) or []:
        uid = _value(item, REFERENCED_SOP_INSTANCE_UID)
        reason = _value(item, FAILURE_REASON)
        if uid:
            out[uid] = classify_failure(int(reason) if reason is not None else None)
    for uid in uids:
        if uid in out:
            continue
        if status == 200:
            out[uid] = SendOutcome("delivered", "http-200", "stored (the whole request succeeded)")
        else:
            out[uid] = SendOutcome("retry_limited", f"http-{status}", "the STOW-RS answer does not name this instance")
    return out


def classify_http(status: int, text: str) -> SendOutcome | None:
    """The outcome of every instance of a request whose HTTP status has no per-instance answer; None if it may."""
    if status in (200, 202, 409):
        return None
    detail = " ".join(text.split())[:200]
    if status in (408, 429) or status >= 500:
        return SendOutcome("retry", f"http-{status}", f"the archive is unavailable or busy: {detail}")
    if status == 401:
        return SendOutcome("retry_limited", "http-401", "the archive refused the credentials")
    return SendOutcome("park", f"http-{status}", f"the archive refused the request: {detail}")


def send_stow(dest: DestinationSection, calling_ae: str, files: Sequence[OutgoingFile],
              client: httpx.Client | None = None) -> dict[int, SendOutcome]:
    """Send ``files`` by STOW-RS in requests of ``instances_per_request``; every file gets an outcome."""
    outcomes: dict[int, SendOutcome] = {}
    readable: list[tuple[OutgoingFile, str, bytes]] = []
    for f in files:
        try:
            data = f.path.read_bytes()
            header = pydicom.dcmread(f.path, stop_before_pixels=True)
            readable.append((f, str(header.SOPInstanceUID), data))
        except (OSError, ValueError, AttributeError) as exc:
            outcomes[f.key] = SendOutcome("park", "local", f"cannot read the result file: {type(exc).__name__}")
    if not readable:
        return outcomes
    own = client is None
    http = client or client_for(dest, dest.timeout_seconds)
    try:
        size = dest.instances_per_request
        for start in range(0, len(readable), size):
            outcomes.update(_post(http, dest, readable[start:start + size]))
    finally:
        if own:
            http.close()
    return outcomes


def _post(http: httpx.Client, dest: DestinationSection,
          batch: Sequence[tuple[OutgoingFile, str, bytes]]) -> dict[int, SendOutcome]:
    body, content_type = multipart.encode(data for _, _, data in batch)
    try:
        rsp = http.post(f"{base_url(dest)}/studies", content=body,
                        headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    except AuthError as exc:
        out = SendOutcome("park" if exc.permanent else "retry", "auth", exc.message)
        return {f.key: out for f, _, _ in batch}
    except httpx.TimeoutException:
        out = SendOutcome("retry", "timeout", f"no STOW-RS answer within {dest.timeout_seconds:g} s")
        return {f.key: out for f, _, _ in batch}
    except httpx.HTTPError as exc:
        out = SendOutcome("retry", "network", f"STOW-RS failed: {type(exc).__name__}: {exc}")
        return {f.key: out for f, _, _ in batch}
    whole = classify_http(rsp.status_code, rsp.text if rsp.status_code >= 400 else "")
    if whole is not None:
        return {f.key: whole for f, _, _ in batch}
    try:
        parsed = rsp.json() if rsp.content.strip() else None
    except ValueError:
        parsed = None
    if parsed is not None and not isinstance(parsed, dict):
        parsed = parsed[0] if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict) else None
    by_uid = read_response(rsp.status_code, parsed, [uid for _, uid, _ in batch])
    return {f.key: by_uid[uid] for f, uid, _ in batch}
