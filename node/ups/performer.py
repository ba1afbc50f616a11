"""The AIW-I Task Performer: polls a UPS-RS worklist, claims what it can do, runs it through the normal flow, reports.

One :class:`TaskPerformer` thread per ``ups-rs`` source (started by ``serve``). Each workitem goes, with its row in
``ups_workitems`` (:mod:`node.store.workitems`) written before each call that changes it at the worklist:

1. **search** ``ProcedureStepState=SCHEDULED`` (and the source's ``filter``) every ``poll_seconds``; a workitem
   whose Scheduled Workitem Code maps to a rule (``workitems``) and that the node does not know yet is taken;
2. **claim**: a new Transaction UID is stored, then ``PUT .../state`` IN PROGRESS. 409 (or 400) on the first
   try: another performer has it (``lost``). On a later try (the node died after sending the claim) the node asks
   whether the claim was its own by updating the progress with its Transaction UID: accepted = claimed;
3. **inputs**: Input Information Sequence, fetched by WADO-RS (the item's Retrieve URL, else ``retrieve_from``,
   else the worklist's own service) or C-MOVE / C-GET from ``retrieve_from``, into the spool and the database like
   any received instance; a study a workitem is fetching is left alone by the completion triggers;
4. **run**: the study is decided for the workitem's rule only (a new version, trigger ``ups``), its job runs and
   its results go to the rule's destinations through the outbox, like any job;
5. **complete**: once the job is done and every result is delivered, the workitem gets the performed procedure
   (start, end, station, workitem code, Output Information Sequence: the results and where they are) and then
   COMPLETED. A job that failed or was skipped, inputs that do not exist, or inputs that do not match the rule end
   the workitem CANCELED with the reason. A parked job or result keeps it IN PROGRESS until ``dicom-node retry``.

Any step may be cut by a kill: the row says where it was and the Transaction UID, so the next run (or another node
of a cluster, once the lease lapses) resumes the same workitem and completes it once: a state change the worklist
already holds is recognised (``GET`` shows COMPLETED), never sent as a second claim or a second completion.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import NodeConfig
from node.dicom.qr import QueryError
from node.dicomweb.auth import base_url, client_for
from node.dicomweb.wado import spool_bytes, wado_instance
from node.flow.matching import plan_study
from node.invoke.auth import AuthError
from node.ops import metrics
from node.ops.audit import audit_log
from node.ops.failpoints import failpoint
from node.store.spool import Spool, is_valid_uid
from node.store.state import Store
from node.ups.client import Answer, UpsClient, UpsError
from node.ups.settings import UpsSourceSection
from node.ups.workitem import InputRef, OutputRef, completion, inputs_of, progress, wado_base, workitem_codes

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
ACTIVE_TICK_SECONDS = 0.25  # how often owned workitems move on while some are active


class Cancel(Exception):
    """The workitem cannot be performed: it ends CANCELED with this reason (no PHI)."""


class Later(Exception):
    """A step failed for now (the worklist, the archive or the database): the workitem is tried again later."""


class TaskPerformer:
    """Performs the workitems of one ``ups-rs`` source (a daemon thread; see the module docstring)."""

    def __init__(self, cfg: NodeConfig, source: UpsSourceSection, store: Store, spool: Spool, intake: Any,
                 enqueue_job: Callable[[int], None], client: UpsClient | None = None) -> None:
        self.cfg = cfg
        self.source = source
        self.key = source.key
        self.store = store
        self.spool = spool
        self.intake = intake
        self.enqueue_job = enqueue_job
        self.client = client or UpsClient(source)
        self.owner = f"{cfg.node.instance_id}:ups"  # stable: a restarted node resumes its own workitems at once
        self.station = source.station_name or cfg.node.ae_title
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self._next_search = 0.0

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Search every ``poll_seconds``; move owned workitems on every ``ACTIVE_TICK_SECONDS`` while any is active."""
        while not self._stop.is_set():
            active = 0
            try:
                if time.monotonic() >= self._next_search:
                    self._next_search = time.monotonic() + self.source.poll_seconds
                    self.search_and_claim()
                active = self.work()
                self.failures = 0
            except (UpsError, OSError) as exc:
                self.failures += 1
                pause = min(self.source.backoff_max_seconds, self.source.poll_seconds * 2 ** (self.failures - 1))
                self._next_search = time.monotonic() + pause
                log.error("worklist %s: %s (failure %d; next search in %.0f s)", self.key, exc, self.failures, pause)
            except Exception as exc:  # noqa: BLE001 - the performer must outlive one workitem's surprise
                self.failures += 1
                log.exception("worklist %s: %s", self.key, type(exc).__name__)
            self._stop.wait(ACTIVE_TICK_SECONDS if active else min(self.source.poll_seconds, 1.0))

    def start(self) -> "TaskPerformer":
        self._thread = threading.Thread(target=self.run, name=f"ups-{self.key}"[:60], daemon=True)
        self._thread.start()
        log.info("worklist %s: performing %s, searching every %g s", self.key,
                 [f"{w.code} -> {w.rule}" for w in self.source.workitems], self.source.poll_seconds)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the step in progress; the rows say where each workitem is."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.store.release_workitems(self.owner)
        self.client.close()

    # -- 1 and 2: search, claim --------------------------------------------------------------------------------
    def search_and_claim(self) -> int:
        """Claim every SCHEDULED workitem this node can perform and does not know; returns how many it claimed."""
        claimed = 0
        matching = {"ProcedureStepState": "SCHEDULED", **self.source.filter}
        found = self.client.search(matching, self.source.limit)
        if found:  # a search that named workitems (patients): an ATNA Query (an empty poll discloses nothing)
            audit_log(self.cfg).record("workitem-query", worklist=self.key, url=self.client.base,
                                       query="/workitems?" + urlencode(matching), matches=len(found))
        for ds in found:
            uid = str(ds.get("SOPInstanceUID", "") or "")
            rule = self.source.rule_for(workitem_codes(ds))
            if not is_valid_uid(uid) or rule is None or self.store.workitem(uid) is not None:
                continue
            if not self.store.begin_claim(uid, self.key, generate_uid(), self.owner, LEASE_SECONDS, rule):
                continue  # another process of this cluster took it
            claimed += self.claim(self.store.workitem(uid) or {})
        return claimed

    def claim(self, row: dict[str, Any]) -> int:
        """Change the workitem to IN PROGRESS under the row's Transaction UID; 1 when it is this node's now."""
        uid, txn = row["workitem_uid"], row["transaction_uid"]
        again = int(row["attempts"]) > 0  # an earlier claim may have reached the worklist unseen
        self._set(uid, attempts=int(row["attempts"]) + 1)
        answer = self.client.change_state(uid, txn, "IN PROGRESS")
        failpoint("workitem_claim_answered")
        if answer.status == 200 or (again and answer.status in (400, 409) and self._owns(uid, txn)):
            self._set(uid, state="claimed", started_at=time.time(), reason=None)
            log.info("worklist %s: claimed workitem %s (rule %s, transaction %s)", self.key, uid, row["rule_name"], txn)
            metrics.workitem(self.key, "claimed")
            self._audit("workitem-claimed", uid, rule=row["rule_name"])
            return 1
        if answer.status in (400, 404, 409):
            self._set(uid, state="lost", reason=f"claim answered HTTP {answer.status}: claimed by another performer "
                      "or gone", lease_owner=None)
            log.info("worklist %s: workitem %s not claimed (HTTP %d): another performer has it", self.key, uid,
                     answer.status)
            metrics.workitem(self.key, "lost")
            return 0
        raise UpsError(f"claim of workitem {uid} answered HTTP {answer.status}")

    def _owns(self, uid: str, txn: str) -> bool:
        """Whether the workitem is IN PROGRESS under ``txn`` (Update Workitem accepts only its owner's UID)."""
        return self.client.update(uid, txn, progress(5, f"claimed by {self.station}")).status == 200

    # -- 3 to 5: the owned workitems ---------------------------------------------------------------------------
    def work(self) -> int:
        """Move every workitem this node leases one step on; returns how many are still active."""
        active = 0
        for row in self.store.take_workitems(self.key, self.owner, LEASE_SECONDS):
            if self._stop.is_set():
                break
            try:
                self.step(row)
            except Cancel as exc:
                self._set(row["workitem_uid"], state="canceling", reason=str(exc)[:500])
                log.warning("worklist %s: workitem %s will be canceled: %s", self.key, row["workitem_uid"], exc)
            except (Later, UpsError, QueryError, OSError) as exc:
                delay = min(self.source.backoff_max_seconds, 2.0 * 2 ** min(int(row["attempts"]), 8))
                self._set(row["workitem_uid"], reason=str(exc)[:500], next_attempt_at=time.time() + delay,
                          attempts=int(row["attempts"]) + 1)
                log.warning("worklist %s: workitem %s (%s): %s; again in %.0f s", self.key, row["workitem_uid"],
                            row["state"], exc, delay)
            row = self.store.workitem(row["workitem_uid"]) or row
            active += row["state"] not in ("completed", "canceled", "lost")
        return active

    def step(self, row: dict[str, Any]) -> None:
        """One step of one workitem, by the state its row is in."""
        state = row["state"]
        if state == "claiming":
            self.claim(row)
        elif state == "claimed":
            self.fetch_and_decide(row)
        elif state == "running":
            self.follow_job(row)
        elif state == "completing":
            self.complete(row)
        elif state == "canceling":
            self.cancel(row)

    def fetch_and_decide(self, row: dict[str, Any]) -> None:
        """Fetch the inputs into the spool, decide the study for the workitem's rule, create and queue its job."""
        uid = row["workitem_uid"]
        answer, ds = self.client.retrieve(uid)
        if ds is None:
            self._gone_or_later(uid, answer)
        if str(ds.get("ProcedureStepState", "")) != "IN PROGRESS":
            raise Cancel(f"the workitem is {ds.get('ProcedureStepState', '?')} at the worklist, not IN PROGRESS")
        inputs = inputs_of(ds)
        studies = {i.study_uid for i in inputs}
        if not inputs:
            raise Cancel("the workitem names no input instance (Input Information Sequence)")
        if len(studies) != 1 or not all(is_valid_uid(u) for u in (*studies, *(i.sop_instance_uid for i in inputs))):
            raise Cancel(f"the inputs must be instances of one study with valid UIDs ({len(studies)} studies named)")
        study = studies.pop()
        self._set(uid, study_uid=study)  # from now on the completion triggers leave this study to the workitem
        missing = [i for i in inputs if self.store.instance(i.sop_instance_uid) is None]
        if missing:
            self._fetch(missing)
        rule = next((r for r in self.cfg.rules if r.name == row["rule_name"]), None)
        if rule is None:
            raise Cancel(f"rule {row['rule_name']!r} is no longer configured")
        version = self.store.decide_for_workitem(uid, self.owner, study, rule.name)
        if version is None:
            raise Later("the study's instances are not recorded yet")
        self.create_job(uid, study, version, rule.name)

    def create_job(self, uid: str, study: str, version: int, rule_name: str) -> None:
        rule = next(r for r in self.cfg.rules if r.name == rule_name)
        headers = []
        for inst in self.store.study_instances(study):
            try:
                headers.append(pydicom.dcmread(inst["path"], stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - an unreadable input is the job's to report
                continue
        plans = plan_study([rule], headers)
        if not plans:
            raise Cancel(f"the inputs do not match rule {rule.name!r} (its match keys)")
        ids = self.store.create_jobs(study, version, [(rule.name, rule.endpoint, plans[0].series_uids)])
        self._set(uid, job_id=ids[0])
        self.enqueue_job(ids[0])
        log.info("worklist %s: workitem %s runs job %d (rule %s) on study %s", self.key, uid, ids[0], rule.name, study)

    def follow_job(self, row: dict[str, Any]) -> None:
        """Wait for the job and its deliveries; then complete (done and delivered) or cancel (failed, skipped)."""
        uid = row["workitem_uid"]
        if row["job_id"] is None:
            self.create_job(uid, row["study_uid"], int(row["study_version"]), row["rule_name"])
            return
        job = self.store.job_outcome(int(row["job_id"]))
        if job is None:
            raise Cancel("its job is gone from the database")
        if job["state"] in ("failed", "skipped"):
            raise Cancel(f"the job {job['state']}: {job['outcome'] or ''}")
        if job["state"] != "done":
            if job["state"] == "parked":
                self._set(uid, reason=f"job parked: {job['outcome'] or ''}"[:500])
            return
        sent = [state for r in job["results"] for state in r["sent"].values()]
        if any(s == "parked" for s in sent):
            self._set(uid, reason="a result is parked at a destination (`dicom-node retry` sends it again)")
            return
        if all(s in ("delivered", "committed") for s in sent):
            self._set(uid, state="completing")
            self.complete(self.store.workitem(uid) or row)

    def complete(self, row: dict[str, Any]) -> None:
        """Report the performed procedure and the outputs, then COMPLETED (once; a completion already made is seen)."""
        uid, txn = row["workitem_uid"], row["transaction_uid"]
        job = self.store.job_outcome(int(row["job_id"])) if row["job_id"] is not None else None
        outputs = self._outputs(job)
        codes = [(w.code, w.scheme or "") for w in self.source.workitems if w.rule == row["rule_name"]]
        note = f"{len(outputs)} result(s) by rule {row['rule_name']}"
        self._final(row, "COMPLETED", completion(row["started_at"] or time.time(), self.station, codes, outputs, note))
        self._set(uid, state="completed", lease_owner=None, reason=None)
        log.info("worklist %s: workitem %s COMPLETED with %d output(s) (transaction %s)", self.key, uid, len(outputs),
                 txn)
        metrics.workitem(self.key, "completed")
        self._audit("workitem-completed", uid, outputs=[o.sop_instance_uid for o in outputs])

    def cancel(self, row: dict[str, Any]) -> None:
        """Report why, then CANCELED (once)."""
        reason = row["reason"] or "canceled by the performer"
        self._final(row, "CANCELED", progress(100, "canceled", reason=reason))
        self._set(row["workitem_uid"], state="canceled", lease_owner=None)
        log.warning("worklist %s: workitem %s CANCELED: %s", self.key, row["workitem_uid"], reason)
        metrics.workitem(self.key, "canceled")
        self._audit("workitem-canceled", row["workitem_uid"], reason=reason)

    def _final(self, row: dict[str, Any], state: str, report: Dataset) -> None:
        """Update Workitem with ``report``, then change the state; a workitem already in ``state`` is done."""
        uid, txn = row["workitem_uid"], row["transaction_uid"]
        answer = self.client.update(uid, txn, report)
        if answer.status == 200:
            failpoint("workitem_reported")
            answer = self.client.change_state(uid, txn, state)
            if answer.status == 200:
                failpoint("workitem_final_answered")
                return
        held, ds = self.client.retrieve(uid)  # a kill after an earlier try: is it done already?
        if ds is not None and str(ds.get("ProcedureStepState", "")) == state:
            return
        if ds is not None and str(ds.get("ProcedureStepState", "")) in ("COMPLETED", "CANCELED"):
            self._set(uid, state=str(ds.ProcedureStepState).lower(), lease_owner=None,
                      reason=f"ended {ds.ProcedureStepState} by someone else")
            raise Later(f"the workitem was {ds.ProcedureStepState} by someone else")
        raise Later(f"{state} answered HTTP {answer.status} {answer.warning}".strip())

    # -- helpers -----------------------------------------------------------------------------------------------
    def _fetch(self, missing: list[InputRef]) -> None:
        if self.source.inputs == "wado-rs":
            self._wado(missing)
        else:
            from node.ups.retrieve import retrieve_inputs

            retrieve_inputs(self.cfg, self.source, self.store, self.spool, missing)
        still = [i.sop_instance_uid for i in missing if self.store.instance(i.sop_instance_uid) is None]
        self._audit_inputs([i for i in missing if i.sop_instance_uid not in still])
        if still:
            raise Later(f"{len(still)} input instance(s) not received yet")

    def _wado(self, missing: list[InputRef]) -> None:
        dest = self.cfg.destinations.get(self.source.retrieve_from or "")
        http = client_for(dest, self.source.timeout_seconds) if dest is not None else self.client.http
        fallback = base_url(dest) if dest is not None else self.client.base
        try:
            for i in missing:
                try:
                    data = wado_instance(http, wado_base(i, fallback), i.study_uid, i.series_uid, i.sop_instance_uid,
                                         self.source.timeout_seconds)
                except QueryError as exc:
                    if "HTTP 404" in str(exc):
                        raise Cancel(f"input instance {i.sop_instance_uid} does not exist at the archive") from None
                    raise Later(f"WADO-RS of input {i.sop_instance_uid}: {exc}") from None
                except (httpx.HTTPError, AuthError) as exc:
                    raise Later(f"WADO-RS of input {i.sop_instance_uid}: {type(exc).__name__}") from None
                try:
                    spool_bytes(data, self.spool, self.intake.record, self.key, is_prior=False)
                except ValueError:
                    raise Cancel(f"input instance {i.sop_instance_uid} is not a usable DICOM file") from None
        finally:
            if http is not self.client.http:
                http.close()

    def _outputs(self, job: dict[str, Any] | None) -> list[OutputRef]:
        """The job's results and where each was delivered (DICOMweb base URLs, AE titles)."""
        out = []
        for r in (job or {}).get("results", []):
            urls, aes = [], []
            for name in r["sent"]:
                dest = self.cfg.destinations.get(name)
                if dest is not None and dest.type == "dicomweb":
                    urls.append(base_url(dest))
                elif dest is not None and dest.ae_title:
                    aes.append(dest.ae_title)
            out.append(OutputRef(job["study_uid"], r["series_uid"], r["sop_instance_uid"], r["sop_class_uid"],
                                 tuple(urls), tuple(aes)))
        return out

    def _gone_or_later(self, uid: str, answer: Answer) -> None:
        if answer.status == 404:
            raise Cancel("the workitem is gone from the worklist")
        raise Later(f"retrieve workitem answered HTTP {answer.status}")

    def _set(self, uid: str, **values: Any) -> None:
        if not self.store.update_workitem(uid, self.owner, **values):
            raise Later(f"workitem {uid}: this node's lease on it was lost")

    def _audit(self, event: str, uid: str, **fields: Any) -> None:
        """A workitem's state change at the worklist (an ATNA Procedure Record): its study when known."""
        row = self.store.workitem(uid) or {}
        audit_log(self.cfg).record(event, workitem_uid=uid, worklist=self.key, url=self.client.base,
                                   study_uid=row.get("study_uid"), **fields)

    def _audit_inputs(self, got: list[InputRef]) -> None:
        """Inputs retrieved by C-GET or WADO-RS (C-MOVE's arrive through the Storage SCP, audited there)."""
        if not got or self.source.inputs == "c-move":
            return
        web = self.source.inputs == "wado-rs"
        dest = self.cfg.destinations.get(self.source.retrieve_from or "")
        url = (base_url(dest) if dest is not None else self.client.base) if web else None
        for study in sorted({i.study_uid for i in got}):
            audit_log(self.cfg).record(
                "inputs-retrieved", protocol="WADO-RS" if web else "C-GET", destination=self.source.retrieve_from,
                called_ae=None if web or dest is None else dest.ae_title, url=url,
                peer_host=urlsplit(url).hostname if url else (dest.host if dest is not None else None),
                study_uid=study, worklist=self.key,
                instances=[[i.sop_instance_uid, i.sop_class_uid] for i in got if i.study_uid == study])
