"""Return to an EHR: the :class:`~node.flow.deliver.Sender` of ``type: fhir`` destinations (a transaction per report).

``POST {url}`` with the report's transaction Bundle (:func:`node.fhir.bundle.build_bundle`), ``Content-Type:
application/fhir+json``. The answer:

======================================================  =============================================================
200 and a transaction-response, every entry 2xx          delivered
200 with an entry not 2xx, or no transaction-response    retry a few times (``max_processing_failure_attempts``), park
HTTP 408, 429, 5xx, network error, timeout               retry (a resend is idempotent: conditional create/update)
HTTP 401                                                 retry a few times (a cached Entra token is dropped), then park
HTTP 409 (version conflict)                              retry a few times, then park
HTTP 400, 403, 404, 405, 412, 415, 422, other 4xx        park with the server's OperationOutcome text
======================================================  =============================================================

A transaction is all-or-nothing on the server, and every entry is conditional (or has a fixed id): sending the same
Bundle again after a lost answer leaves one DiagnosticReport, one Observation per finding.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from node.config import DestinationSection
from node.dicom.scu import OutgoingFile, SendOutcome
from node.dicomweb.auth import client_for
from node.fhir.bundle import build_bundle
from node.invoke.auth import AuthError
from node.reports.model import Report

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


def default_scope(url: str) -> str:
    """The Entra scope of an Azure Health Data Services FHIR service: its origin + ``/.default``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def outcome_text(response: httpx.Response) -> str:
    """The server's words: the OperationOutcome's issues (diagnostics, details), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    issues = body.get("issue") if isinstance(body, dict) else None
    if not issues:
        return json.dumps(body)[:300]
    words = [str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code")) for i in issues]
    return "; ".join(words)[:500]


def classify_response(response: httpx.Response) -> SendOutcome:
    """What the answer to one transaction means for the outbox row (the module docstring's table)."""
    code = response.status_code
    status = f"http-{code}"
    if code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("type") != "transaction-response":
            return SendOutcome("retry_limited", status, "the answer is not a transaction-response Bundle")
        bad = [e.get("response", {}).get("status", "?") for e in body.get("entry") or []
               if not str(e.get("response", {}).get("status", "")).startswith("2")]
        if bad:
            return SendOutcome("retry_limited", status, f"entries not stored: {', '.join(bad)}")
        return SendOutcome("delivered", status, f"stored ({len(body.get('entry') or [])} entries)")
    if code in (408, 429) or code >= 500:
        return SendOutcome("retry", status, f"the FHIR server is unavailable: {outcome_text(response)}")
    if code in (401, 409):
        return SendOutcome("retry_limited", status, outcome_text(response))
    return SendOutcome("park", status, f"the FHIR server refused the Bundle: {outcome_text(response)}")


def _client(dest: DestinationSection) -> httpx.Client:
    if dest.auth == "entra" and not dest.scope:
        dest = dest.model_copy(update={"scope": default_scope(str(dest.url))})
    return client_for(dest, dest.timeout_seconds)


def send_fhir(dest: DestinationSection, calling_ae: str, files: Sequence[OutgoingFile]) -> dict[int, SendOutcome]:
    """POST each row's report as a transaction Bundle; every row gets an outcome (never an exception)."""
    out: dict[int, SendOutcome] = {}
    if not files:
        return out
    url = str(dest.url).rstrip("/")
    with _client(dest) as http:
        for f in files:
            try:
                bundle: dict[str, Any] = build_bundle(Report.from_json(f.path.read_bytes()), dest)
            except (OSError, ValueError, ValidationError) as exc:
                out[f.key] = SendOutcome("park", "report", f"the stored report cannot be read or built: "
                                                           f"{type(exc).__name__}: {exc}")
                continue
            try:
                response = http.post(url, content=json.dumps(bundle).encode("utf-8"),
                                     headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
            except AuthError as exc:
                out[f.key] = SendOutcome("park" if exc.permanent else "retry", "auth", str(exc))
                continue
            except httpx.TimeoutException as exc:
                out[f.key] = SendOutcome("retry", "timeout", f"no answer in time: {exc}", unseen=True)
                continue
            except httpx.HTTPError as exc:
                out[f.key] = SendOutcome("retry", "network", f"{type(exc).__name__}: {exc}",
                                         unseen=not isinstance(exc, httpx.ConnectError))
                continue
            out[f.key] = classify_response(response)
            log.debug("FHIR transaction to %s: %s", url, out[f.key].status)
    return out
