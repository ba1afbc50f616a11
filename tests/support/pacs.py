"""The mini PACS of the tests: a pynetdicom Storage SCP on a free loopback port, the one such harness.

It accepts every storage SOP class in every transfer syntax and answers each C-STORE with the next scripted
status (Success, 0x0000, once the script is empty), so a test can play a PACS that is out of resources,
refuses, warns or succeeds::

    with MiniPACS([0xA700]) as pacs:            # first C-STORE: out of resources, then success
        ...                                     # send to ("127.0.0.1", pacs.port), AE title pacs.ae_title
        assert pacs.stored == [sop_uid]         # SOP Instance UIDs kept (Success and the warning statuses)

``answered`` lists every C-STORE with the time it came and the status it was given.
``folder=``: the instances it keeps are also written there (``received`` lists the files, named
``<Modality>_<SOPInstanceUID>.dcm``). ``require_calling=``: only these calling AE titles may associate.

(``dicom-node demo`` has its own small Storage SCP in the product; this one is for the tests.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from .ports import HOST, free_port

STORED_STATUSES = (0x0000, 0xB000, 0x0111)  # Success, Coercion of data elements (warning), Duplicate SOP Instance


class MiniPACS:
    """A Storage SCP that answers scripted statuses and keeps what it stores; see the module docstring."""

    def __init__(self, statuses: list[int] | None = None, *, ae_title: str = "PACS", folder: Path | None = None,
                 require_calling: list[str] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.ae_title = ae_title
        self.folder = folder
        self.port = free_port()
        self.stored: list[str] = []  # SOP Instance UIDs, in the order they came
        self.answered: list[tuple[float, str, int]] = []  # (time.time(), SOP Instance UID, status) of every C-STORE
        self.received: list[Path] = []  # the files written to ``folder`` (when given)
        self._lock = threading.Lock()
        self._ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            self._ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        if require_calling:
            self._ae.require_calling_aet = require_calling
        self._server: Any = None

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else 0x0000
            self.answered.append((time.time(), str(event.request.AffectedSOPInstanceUID), status))
            if status in STORED_STATUSES:
                self.stored.append(str(event.request.AffectedSOPInstanceUID))
                if self.folder is not None:
                    ds = event.dataset
                    ds.file_meta = event.file_meta
                    path = self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    self.received.append(path)
            return status

    def start(self) -> "MiniPACS":
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._server = self._ae.start_server((HOST, self.port), block=False,
                                             evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> "MiniPACS":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
