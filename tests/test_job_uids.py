"""Result UIDs come from the job: a re-run of the same job (after a crash before its commit) writes the same UIDs."""

from __future__ import annotations

from pydicom.uid import UID

from node.config import EndpointSection, RuleSection
from node.models.base import JobContext


def _context(job_uid: str) -> JobContext:
    return JobContext(job={"job_uid": job_uid, "attempts": 1}, rule=RuleSection(name="r", endpoint="e"),
                      endpoint_name="e", endpoint=EndpointSection(model="cxrreportgen", url="http://x/score", auth="none"),
                      client=None, instance_paths=[], previous_results=lambda kind: None)


def test_the_same_job_gives_the_same_uids_and_another_job_others() -> None:
    first, again, other = _context("job-1"), _context("job-1"), _context("job-2")
    labels = ["sr", "sr-series", "gsps", "seg-1.2.3"]
    uids = [first.uid(label) for label in labels]
    assert uids == [again.uid(label) for label in labels]
    assert len(set(uids)) == len(labels)
    assert not set(uids) & {other.uid(label) for label in labels}
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64
