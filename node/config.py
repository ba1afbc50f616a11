"""The node's configuration: one pydantic model, read from one YAML file, in one place.

Every error names the file, the key and what is allowed (:class:`ConfigError`). Secrets never live in the
file: endpoint keys come from the environment variable named by ``key_env``. Relative paths are resolved
against the folder of the config file, so a config file can be moved together with its spool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from node.audit.settings import AuditSection
from node.config_sections import (  # the sections of the one model below
    CLASSIFIED_KEY,
    DatabaseSection,
    DestinationSection,
    EndpointSection,
    HttpSection,
    LoggingSection,
    MatchValue,
    NodeSection,
    PriorsSection,
    QueueSection,
    RetentionSection,
    RuleSection,
    SourceSection,
    TlsClientSection,
    TlsServerSection,
    _Strict,
)
from node.hl7.settings import MllpListenerSection
from node.monitoring.settings import MonitoringSection
from node.models import registry
from node.models.params import RuleParamsError
from node.ups.settings import UpsSourceSection, check_references


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, the key and what is allowed."""



class NodeConfig(_Strict):
    """The whole configuration file."""

    node: NodeSection = Field(default_factory=NodeSection)
    endpoints: dict[str, EndpointSection] = Field(default_factory=dict)
    destinations: dict[str, DestinationSection] = Field(default_factory=dict)
    rules: list[RuleSection] = Field(default_factory=list)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    queue: QueueSection = Field(default_factory=QueueSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    priors: PriorsSection | None = Field(None, description="Prior chest X-ray lookup; absent: no priors")
    sources: list[Annotated[SourceSection | UpsSourceSection, Field(discriminator="type")]] = Field(
        default_factory=list, description="DICOMweb services polled for studies, and UPS-RS worklists (AIW-I)")
    mllp: MllpListenerSection | None = Field(None, description="HL7 v2 listener for orders (node/hl7); absent: none")
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection, description="Agreement and drift")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logging: LoggingSection = Field(default_factory=LoggingSection)
    http: HttpSection = Field(default_factory=lambda: HttpSection(port=None))
    source_path: Path | None = Field(None, exclude=True, description="Set by load_config; not a key of the file")

    @model_validator(mode="after")
    def _references(self) -> "NodeConfig":
        names = set()
        for i, rule in enumerate(self.rules):
            if rule.name in names:
                raise _KeyedError(("rules", i, "name"), f"duplicate rule name {rule.name!r}")
            names.add(rule.name)
            if rule.endpoint not in self.endpoints:
                raise _KeyedError(
                    ("rules", i, "endpoint"),
                    f"unknown endpoint {rule.endpoint!r}; allowed: {sorted(self.endpoints) or 'define one under endpoints'}",
                )

            try:
                registry.params_for(self.endpoints[rule.endpoint].model, rule.params)
            except RuleParamsError as exc:
                raise _KeyedError(("rules", i, "params", *exc.loc), str(exc)) from None
            for j, dest in enumerate(rule.send_to):
                if dest not in self.destinations:
                    raise _KeyedError(
                        ("rules", i, "send_to", j),
                        f"unknown destination {dest!r}; allowed: {sorted(self.destinations) or 'define one under destinations'}",
                    )
        return self

    @model_validator(mode="after")
    def _ups_references(self) -> "NodeConfig":
        bad = check_references(self.sources, [r.name for r in self.rules], self.destinations)
        if bad is not None:
            raise _KeyedError(*bad)
        return self

    @model_validator(mode="after")
    def _priors_reference(self) -> "NodeConfig":
        dicom = sorted(n for n, d in self.destinations.items() if d.type in ("dimse", "dicomweb"))
        if self.priors is not None and self.priors.query not in dicom:
            raise _KeyedError(("priors", "query"), f"unknown DICOM destination {self.priors.query!r}; allowed: "
                                                   f"{dicom or 'define one under destinations'}")
        return self

    # Derived locations -------------------------------------------------------------------------------
    @property
    def storage_dir(self) -> Path:
        return self.node.storage_dir

    @property
    def node_dir(self) -> Path:
        """This node's own files: metrics samples, the worker pid file, the default audit trail and queue file.

        Several nodes may share ``storage_dir`` (spool and results) only with a shared database, so with a
        database other than the default SQLite file each node keeps its own files under its ``instance_id``.
        """
        if self.node.local_dir is not None:
            return self.node.local_dir
        if self.database.url is None or self.database.url.startswith("sqlite"):
            return self.storage_dir
        return self.storage_dir / "nodes" / self.node.instance_id

    @property
    def sweep_seconds(self) -> float:
        """How often the worker sweeps for stale work: ``queue.sweep_seconds``, default a quarter lease."""
        return self.queue.sweep_seconds or max(0.5, self.queue.lease_seconds / 4.0)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.storage_dir / 'node.db'}"

    @property
    def audit_path(self) -> Path | None:
        if not self.audit.enabled:
            return None
        return self.audit.path or self.node_dir / "audit.jsonl"

    @property
    def queue_url(self) -> str:
        return self.queue.url or f"sqlite:///{self.node_dir / 'queue.db'}"


