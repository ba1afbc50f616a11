"""``dicom-node probe``: the go-live check of one endpoint. One synthetic, PHI-free request
(:mod:`node.models.probe_inputs`) through the node's own client and contract, then what came back and what the node
will do with it: HTTP status and latency, the reply's shape and variant as recognised, the model version found and
where, the deployment's timeout and concurrency (workspace endpoints), and whether the node can use the reply.

Each model's request and reading of the reply is in :mod:`node.models.probe_models`; this module runs them and
adds what every endpoint shares (errors by cause, versions, the deployment's settings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from node.config import EndpointSection, NodeConfig

__all__ = ["ProbeReport", "probe_endpoint", "render"]

API_DEFAULT_TIMEOUT_MS = 5000
SAMPLE_TIMEOUT_MS = {"medimageparse3d": 180000}  # Microsoft's deploy notebooks; 90000 for the others


@dataclass
class ProbeReport:
    """What the probe of one endpoint found; ``usable`` False makes the command exit 1."""

    endpoint: str
    model: str
    target: str
    auth: str
    request: str = ""
    status: int | None = None
    latency_seconds: float | None = None
    request_id: str | None = None
    server_request_id: str | None = None
    answered_by: str | None = None
    emulated: bool = False
    reply: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    version_source: str | None = None
    deployment: dict[str, Any] | None = None
    node_will: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def usable(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["usable"] = self.usable
        return doc


def _deployment_facts(report: ProbeReport, name: str, cfg: EndpointSection) -> None:
    """The workspace's view of the deployment: timeout, concurrency, instances, auth mode, against the config."""
    from node.invoke.deployments import lookup

    found = lookup(cfg)
    if found is None:
        report.deployment = None
        return
    if found.error:
        report.deployment = {"error": found.error}
        report.warnings.append(f"the workspace could not be read ({found.error}): timeout, concurrency and the "
                               f"model version are unknown here")
        return
    dep = found.serving(cfg.deployment, report.answered_by)
    facts: dict[str, Any] = {"auth_mode": found.auth_mode, "deployments": {
        d.name: {"model": d.model, "traffic": d.traffic} for d in found.deployments.values()}}
    if dep is not None:
        facts.update(name=dep.name, model=dep.model, request_timeout_ms=dep.request_timeout_ms,
                     max_concurrent_requests_per_instance=dep.max_concurrent_requests_per_instance,
                     instance_count=dep.instance_count, max_pending=dep.max_pending)
        timeout = dep.request_timeout_ms
        sample = SAMPLE_TIMEOUT_MS.get(cfg.model, 90000)
        if timeout is not None and timeout <= API_DEFAULT_TIMEOUT_MS:
            report.warnings.append(f"deployment {dep.name} has request_timeout_ms {timeout} (the API default): the "
                                   f"model will answer 408 on large inputs; Microsoft's samples deploy with {sample}")
        if timeout is not None and timeout / 1000 > cfg.timeout_seconds:
            report.warnings.append(f"endpoints.{name}.timeout_seconds {cfg.timeout_seconds:g} is shorter than the "
                                   f"deployment's request_timeout_ms {timeout}: the node gives up first")
        if dep.max_pending is not None and cfg.max_concurrency > dep.max_pending:
            report.warnings.append(f"endpoints.{name}.max_concurrency {cfg.max_concurrency} is above what Azure "
                                   f"queues ({dep.max_pending} = 2 x max_concurrent_requests_per_instance "
                                   f"{dep.max_concurrent_requests_per_instance or 1} x {dep.instance_count} instances):"
                                   f" expect 429s; lower max_concurrency or scale the deployment")
    elif len(found.deployments) > 1:
        report.warnings.append("the endpoint splits its traffic between deployments and the node pins none "
                               f"(endpoints.{name}.deployment): results may come from different models")
    mode = found.auth_mode
    if mode == "aad_token" and cfg.auth == "key" and (cfg.key_env or cfg.key_file):
        report.problems.append(f"the endpoint takes Entra tokens (auth_mode aad_token): set endpoints.{name}.auth: "
                               f"entra (a key is refused)")
    if mode == "key" and cfg.auth == "entra":
        report.problems.append(f"the endpoint takes keys (auth_mode key): set endpoints.{name}.auth: key")
    if mode == "aml_token" and (cfg.key_env or cfg.key_file):
        report.warnings.append("the endpoint takes Azure ML tokens (auth_mode aml_token), which expire: leave "
                               "key_env/key_file out so the node fetches and renews them through the workspace")
    report.deployment = facts


