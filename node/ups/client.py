"""The UPS-RS transactions a Task Performer uses (PS3.18 §11), over one authenticated HTTP client.

Search Workitems (``GET {url}/workitems?...``), Retrieve Workitem (``GET {url}/workitems/{uid}``), Update
Workitem (``POST {url}/workitems/{uid}?{transaction-uid}``) and Change Workitem State (``PUT
{url}/workitems/{uid}/state`` with Transaction UID and Procedure Step State). Bodies are DICOM JSON
(``application/dicom+json``); the datasets are pydicom's. Each method returns the HTTP status (and what it carried),
so the performer decides what a 400 or a 409 means at its step; a transport failure raises :class:`UpsError`.
No message holds PHI: UIDs and statuses only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from pydicom.dataset import Dataset

from node.dicomweb.auth import base_url, client_for
from node.invoke.auth import AuthError
from node.ups.settings import UpsSourceSection

DICOM_JSON = "application/dicom+json"


class UpsError(Exception):
    """The worklist could not be reached or answered something unreadable (no PHI in the message)."""


@dataclass(frozen=True)
class Answer:
    """An HTTP status, the Warning header (PS3.18 §11: ``299 <service>: ...``) and a short text of the body."""

    status: int
    warning: str = ""
    text: str = ""


def dicom_json(ds: Dataset) -> str:
    """A dataset as DICOM JSON (PS3.18 F)."""
    return json.dumps(ds.to_json_dict())


class UpsClient:
    """One UPS-RS worklist (a ``type: ups-rs`` source)."""

    def __init__(self, source: UpsSourceSection, http: httpx.Client | None = None) -> None:
        self.source = source
        self.base = base_url(source)
        self.http = http or client_for(source, source.timeout_seconds)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, params: Any = None, body: str | None = None) -> httpx.Response:
        headers = {"Accept": DICOM_JSON}
        if body is not None:
            headers["Content-Type"] = DICOM_JSON
        try:
            return self.http.request(method, f"{self.base}{path}", params=params, content=body, headers=headers)
        except AuthError as exc:
            raise UpsError(f"no credentials for the worklist: {exc.message}") from None
        except httpx.HTTPError as exc:
            raise UpsError(f"worklist unreachable ({method} {path.split('?')[0]}): {type(exc).__name__}") from None

    @staticmethod
    def _answer(rsp: httpx.Response) -> Answer:
        return Answer(rsp.status_code, rsp.headers.get("Warning", ""), rsp.text[:300])

    def search(self, matching: dict[str, str], limit: int) -> list[Dataset]:
        """Every workitem matching ``matching`` (all attributes: ``includefield=all``), page by page."""
        out: list[Dataset] = []
        offset = 0
        while True:
            params = {**matching, "includefield": "all", "limit": str(limit), "offset": str(offset)}
            rsp = self._call("GET", "/workitems", params=params)
            if rsp.status_code == 204:
                return out
            if rsp.status_code not in (200, 206):
                raise UpsError(f"worklist search answered HTTP {rsp.status_code}")
            try:
                page = [Dataset.from_json(item) for item in rsp.json()]
            except (ValueError, TypeError, KeyError) as exc:
                raise UpsError(f"worklist search sent an unreadable body ({type(exc).__name__})") from None
            out += page
            if len(page) < limit:
                return out
            offset += len(page)

    def retrieve(self, uid: str) -> tuple[Answer, Dataset | None]:
        """Retrieve Workitem: the workitem (200) or None (404, ...)."""
        rsp = self._call("GET", f"/workitems/{uid}")
        if rsp.status_code != 200:
            return self._answer(rsp), None
        try:
            doc = rsp.json()
            return self._answer(rsp), Dataset.from_json(doc[0] if isinstance(doc, list) else doc)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise UpsError(f"workitem {uid}: unreadable body ({type(exc).__name__})") from None

    def update(self, uid: str, transaction_uid: str | None, changes: Dataset) -> Answer:
        """Update Workitem: ``changes`` (whole sequences) under the Transaction UID (None while SCHEDULED)."""
        path = f"/workitems/{uid}" + (f"?{transaction_uid}" if transaction_uid else "")
        return self._answer(self._call("POST", path, body=dicom_json(changes)))

    def change_state(self, uid: str, transaction_uid: str, state: str) -> Answer:
        """Change Workitem State to ``state`` (IN PROGRESS claims it with a new Transaction UID)."""
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ds.ProcedureStepState = state
        return self._answer(self._call("PUT", f"/workitems/{uid}/state", body=dicom_json(ds)))
