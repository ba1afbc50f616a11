"""The FHIR door: a radiologist's DiagnosticReport (FHIR R4) POSTed to the node's HTTP side.

``POST /fhir/DiagnosticReport`` (create) and ``PUT /fhir/DiagnosticReport/{id}`` (update), ``application/fhir+json``
or ``application/json``, behind the HTTP side's write authorisation (the ``authorize`` check given by the app: the
same one STOW-RS uses). The resource is parsed and validated with ``fhirclient``'s R4 models (strict: unknown
elements and wrong types are refused). What is read:

- the study: an identifier typed ``v2-0203#ACSN`` (accession), on the report or on a ServiceRequest it is
  ``basedOn``; the Study Instance UID from an ImagingStudy it names in ``imagingStudy`` (identifier
  ``urn:dicom:uid`` / a value ``urn:oid:<uid>``, as the DICOM SR to FHIR IG writes it) or an identifier of the report
  in that form; contained resources are read, other references only by their identifier;
- the status: final, amended / corrected / appended (corrected), preliminary / partial / registered (preliminary),
  cancelled / entered-in-error (the report kept under the same identity is withdrawn);
- the text: ``conclusion``, ``presentedForm`` (text/plain, or text/html with its tags removed, base64),
  contained Observations' ``valueString``, else the narrative (``text.div``);
- the time: ``issued``, else ``effectiveDateTime``.

Answers (FHIR OperationOutcome): 200 kept, withdrawn or not taken (the issue says which); 400 not a valid R4
DiagnosticReport; 401/403 the write check's refusal; 413 over 1 MiB; 415 not JSON; 422 a report that names no study.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import html
import json
import logging
import re
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.monitoring.intake import IncomingReport, Status, decide, source_key

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
ACSN = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
STATUSES: dict[str, Status] = {"final": "final", "amended": "corrected", "corrected": "corrected",
                               "appended": "corrected", "preliminary": "preliminary", "partial": "preliminary",
                               "registered": "preliminary", "cancelled": "cancelled",
                               "entered-in-error": "cancelled"}
Authorize = Callable[[Request], "bool | Response | Awaitable[bool | Response]"]


class Unprocessable(ValueError):
    """A valid resource the node cannot use (422)."""


def outcome(status: int, severity: str, code: str, text: str) -> JSONResponse:
    """An OperationOutcome answer."""
    return JSONResponse({"resourceType": "OperationOutcome",
                         "issue": [{"severity": severity, "code": code, "diagnostics": text}]},
                        status_code=status, media_type="application/fhir+json")


def _is_accession(identifier: Any) -> bool:
    for coding in (getattr(identifier.type, "coding", None) or []) if identifier.type else []:
        if (coding.system, coding.code) == ACSN or coding.code == "ACSN":
            return True
    return False


def _uid(identifier: Any) -> str | None:
    value = identifier.value or ""
    if value.startswith("urn:oid:") and (identifier.system in (None, "urn:dicom:uid", "urn:ietf:rfc:3986")):
        return value[len("urn:oid:"):]
    if identifier.system == "urn:dicom:uid" and re.fullmatch(r"[0-9.]{1,64}", value):
        return value
    return None


def _contained(report: Any, reference: Any) -> Any:
    ref = getattr(reference, "reference", None) or ""
    if ref.startswith("#"):
        for res in report.contained or []:
            if res.id == ref[1:]:
                return res
    return None


def _identifiers(report: Any, reference: Any) -> list[Any]:
    found = _contained(report, reference)
    if found is not None:
        return list(getattr(found, "identifier", None) or [])
    own = getattr(reference, "identifier", None)
    return [own] if own is not None else []


def _text_of_attachment(att: Any) -> str:
    if not att.data:
        return ""
    try:
        raw = base64.b64decode(att.data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""
    kind = (att.contentType or "text/plain").split(";")[0].strip().lower()
    if kind == "text/plain":
        return raw
    if kind in ("text/html", "application/xhtml+xml"):
        raw = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", raw)
        raw = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</li>", "\n", raw)
        return html.unescape(re.sub(r"<[^>]+>", " ", raw))
    return ""


def _time(report: Any) -> float | None:
    for value in (report.issued, report.effectiveDateTime):
        date = getattr(value, "date", None)
        if isinstance(date, dt.datetime):
            return date.timestamp()
        if isinstance(date, dt.date):
            return dt.datetime(date.year, date.month, date.day).timestamp()
    return None


def read_report(doc: dict[str, Any]) -> IncomingReport:
    """An R4 DiagnosticReport (JSON) as an :class:`IncomingReport`; ValueError for an invalid resource,
    :class:`Unprocessable` for one that names no study."""
    from fhirclient.models.diagnosticreport import DiagnosticReport
    from fhirclient.models.fhirabstractbase import FHIRValidationError

    if not isinstance(doc, dict) or doc.get("resourceType") != "DiagnosticReport":
        raise ValueError("the body must be a FHIR DiagnosticReport resource")
    try:
        report = DiagnosticReport(doc, strict=True)
    except FHIRValidationError as exc:
        raise ValueError(f"not a valid R4 DiagnosticReport: {exc}") from None
    if report.status not in (*STATUSES, "unknown"):
        raise ValueError(f"status {report.status!r} is not an R4 DiagnosticReport status")
    accession = study = None
    own_ids = list(report.identifier or [])
    for ident in own_ids + [i for ref in report.basedOn or [] for i in _identifiers(report, ref)]:
        if _is_accession(ident) and ident.value and accession is None:
            accession = ident.value
        study = study or _uid(ident)
    for ref in report.imagingStudy or []:
        for ident in _identifiers(report, ref):
            study = study or _uid(ident)
    parts = [report.conclusion or ""]
    parts += [_text_of_attachment(a) for a in report.presentedForm or []]
    for ref in report.result or []:
        obs = _contained(report, ref)
        if obs is not None and getattr(obs, "valueString", None):
            parts.append(obs.valueString)
    text = "\n".join(p.strip() for p in parts if p and p.strip())
    if not text and report.text is not None and report.text.div:
        text = html.unescape(re.sub(r"<[^>]+>", " ", report.text.div)).strip()
    if not (accession or study):
        raise Unprocessable("the report names no study: an identifier typed ACSN (accession number) or an "
                            "ImagingStudy identified by urn:dicom:uid is required")
    non_accession = [i for i in own_ids if not _is_accession(i) and i.value]
    identity = (f"{non_accession[0].system}|{non_accession[0].value}" if non_accession
                else f"id|{report.id}" if report.id else f"acsn|{accession}|study|{study}")
    return IncomingReport(door="fhir", key=source_key("fhir", identity), text=text,
                          status=STATUSES.get(report.status or "", "other"), study_uid=study, accession=accession,
                          reported_at=_time(report))


def report_routes(ctx: Any, authorize: Authorize, prefix: str = "/fhir") -> list[Route]:
    """``POST {prefix}/DiagnosticReport`` and ``PUT {prefix}/DiagnosticReport/{id}``."""
    async def take(request: Request) -> Response:
        allowed = authorize(request)
        if not isinstance(allowed, (bool, Response)):
            allowed = await allowed
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/fhir+json", "application/json"):
            return outcome(415, "error", "not-supported", "send application/fhir+json")
        body = await request.body()
        if len(body) > MAX_BYTES:
            return outcome(413, "error", "too-costly", f"a report is at most {MAX_BYTES} bytes")
        try:
            doc = json.loads(body)
            wanted = request.path_params.get("id")
            if wanted and isinstance(doc, dict) and doc.get("id") not in (None, wanted):
                raise ValueError("the resource's id differs from the URL's")
            report = read_report(doc)
        except Unprocessable as exc:
            return outcome(422, "error", "processing", str(exc))
        except ValueError as exc:
            return outcome(400, "error", "invalid", str(exc))
        decision = decide(ctx.cfg.monitoring, report)
        if decision.write is None:
            log.info("FHIR DiagnosticReport not taken for monitoring: %s", decision.reason)
            return outcome(200, "warning", "informational", f"not taken: {decision.reason}")
        done = await run_in_threadpool(ctx.store.monitor_write, decision.write)
        log.info("FHIR DiagnosticReport: radiologist's report %s (%s, %d finding(s) named)",
                 decision.action if decision.action != "keep" else done, report.status, decision.findings)
        what = (f"withdrawn ({done} kept report(s) removed)" if decision.action == "withdraw"
                else f"{done}: {decision.findings} finding(s) named")
        return outcome(200, "information", "informational", what)

    return [Route(f"{prefix}/DiagnosticReport", take, methods=["POST"]),
            Route(f"{prefix}/DiagnosticReport/{{id}}", take, methods=["PUT"])]