def _error_facts(report: ProbeReport, name: str, exc: Any) -> None:
    report.status = exc.status
    report.error = {"cause": exc.cause, "status": exc.status, "model_status": exc.model_status,
                    "model_reason": exc.model_reason, "message": exc.message[:500]}
    advice = {
        "model-input": "the model refused the probe's synthetic input: the node fails such a study at once with "
                       "this reason and goes on with the others",
        "model-error": "the model container failed on the probe: the node tries such a study again "
                       f"(endpoints.{name}.model_error_retries) without stopping the others",
        "timeout": "the deployment's request_timeout_ms ran out on a small synthetic input: raise it "
                   "(Microsoft's samples deploy with 90000 ms, 180000 for 3D)",
        "auth": f"the endpoint refused the credential: check endpoints.{name}.auth (key: key_env/key_file holds "
                f"the endpoint's key; entra: a token for https://ml.azure.com/.default; aml_token endpoints: name "
                f"the workspace and leave key_env out)",
        "throttled": "the endpoint throttles (429): lower max_concurrency or scale the deployment",
        "unavailable": "the endpoint did not answer usably (network, 5xx)",
    }.get(exc.cause, "the call failed")
    report.problems.append(f"HTTP {exc.status if exc.status is not None else '-'} ({exc.cause}): {advice}")


def probe_endpoint(cfg: NodeConfig, name: str) -> ProbeReport:
    """Probe endpoint ``name`` of ``cfg``: one synthetic request, the reply read as the node reads it."""
    from node.invoke.client import EndpointClient, EndpointError
    from node.models.probe_models import PROBES
    from node.models.versions import resolve

    endpoint = cfg.endpoints[name]
    target = endpoint.url or f"workspace {endpoint.workspace} endpoint {endpoint.endpoint_name}"
    report = ProbeReport(endpoint=name, model=endpoint.model, target=target, auth=endpoint.auth)
    probe = PROBES[endpoint.model](name, endpoint, cfg)
    report.request = probe.describe
    # two attempts at most: a probe says what the endpoint does now, it does not wait out an outage
    once = endpoint.model_copy(update={"max_attempts": min(endpoint.max_attempts, 2), "backoff_max_seconds": 2.0})
    started = time.perf_counter()
    with EndpointClient(f"probe:{name}", once) as client:
        try:
            first = probe.call(client)
        except EndpointError as exc:
            report.latency_seconds = round(time.perf_counter() - started, 3)
            _error_facts(report, name, exc)
            _deployment_facts(report, name, endpoint)
            return report
        report.status = first.status
        report.latency_seconds = round(first.elapsed_seconds, 3)
        report.request_id, report.server_request_id = first.request_id, first.server_request_id
        report.answered_by, report.emulated = first.deployment, first.emulated
        report.version, report.version_source = resolve(name, endpoint, first.model_version, first.deployment)
        _deployment_facts(report, name, endpoint)
        try:
            probe.read(report)
        except ValueError as exc:
            report.problems.append(f"the reply cannot be read by the node: {exc}"[:600])
        except EndpointError as exc:  # a second call of the probe (one prompt per call) failed
            _error_facts(report, name, exc)
    report.node_will.append(f"label results with Algorithm Version {report.version!r} ({report.version_source})")
    if report.version_source and report.version_source.startswith(("none", f"endpoints.{name}.deployment ")):
        report.warnings.append(f"no model version reported or configured: set endpoints.{name}.model_version (e.g. "
                               f"the registry asset version) so an in-place update starts new caches")
    return report


def render(report: ProbeReport) -> str:
    """The report as a few lines of text."""
    lines = [f"endpoint {report.endpoint} ({report.model}) at {report.target}, auth {report.auth}",
             f"  request   {report.request}"]
    if report.status is not None or report.error:
        extra = ", EMULATED" if report.emulated else ""
        by = f", answered by deployment {report.answered_by}" if report.answered_by else ""
        lines.append(f"  reply     HTTP {report.status if report.status is not None else '-'} in "
                     f"{report.latency_seconds if report.latency_seconds is not None else '-'} s{by}{extra}")
    if report.error:
        e = report.error
        lines.append(f"  error     {e['cause']}: {e['message']}")
    for key, value in report.reply.items():
        lines.append(f"  {key:<9} {value}")
    if report.version:
        lines.append(f"  version   {report.version} ({report.version_source})")
    if report.deployment:
        lines.append("  deploy    " + ", ".join(f"{k} {v}" for k, v in report.deployment.items() if k != "deployments"))
    else:
        lines.append("  deploy    not read (no workspace configured: timeout and concurrency unknown here)")
    lines += [f"  node will {w}" for w in report.node_will]
    lines += [f"  WARNING   {w}" for w in report.warnings]
    lines += [f"  PROBLEM   {p}" for p in report.problems]
    lines.append(f"  verdict   {'OK: the node can use this endpoint' if report.usable else 'NOT USABLE (exit 1)'}")
    return "\n".join(lines)
