"""When a study is complete: the triggers, in order of precedence (docs/study-completion.md).

:class:`Completion` decides one study at a time (:meth:`Completion.begin`, called by the quiet-timer check through
:class:`node.flow.intake.Intake`, the only reader of the timer settings). In one database transaction holding the
study's row (:meth:`node.store.workflow.WorkflowPart.completion_txn`) it asks, first to last:

1. ``mpps`` (``node.accept_mpps``): the study has MPPS. Every one of them is final (COMPLETED or DISCONTINUED) and
   every instance they list is held: decided. An MPPS IN PROGRESS, or a listed instance not yet held, *holds* the
   study: no later trigger may decide it, the quiet timer is suspended;
2. ``ian`` (``node.accept_ian``): the study has an IAN and no MPPS; every instance the IANs list is held: decided,
   otherwise held;
3. ``expected``: a rule's ``complete_when`` (:mod:`node.flow.expected`): every rule that applies to the study has
   its expected content in: decided. Expected content never holds a study;
4. ``timer``: nothing holds the study and no instance came for ``node.study_complete_after_seconds``;
5. ``max_wait``: the study is held and nothing (no instance, no MPPS or IAN message) came for
   ``node.study_complete_max_wait_seconds``: decided anyway, with what arrived.

Whatever fired is recorded with the new version (``decisions``: trigger, time, last instance), counted
(``dicom_node_study_decisions_total``) and timed (``dicom_node_decision_latency_seconds``). A study held by
missing instances, or one whose expected content may come with its next instance, is *watched*: each instance
of it schedules a check at once (see :mod:`node.store.workflow`); any other study costs its instances nothing more
than before. A study whose instances a UPS workitem is fetching is decided by that workitem (:mod:`node.ups`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import pydicom

from node.config import NodeConfig, RuleSection
from node.flow.expected import ExpectedVerdict, evaluate, needed_keywords
from node.store.studies import REDECIDE_AFTER_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    from node.store.state import Store
    from node.store.workflow import CompletionTxn

log = logging.getLogger(__name__)

TRIGGERS = ("mpps", "ian", "expected", "timer", "max_wait", "ups")


@dataclass(frozen=True)
class Outcome:
    """What a check found: ``complete`` (a version to plan), ``wait`` (check again at ``due``) or ``skip``."""

    kind: str
    version: int = 0
    due: float = 0.0
    trigger: str = ""
    detail: str = ""
    rules: tuple[str, ...] | None = None  # the rules this version runs; None: every rule that matches
    discontinued: bool = False
    latency: float | None = None  # last instance -> decision (None when decided again after a crash)


SKIP = Outcome("skip")


class HeaderCache:
    """The few header keywords expected content reads, per SOP Instance UID (bounded; files are read once)."""

    def __init__(self, keywords: Sequence[str], size: int = 50_000) -> None:
        self.keywords = list(keywords)
        self.size = size
        self._items: OrderedDict[str, pydicom.Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def headers(self, rows: Sequence[dict[str, Any]]) -> list[pydicom.Dataset]:
        """The headers of these instance rows (``sop_instance_uid``, ``path``); an unreadable file is left out."""
        out = []
        for row in rows:
            sop = row["sop_instance_uid"]
            with self._lock:
                ds = self._items.get(sop)
            if ds is None:
                try:
                    ds = pydicom.dcmread(row["path"], stop_before_pixels=True, specific_tags=self.keywords)
                except Exception:  # noqa: BLE001 - the job reports unreadable files; completion just skips them
                    continue
                with self._lock:
                    self._items[sop] = ds
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
            out.append(ds)
        return out


class Completion:
    """The completion triggers of one configuration (see the module docstring)."""

    def __init__(self, cfg: NodeConfig, store: "Store") -> None:
        node = cfg.node
        self.store = store
        self.quiet = node.study_complete_after_seconds
        self.max_wait = node.study_complete_max_wait_seconds
        self.notices = node.accept_mpps or node.accept_ian
        self.workitems = any(getattr(s, "type", "") == "ups-rs" for s in cfg.sources)
        self.rules: list[RuleSection] = list(cfg.rules)
        self.expecting = any(r.complete_when is not None for r in self.rules)
        #: a new study is checked at once when a trigger may decide it before its quiet time
        self.first_check_now = self.notices or self.expecting
        self._headers = HeaderCache(needed_keywords(self.rules)) if self.expecting else None

    # -- the decision ----------------------------------------------------------------------------------------
    def begin(self, study_uid: str) -> Outcome:
        """Decide ``study_uid`` if a trigger fires (it is closed as a new version), else say when to look again."""
        expected, seen = self._expected(study_uid)
        with self.store.completion_txn(study_uid) as txn:
            row = txn.row
            if row is None:
                return SKIP
            if (row["state"] == "complete" and row["completed_at"] is not None
                    and row["completed_at"] < txn.now - REDECIDE_AFTER_SECONDS and not txn.has_jobs()):
                return self._again(txn)  # its decider died before creating the jobs: decide the same version again
            if row["state"] != "receiving":
                txn.clear_check()
                return SKIP
            if expected is not None and seen != row["last_received_at"]:
                return Outcome("wait", due=txn.now)  # an instance came while the headers were read: look again
            return self._judge(txn, row, expected)

    def _again(self, txn: "CompletionTxn") -> Outcome:
        assert txn.row is not None
        rec = txn.decision() or {"trigger": "timer", "detail": "decided again", "rules": None, "discontinued": False}
        rules = None if rec["rules"] is None else tuple(json.loads(rec["rules"]))
        return Outcome("complete", version=int(txn.row["version"]), trigger=rec["trigger"], detail=rec["detail"] or "",
                       rules=rules, discontinued=bool(rec["discontinued"]))

    def _judge(self, txn: "CompletionTxn", row: dict[str, Any], expected: ExpectedVerdict | None) -> Outcome:
        t, last = txn.now, float(row["last_received_at"])
        if self.workitems and txn.workitem_fetching():
            return self._wait(txn, t + self.quiet, False)  # the workitem's performer decides it
        hold, watch, since = "", False, last
        notices = txn.notices() if self.notices else []
        mpps = [n for n in notices if n["kind"] == "mpps"]
        ian = [n for n in notices if n["kind"] == "ian"]
        chosen = mpps or ian
        if chosen:
            since = max([last] + [float(n["updated_at"]) for n in chosen])
            kind = "MPPS" if mpps else "IAN"
            running = [n["uid"] for n in mpps if n["state"] == "IN PROGRESS"]
            uids = [n["uid"] for n in chosen]
            if running:
                hold = f"{len(running)} MPPS in progress"
            else:
                missing = txn.missing(uids)
                if missing == 0:
                    discontinued = any(n["state"] == "DISCONTINUED" for n in mpps)
                    state = "DISCONTINUED" if discontinued else ("COMPLETED" if mpps else "available")
                    detail = f"{len(uids)} {kind} {state}, all {txn.listed(uids)} listed instance(s) held"
                    return self._close(txn, "mpps" if mpps else "ian", detail, discontinued=discontinued)
                hold, watch = f"{missing} instance(s) listed by the {kind} not held yet", True
        if not hold and expected is not None and expected.applicable:
            if expected.satisfied:
                return self._close(txn, "expected", expected.detail)
            watch = expected.watch
        if hold:
            if since + self.max_wait <= t:
                return self._close(txn, "max_wait", f"held ({hold}) for {self.max_wait:g} s "
                                   "(study_complete_max_wait_seconds)")
            return self._wait(txn, since + self.max_wait, watch)
        if last + self.quiet <= t:
            why = expected.detail if expected is not None else ""
            return self._close(txn, "timer", f"quiet for {self.quiet:g} s" + (f"; {why}" if why else ""))
        return self._wait(txn, last + self.quiet, watch)

    def _close(self, txn: "CompletionTxn", trigger: str, detail: str, *, discontinued: bool = False) -> Outcome:
        assert txn.row is not None
        version = txn.close(trigger, detail, discontinued=discontinued)
        if version is None:
            return Outcome("wait", due=txn.now)  # an instance arrived meanwhile
        return Outcome("complete", version=version, trigger=trigger, detail=detail, discontinued=discontinued,
                       latency=txn.now - float(txn.row["last_received_at"]))

    @staticmethod
    def _wait(txn: "CompletionTxn", due: float, watch: bool) -> Outcome:
        txn.wait(due, watch)
        return Outcome("wait", due=due)

    # -- expected content --------------------------------------------------------------------------------------
    def _expected(self, study_uid: str) -> tuple[ExpectedVerdict | None, float | None]:
        """The study's expected content, read before the transaction, and the last-instance time it saw."""
        if self._headers is None:
            return None, None
        row = self.store.study(study_uid)
        if row is None or row["state"] != "receiving":
            return None, None
        headers = self._headers.headers(self.store.study_instances(study_uid))
        return evaluate(self.rules, headers), row["last_received_at"]
