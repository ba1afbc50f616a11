"""What every model pipeline receives and returns: convert -> invoke -> write turns a job into result datasets.

A pipeline is a function ``run(ctx: JobContext) -> JobOutput``. It never touches the database or the
outbox: the worker stores what it returns, in one transaction, so a crash anywhere leaves the job either
not done (and re-run with the same result UIDs) or done with all its outbox rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import pydicom
from pydicom.uid import generate_uid

from node.config import EndpointSection, RuleSection


@dataclass
class JobContext:
    """Everything a pipeline may use for one job."""

    job: dict[str, Any]
    rule: RuleSection
    endpoint_name: str
    endpoint: EndpointSection
    client: Any  # node.invoke.client.EndpointClient
    instance_paths: list[Path]
    previous_results: Callable[[str], pydicom.Dataset | None]  # kind -> the result it replaces, if any
    # zero-shot labels stored for this study: label set -> SOP Instance UID -> winning label (node/store/embeddings.py)
    classifications: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    store: Any = None  # node.store.state.Store, for caches only (results go through JobOutput)
    # frontal header -> node.models.cxrreportgen.priors.PriorResult; None when priors are not configured
    prior_lookup: Callable[[pydicom.Dataset], Any] | None = None
    # result kinds some destination of the rule receives (destinations.<name>.results): "sc" asks for the
    # burned-in Secondary Captures (node/models/sc_fallback.py)
    result_kinds: frozenset[str] = frozenset({"sr", "gsps", "seg"})
    # accession number -> the HL7 order stored for it (node/store/hl7.py); None: no order lookup
    orders: Callable[[str], dict[str, Any] | None] | None = None

    def uid(self, label: str) -> str:
        """A result UID derived from the job: the same on every re-run of the job, new for a new job."""
        # The default prefix: with prefix=None pydicom ignores entropy_srcs and returns a random 2.25 UID.
        return generate_uid(entropy_srcs=[self.job["job_uid"], label])

    def model_version(self, reply: Any) -> str:
        """The model version behind ``reply`` (an :class:`~node.invoke.client.EndpointReply`), as
        :func:`node.models.versions.resolve` finds it: Algorithm Version and the key of the embedding caches."""
        from node.models.versions import resolve

        return resolve(self.endpoint_name, self.endpoint, getattr(reply, "model_version", None),
                       getattr(reply, "deployment", None))[0]

    @property
    def request_id(self) -> str:
        return f"dn-{self.job['job_uid'][:24]}-{self.job['attempts']}"


@dataclass
class JobOutput:
    """What a pipeline returns: the job's state and outcome, its result datasets, extra writes."""
    state: Literal["done", "skipped"]
    outcome: str
    results: list[tuple[str, pydicom.Dataset]] = field(default_factory=list)  # (kind, dataset)
    endpoint_seconds: float | None = None
    # extra writes run inside the transaction that finishes the job (embeddings, labels): fn(connection)
    writes: list[Callable[[Any], None]] = field(default_factory=list)


Pipeline = Callable[[JobContext], JobOutput]
