"""Prior lookups (node/models/cxrreportgen/priors.py): one row per lookup for a current study.

Part of :class:`node.store.state.Store`. ``expect_prior`` is committed before the retrieve starts, so that
instances of the prior study arriving through the SCP are recorded as priors (kept apart from received work).
"""

from __future__ import annotations


from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from node.store.records import InstanceRecord
from node.store.schema import instances, now, priors, studies



class PriorsPart:
    """The priors table, and how instances of an expected prior study are recorded."""

    engine: Engine

    @staticmethod
    def _expected_prior(conn: Connection, study_uid: str) -> bool:
        """Whether a lookup is retrieving ``study_uid`` (its instances are priors, not new work)."""
        return conn.execute(select(priors.c.id).where(priors.c.prior_study_uid == study_uid).limit(1)).first() \
            is not None

    @staticmethod
    def _record_prior(conn: Connection, rec: InstanceRecord, t: float) -> None:
        """A retrieved prior: kept apart from received work. Its study is 'done' at once (no quiet timer, no
        rule), so retention purges it like a finished study; a study the node already holds as its own work is
        left as it is, and so is an instance it already holds."""
        have = conn.execute(select(instances.c.is_prior).where(
            instances.c.sop_instance_uid == rec.sop_instance_uid)).first()
        if have is not None and not have[0]:
            return
        conn.execute(delete(instances).where(instances.c.sop_instance_uid == rec.sop_instance_uid))
        conn.execute(insert(instances).values(received_at=t, **{**rec.__dict__, "is_prior": True}))
        row = conn.execute(select(studies.c.is_prior).where(studies.c.study_uid == rec.study_uid)).first()
        if row is None:
            conn.execute(insert(studies).values(
                study_uid=rec.study_uid, state="done", version=0, first_received_at=t, last_received_at=t,
                completed_at=t, is_prior=True, note="prior study, retrieved for comparison"))
        elif row[0]:
            conn.execute(update(studies).where(studies.c.study_uid == rec.study_uid)
                         .values(last_received_at=t, completed_at=t))

    def start_prior_lookup(self, for_study_uid: str) -> int:
        """A new lookup for ``for_study_uid`` in state "querying"; returns its id."""
        with self.engine.begin() as conn:
            res = conn.execute(insert(priors).values(for_study_uid=for_study_uid, state="querying",
                                                     started_at=now()))
            return int(res.inserted_primary_key[0])

    def expect_prior(self, lookup_id: int, prior_study_uid: str) -> None:
        """Committed before the retrieve: instances of ``prior_study_uid`` are recorded as priors from now on."""
        with self.engine.begin() as conn:
            conn.execute(update(priors).where(priors.c.id == lookup_id)
                         .values(prior_study_uid=prior_study_uid, state="retrieving"))

    def finish_prior_lookup(self, lookup_id: int, state: str, outcome: str, seconds: float) -> None:
        """End a lookup: found | none | timeout | error, with a short sentence (never PHI) and its duration."""
        with self.engine.begin() as conn:
            conn.execute(update(priors).where(priors.c.id == lookup_id)
                         .values(state=state, outcome=outcome, finished_at=now(), seconds=seconds))
