"""The Azure DICOM service's change feed as a source of studies (``sources: [{type: azure-dicom-changefeed}]``).

A :class:`ChangeFeedPoller` thread (started by ``serve``) reads ``GET {url}/changefeed?offset=N&limit=M`` (v2:
``offset`` counts the entries skipped), and for each entry in order:

* ``Action: delete`` or ``State: deleted`` is ignored (the instance is gone; nothing to fetch);
* an instance the node already holds is skipped (a repeat after a crash, or an ``update`` of one we have), and
  so is one of the node's own results (sent back to the service, it shows in the feed like any instance);
* otherwise the instance is fetched by WADO-RS and written through the same durable path as a C-STORE (spool
  fsync + rename + directory fsync, recorded with the quiet timer by the :class:`~node.flow.intake.Intake`),
  then its study's check is armed: the same rules decide, and results go where the rules send them.

The position (``feed_offset``, ``last_sequence``) is written to the database after the entries it passes are
recorded: a restart neither misses nor repeats a change. A failed poll backs off (``poll_seconds`` doubling up
to ``backoff_max_seconds``) and shows, with its error, in ``dicom-node status``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol, Sequence

import httpx

from node.config import NodeConfig, SourceSection
from node.dicom.qr import QueryError
from node.dicomweb.auth import base_url, client_for
from node.dicomweb.wado import spool_bytes, wado_instance
from node.invoke.auth import AuthError
from node.store import sources
from node.store.spool import Spool, is_valid_uid
from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)


class IntakeLike(Protocol):
    """What the poller needs of :class:`node.flow.intake.Intake`."""

    def record(self, records: Sequence[InstanceRecord]) -> list[tuple[str, float]]: ...

    def arm(self, study_uid: str, due_at: float) -> None: ...


class SourceError(Exception):
    """A poll that failed; the message has no PHI (UIDs at most)."""


class ChangeFeedPoller:
    """Polls one change feed and feeds new instances into the intake (a daemon thread; see the module doc)."""

    def __init__(self, cfg: NodeConfig, source: SourceSection, store: Store, spool: Spool, intake: IntakeLike,
                 client: httpx.Client | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.key = source.key
        self.store = store
        self.spool = spool
        self.intake = intake
        self.base = base_url(source)
        self.http = client or client_for(source, source.timeout_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    # -- one poll ------------------------------------------------------------------------------------------
    def poll_once(self) -> int:
        """Read one page of the feed and consume it; returns how many entries it consumed."""
        pos = sources.position(self.store.engine, self.key)
        offset, last_seq, ingested = int(pos["feed_offset"]), int(pos["last_sequence"]), int(pos["ingested"])
        entries = self._page(offset)
        for entry in entries:
            if self._stop.is_set():
                break
            seq = int(entry.get("Sequence") or 0)
            if seq and seq <= last_seq:
                offset += 1  # already consumed (a page read again after a crash)
                continue
            ingested += self._consume(entry)
            offset += 1
            last_seq = max(last_seq, seq)
            sources.advance(self.store.engine, self.key, offset, last_seq, ingested)
        return len(entries)

    def _page(self, offset: int) -> list[dict[str, Any]]:
        params = {"offset": offset, "limit": self.source.batch, "includemetadata": "false"}
        try:
            rsp = self.http.get(f"{self.base}/changefeed", params=params, headers={"Accept": "application/json"})
        except AuthError as exc:
            raise SourceError(f"no credentials: {exc.message}") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"change feed unreachable: {type(exc).__name__}") from None
        if rsp.status_code != 200:
            raise SourceError(f"change feed answered HTTP {rsp.status_code}")
        try:
            page = rsp.json()
        except ValueError:
            raise SourceError("change feed sent a body that is not JSON") from None
        if not isinstance(page, list):
            raise SourceError("change feed sent something other than a JSON array")
        return page

    def _consume(self, entry: dict[str, Any]) -> int:
        """Fetch and record one created instance; 1 when ingested, 0 when ignored. Raises on a fetch failure."""
        action, state = str(entry.get("Action", "")).lower(), str(entry.get("State", "")).lower()
        study, series, sop = (str(entry.get(k) or "") for k in ("StudyInstanceUid", "SeriesInstanceUid",
                                                                 "SopInstanceUid"))
        if action == "delete" or state == "deleted":
            return 0
        if not all(is_valid_uid(u) for u in (study, series, sop)):
            log.warning("source %s: change-feed entry %s has no valid UIDs; ignored", self.key, entry.get("Sequence"))
            return 0
        held = self.store.instance(sop)
        if held is not None:
            # Held already. A ``create`` this source itself recorded, met again because the position had not moved
            # when the node died, still counts once as ingested (its count was lost with the position); an update,
            # or an instance that came another way (C-STORE, another source), does not.
            return int(action == "create" and held.get("calling_ae") == self.key[:16])
        if sources.is_own_result(self.store.engine, sop):
            return 0  # this node's own result, sent back to the service it came from: not new work
        try:
            data = wado_instance(self.http, self.base, study, series, sop, self.source.timeout_seconds)
        except QueryError as exc:
            if "HTTP 404" in str(exc):
                log.info("source %s: instance %s is gone from the service; ignored", self.key, sop)
                return 0
            raise SourceError(f"WADO-RS of instance {sop}: {exc}") from None
        except AuthError as exc:
            raise SourceError(f"no credentials: {exc.message}") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"WADO-RS of instance {sop}: {type(exc).__name__}") from None
        try:
            _, due = spool_bytes(data, self.spool, self.intake.record, self.key, is_prior=False)
        except ValueError:
            log.warning("source %s: instance %s is not a usable DICOM file; ignored", self.key, sop)
            return 0
        for study_uid, due_at in due:
            self.intake.arm(study_uid, due_at)
        return 1

    # -- the thread ----------------------------------------------------------------------------------------
    def run(self) -> None:
        """Poll until stopped: at once while pages come back full, ``poll_seconds`` apart otherwise."""
        while not self._stop.is_set():
            try:
                n = self.poll_once()
                if self.failures:
                    sources.recovered(self.store.engine, self.key)
                    log.info("source %s: the change feed answers again", self.key)
                self.failures = 0
                pause = 0.0 if n >= self.source.batch else self.source.poll_seconds
            except (SourceError, OSError) as exc:
                self.failures += 1
                pause = min(self.source.backoff_max_seconds, self.source.poll_seconds * 2 ** (self.failures - 1))
                log.error("source %s: %s (failure %d; next poll in %.0f s)", self.key, exc, self.failures, pause)
                sources.failed(self.store.engine, self.key, self.failures, str(exc), time.time() + pause)
            except Exception as exc:  # noqa: BLE001 - the poller must outlive one bad entry's surprise
                self.failures += 1
                pause = min(self.source.backoff_max_seconds, self.source.poll_seconds * 2 ** (self.failures - 1))
                log.exception("source %s: poll failed: %s", self.key, type(exc).__name__)
                sources.failed(self.store.engine, self.key, self.failures, type(exc).__name__, time.time() + pause)
            self._stop.wait(pause)

    def start(self) -> "ChangeFeedPoller":
        self._thread = threading.Thread(target=self.run, name=f"source-{self.key}"[:60], daemon=True)
        self._thread.start()
        log.info("source %s: polling its change feed every %g s", self.key, self.source.poll_seconds)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the entry in progress (its position is saved)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.http.close()
