"""A query/retrieve session over DICOMweb with the interface of :class:`node.dicom.qr.QRSession`.

``find`` is QIDO-RS (:mod:`node.dicomweb.qido`), ``retrieve`` is WADO-RS of one instance into the spool
(:mod:`node.dicomweb.wado`); every request's timeout is the time left of the lookup's :class:`Deadline`.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydicom.dataset import Dataset

from node.config import DestinationSection
from node.dicom.qr import Deadline
from node.dicomweb.auth import base_url, client_for
from node.dicomweb.qido import qido_find
from node.dicomweb.wado import retrieve_prior, series_metadata
from node.dicom.qr import text_of
from node.store.spool import Spool
from node.store.state import Store


class DicomWebSession:
    """QIDO-RS and WADO-RS against the ``name`` destination, under ``deadline`` (a context manager)."""

    def __init__(self, name: str, dest: DestinationSection, deadline: Deadline, spool: Spool, store: Store,
                 client: httpx.Client | None = None) -> None:
        self.name = name
        self.dest = dest
        self.deadline = deadline
        self.spool = spool
        self.store = store
        self.base = base_url(dest)
        self._own = client is None
        self.http = client or client_for(dest, dest.timeout_seconds)

    def __enter__(self) -> "DicomWebSession":
        self.deadline.left()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own:
            self.http.close()

    def find(self, query: Dataset) -> list[Dataset]:
        """The matches of one QIDO-RS search (the identifier of a study-root C-FIND).

        Services answer only the attributes they index (Orthanc: its main tags; Azure: a fixed list): at IMAGE
        level, keys asked for and missing from the answers are filled from the series' WADO-RS metadata.
        """
        found = qido_find(self.http, self.base, query, self.deadline, self.name)
        wanted = [e.keyword for e in query if e.keyword and e.value in (None, "")]
        if text_of(query, "QueryRetrieveLevel") != "IMAGE" or not found or \
                all(kw in ds for ds in found for kw in wanted):
            return found
        headers = {text_of(h, "SOPInstanceUID"): h for h in series_metadata(
            self.http, self.base, text_of(query, "StudyInstanceUID"), text_of(query, "SeriesInstanceUID"),
            self.deadline, self.name)}
        for ds in found:
            header = headers.get(text_of(ds, "SOPInstanceUID"))
            for kw in wanted:
                if header is not None and kw not in ds and kw in header:
                    ds[kw] = header[kw]
        return found

    def retrieve(self, identifier: Dataset) -> int:
        """WADO-RS of the IMAGE-level ``identifier`` into the spool as a prior; a C-GET-like status."""
        return retrieve_prior(self.http, self.base, identifier, self.deadline, self.name, self.spool, self.store)