class _KeyedError(ValueError):
    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _resolve_paths(cfg: NodeConfig, base: Path) -> NodeConfig:
    storage = cfg.node.storage_dir
    if not storage.is_absolute():
        storage = (base / storage).resolve()
    local = cfg.node.local_dir
    if local is not None and not local.is_absolute():
        local = (base / local).resolve()
    node = cfg.node.model_copy(update={"storage_dir": storage, "local_dir": local})
    update: dict[str, Any] = {"node": node}
    if cfg.priors is not None and cfg.priors.report_text_dir is not None and not cfg.priors.report_text_dir.is_absolute():
        update["priors"] = cfg.priors.model_copy(update={"report_text_dir": (base / cfg.priors.report_text_dir).resolve()})
    return _resolve_security_paths(cfg.model_copy(update=update), base)


def _resolve_security_paths(cfg: NodeConfig, base: Path) -> NodeConfig:
    """TLS certificate/key/CA files and the audit file, relative to the config file's folder."""

    def fix(section: BaseModel | None, *names: str) -> Any:
        if section is None:
            return None
        update = {n: (base / getattr(section, n)).resolve() for n in names
                  if getattr(section, n) is not None and not getattr(section, n).is_absolute()}
        return section.model_copy(update=update)

    node = cfg.node.model_copy(update={"tls": fix(cfg.node.tls, "cert_file", "key_file", "ca_file")})
    dests = {name: d.model_copy(update={"tls": fix(d.tls, "ca_file", "cert_file", "key_file")})
             for name, d in cfg.destinations.items()}
    audit = fix(cfg.audit, "path")
    if audit.syslog is not None:
        audit = audit.model_copy(update={"syslog": fix(audit.syslog, "ca_file", "cert_file", "key_file")})
    endpoints = {name: fix(e, "key_file") for name, e in cfg.endpoints.items()}
    mllp = cfg.mllp and cfg.mllp.model_copy(update={"tls": fix(cfg.mllp.tls, "cert_file", "key_file", "ca_file")})
    http = cfg.http.model_copy(update={"tls": fix(cfg.http.tls, "cert_file", "key_file"),
                                       "oidc": fix(cfg.http.oidc, "ca_file")})
    return cfg.model_copy(update={"node": node, "destinations": dests, "audit": audit, "endpoints": endpoints,
                                  "mllp": mllp, "http": http})


def parse_config(data: Any, source: Path | str = "<memory>", base_dir: Path | None = None) -> NodeConfig:
    """Validate a parsed YAML document; relative paths are taken from ``base_dir``."""
    source = Path(source) if not isinstance(source, Path) else source
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold a mapping of sections (node, endpoints, ...)")
    try:
        cfg = NodeConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"]
            ctx = err.get("ctx") or {}
            inner = ctx.get("error")
            if isinstance(inner, _KeyedError):
                loc, msg = inner.loc, str(inner)
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if err["type"] == "extra_forbidden":
                msg = "unknown key; see config/example.yaml for the keys allowed here"
            elif err["type"] == "literal_error" and ctx.get("expected"):
                msg = f"allowed: {ctx['expected']}"
            lines.append(f"{source}: {_format_loc(loc)}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    cfg = _resolve_paths(cfg, base_dir or (source.parent if source.name != "<memory>" else Path.cwd()))
    return cfg.model_copy(update={"source_path": source})


def load_config(path: Path | str) -> NodeConfig:
    """Read and validate one YAML configuration file. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, path, path.resolve().parent)


__all__ = ["CLASSIFIED_KEY", "AuditSection", "ConfigError", "DatabaseSection", "DestinationSection", "EndpointSection",
           "MatchValue", "NodeConfig", "NodeSection", "PriorsSection", "QueueSection", "RetentionSection", "RuleSection",
           "TlsClientSection", "TlsServerSection", "load_config", "parse_config"]
