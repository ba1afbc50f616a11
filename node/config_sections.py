"""The sections of the node's configuration (``node``, ``endpoints``, ``destinations``, ``rules``, ...).

The one model they make up, :class:`node.config.NodeConfig`, and the one reader of the file are in
:mod:`node.config`; every key is documented in ``config/example.yaml``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.config_completion import NodeCompletionKeys, RuleCompletionKeys
from node.dicom.cores import auto_receivers
from node.fhir.settings import FhirDestinationKeys
from node.hl7.settings import Hl7DestinationKeys, check_destination, destination_defaults
from node.http.auth_settings import HttpTlsSection, OidcSection, check_http_auth
from node.models import registry
from node.models.endpoint_settings import EndpointModelSettings

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1..16 chars


def _check_ae_title(value: str) -> str:
    if not AE_TITLE_RE.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable characters, not only spaces, no backslash")
    return value


INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _check_instance_id(value: str) -> str:
    # it names a folder (<storage_dir>/nodes/<id>) and prefixes lease owners ("<id>:<pid>:<random>")
    if not INSTANCE_ID_RE.match(value):
        raise ValueError("an instance_id is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


AETitle = Annotated[str, Field(min_length=1, max_length=16)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


class TlsServerSection(_Strict):
    """DICOM TLS for the Storage SCP, on its own port (the plain port stays as configured)."""

    port: int = Field(ge=1, le=65535, description="The TLS port (2762 is DICOM's registered one)")
    cert_file: Path = Field(description="PEM certificate (chain) of this node")
    key_file: Path = Field(description="PEM private key of cert_file")
    ca_file: Path | None = Field(None, description="PEM CA bundle that client certificates must chain to")
    require_client_cert: bool = Field(True, description="Refuse clients without a certificate signed by ca_file")
    min_version: TlsVersion = "TLSv1.2"
    handshake_timeout_seconds: float = Field(10.0, gt=0, description="A client silent for longer is dropped")

    @model_validator(mode="after")
    def _ca_for_clients(self) -> "TlsServerSection":
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file, the CA bundle client certificates must chain to")
        return self


class TlsClientSection(_Strict):
    """DICOM TLS toward one destination."""

    ca_file: Path = Field(description="PEM CA bundle the destination's certificate must chain to")
    cert_file: Path | None = Field(None, description="PEM client certificate, for peers that require one")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    check_hostname: bool = Field(True, description="The certificate must name server_name (or host)")
    server_name: str | None = Field(None, description="Name expected in the destination's certificate; default host")
    min_version: TlsVersion = "TLSv1.2"

    @model_validator(mode="after")
    def _pair(self) -> "TlsClientSection":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


def _check_host_allowlist(hosts: dict[str, list[str]]) -> dict[str, list[str]]:
    import ipaddress

    for ae, nets in hosts.items():
        _check_ae_title(ae)
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"allowed_hosts[{ae!r}]: {net!r} is not an IP address or network (10.0.0.0/8)") from None
    return hosts


class NodeSection(NodeCompletionKeys, _Strict):
    """The node's own DICOM identity, its spool and its timers."""

    ae_title: AETitle = "AINODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_ae_titles: list[AETitle] = Field(default_factory=list)
    storage_dir: Path = Path("./var")
    local_dir: Path | None = Field(
        None, description="This node's own files (metrics samples, worker pid file, default audit trail and queue "
        "file); default storage_dir with the SQLite database, <storage_dir>/nodes/<instance_id> otherwise")
    study_complete_after_seconds: float = Field(10.0, gt=0)
    min_free_disk_mb: int = Field(
        200, ge=0, description="Below this free space on the spool's filesystem, C-STORE answers 0xA700."
    )
    max_associations: int = Field(16, ge=1)
    # Not set: chosen from the usable cores (node.dicom.cores: 1 below 4 cores, else half, at most 4). Above 1 the
    # receivers share the port with SO_REUSEPORT; serve first checks that nothing else listens on it.
    receivers: int = Field(
        default_factory=auto_receivers, ge=1,
        description="Receiver processes sharing the DICOM port (SO_REUSEPORT); max_associations is per process")
    max_pdu_size: int = Field(0, ge=0, description="0: unlimited (pynetdicom's convention)")
    network_timeout_seconds: float = Field(60.0, gt=0)
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Names this node in leases and its own folder; two nodes sharing a database must differ.",
    )

    allowed_hosts: dict[str, list[str]] = Field(
        default_factory=dict, description="Calling AE title -> IP addresses/networks it may connect from")
    tls: TlsServerSection | None = None

    _ae = field_validator("ae_title")(lambda cls, v: _check_ae_title(v))
    _id = field_validator("instance_id")(lambda cls, v: _check_instance_id(v))
    _hosts = field_validator("allowed_hosts")(lambda cls, v: _check_host_allowlist(v))

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class EndpointSection(EndpointModelSettings, _Strict):
    """One deployed model endpoint (Azure ML managed online endpoint or the local emulator)."""

    model: str = Field(description="The model behind the endpoint: a name from node/models/registry.py")
    url: str | None = Field(None, description="The scoring URI, e.g. https://<endpoint>.<region>.inference.ml.azure.com/score")
    auth: Literal["key", "entra", "none"] = "key"
    key_env: str | None = Field(None, description="Environment variable holding the endpoint key (auth: key)")
    key_file: Path | None = Field(
        None, description="File holding the endpoint key (a mounted secret), re-read when it changes (auth: key)")
    deployment: str | None = Field(None, description="Sent as azureml-model-deployment when set")
    timeout_seconds: float = Field(180.0, gt=0, description="Read timeout of one call")
    connect_timeout_seconds: float = Field(10.0, gt=0)
    max_concurrency: int = Field(4, ge=1)
    max_attempts: int = Field(6, ge=1, description="Calls per job before it fails (retries on 429/5xx/network)")
    backoff_initial_seconds: float = Field(1.0, ge=0)
    backoff_max_seconds: float = Field(60.0, ge=0)
    give_up_after_seconds: float = Field(
        86400.0, gt=0, description="Park a job whose endpoint still fails this long after its first failure")
    retry_initial_seconds: float = Field(
        30.0, ge=0, description="Wait before the first retry of a failed job when the endpoint sends no Retry-After")
    retry_max_seconds: float = Field(900.0, ge=0, description="... doubling per consecutive failure, capped here")
    box_reference: Literal["center_crop", "full_image"] = Field(
        "center_crop",
        description="Frame of CXRReportGen boxes: the centre square crop of the frontal image (Microsoft's sample) "
        "or the whole image (the product page)",
    )
    # Users who know only their workspace and endpoint name: the scoring URI and key are looked up with MLClient.
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    endpoint_name: str | None = None
    verify_tls: bool = True

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in registry.MODELS:
            raise ValueError(f"allowed: {', '.join(registry.model_names())}")
        return value

    @model_validator(mode="after")
    def _url_or_workspace(self) -> "EndpointSection":
        workspace_keys = (self.subscription_id, self.resource_group, self.workspace, self.endpoint_name)
        if self.url is None and not all(workspace_keys):
            raise ValueError(
                "give either url, or all of subscription_id, resource_group, workspace and endpoint_name"
            )
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError("url must start with https:// (or http:// for a local emulator)")
        if self.auth == "key" and self.url is not None and not (self.key_env or self.key_file):
            raise ValueError("auth: key needs key_env, the environment variable that holds the key, or key_file")
        if self.key_env and self.key_file:
            raise ValueError("give key_env or key_file, not both")
        return self


#: The scope of the Azure DICOM service (Azure Health Data Services) for ``auth: entra``
AZURE_DICOM_SCOPE = "https://dicom.healthcareapis.azure.com/.default"

#: Kinds of result a destination can receive (what its workstations display); ``sc`` is the burned-in fallback.
ResultKind = Literal["sr", "gsps", "seg", "sc", "report"]  # report: hl7v2/fhir destinations (node/reports)
DEFAULT_RESULT_KINDS: tuple[str, ...] = ("sr", "gsps", "seg")


class DicomWebAuth(_Strict):
    """How the node authenticates to a DICOMweb service (a destination or a source)."""

    url: str | None = Field(None, description="DICOMweb base URL, e.g. https://<workspace>-<service>.dicom.azurehealthcareapis.com/v2")
    auth: Literal["none", "basic", "bearer", "entra"] = "none"
    user: str | None = Field(None, description="User name (auth: basic)")
    password_env: str | None = Field(None, description="Environment variable holding the password (auth: basic)")
    token_env: str | None = Field(None, description="Environment variable holding the bearer token (auth: bearer)")
    scope: str | None = Field(None, description=f"Entra scope (auth: entra); default {AZURE_DICOM_SCOPE}")
    verify_tls: bool = Field(True, description="Check the service's HTTPS certificate")

    def _check_dicomweb(self) -> None:
        if self.url is None:
            raise ValueError("a DICOMweb service needs url, e.g. https://<service>.dicom.azurehealthcareapis.com/v2")
        if not re.match(r"^https?://", self.url):
            raise ValueError("url must start with https:// (or http:// for a local peer)")
        if self.auth == "basic" and not (self.user and self.password_env):
            raise ValueError("auth: basic needs user and password_env (the variable holding the password)")
        if self.auth == "bearer" and not self.token_env:
            raise ValueError("auth: bearer needs token_env, the environment variable that holds the token")


class DestinationSection(DicomWebAuth, Hl7DestinationKeys, FhirDestinationKeys):
    """A peer that receives results: by C-STORE (``type: dimse``, answers C-FIND/C-MOVE for priors), by STOW-RS
    (``type: dicomweb``, answers QIDO-RS/WADO-RS), ORU^R01 (``type: hl7v2``) or a FHIR Bundle (``type: fhir``)."""

    type: Literal["dimse", "dicomweb", "hl7v2", "fhir"] = "dimse"  # hl7v2, fhir: node/hl7, node/fhir
    ae_title: AETitle | None = Field(None, description="The peer's AE title (type: dimse)")
    host: str | None = Field(None, description="The peer's address (type: dimse)")
    port: int | None = Field(None, ge=1, le=65535, description="The peer's DICOM port (type: dimse)")
    instances_per_request: int = Field(16, ge=1, description="Instances per STOW-RS request (type: dicomweb)")
    max_attempts: int = Field(20, ge=1, description="Send attempts before a result is parked as failed")
    max_processing_failure_attempts: int = Field(
        3, ge=1, description="Attempts for 0x0110 and 0xCxxx answers, which may not be transient"
    )
    backoff_initial_seconds: float = Field(2.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)
    give_up_after_seconds: float = Field(86400.0, gt=0, description="Park a result not delivered after this long")
    timeout_seconds: float = Field(30.0, gt=0, description="ACSE/DIMSE/network timeout of an association")
    tls: TlsClientSection | None = None
    results: list[ResultKind] = Field(
        default_factory=lambda: list(DEFAULT_RESULT_KINDS),
        description="Result kinds this destination receives: sr, gsps, seg, sc (burned-in SC); report (hl7v2, fhir)")
    storage_commitment: bool = Field(
        False, description="Ask the PACS to commit each result (N-ACTION); delivered only once it reports committed")
    commitment_timeout_seconds: float = Field(
        600.0, gt=0, description="Ask again when no commitment report came back within this time")
    verify_by: Literal["c-find", "none"] = Field(
        "none", description="Before resending a result whose C-STORE answer was never seen, ask the PACS by "
        "C-FIND whether it holds it (none: resend; at-least-once unless storage_commitment)")

    _ae = field_validator("ae_title")(lambda cls, v: v if v is None else _check_ae_title(v))
    _defaults = model_validator(mode="before")(destination_defaults)

    @model_validator(mode="after")
    def _kind(self) -> "DestinationSection":
        if self.type == "dimse":
            if self.ae_title is None or self.host is None or self.port is None:
                raise ValueError("type: dimse (the default) needs ae_title, host and port")
        elif self.type == "dicomweb":
            self._check_dicomweb()
        check_destination(self)
        return self


class SourceSection(DicomWebAuth):
    """A DICOMweb service the node pulls studies from: the Azure DICOM service's change feed."""

    type: Literal["azure-dicom-changefeed"] = Field(description="The only kind today: azure-dicom-changefeed")
    name: str | None = Field(None, description="Names the source in status and logs; default the url")
    poll_seconds: float = Field(10.0, gt=0, description="Pause between polls when the feed has nothing new")
    batch: int = Field(100, ge=1, le=200, description="Change-feed entries per request (limit; the service allows 200)")
    timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one HTTP request to the service")
    backoff_max_seconds: float = Field(300.0, gt=0, description="Longest pause after failed polls (doubling from poll_seconds)")

    @model_validator(mode="after")
    def _service(self) -> "SourceSection":
        self._check_dicomweb()
        return self

    @property
    def key(self) -> str:
        """The source's name in the database (its offset) and in status."""
        return self.name or str(self.url)


MatchValue = str | int | float | list[str | int | float]
#: ``match: {classified: {label_set: [labels]}}``: the zero-shot labels of the study's classification rules
CLASSIFIED_KEY = "classified"
ClassifiedMatch = dict[str, str | list[str]]


class RuleSection(RuleCompletionKeys, _Strict):
    """A routing rule: which series go to which endpoint, and where the results go."""

    name: str = Field(min_length=1)
    match: dict[str, MatchValue | ClassifiedMatch] = Field(default_factory=dict)
    endpoint: str
    send_to: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["normal", "urgent"] = Field(
        "normal", description="urgent: this rule's jobs go first when an endpoint's backlog drains")

    @field_validator("match")
    @classmethod
    def _keywords(cls, match: dict[str, MatchValue]) -> dict[str, MatchValue]:
        from pydicom.datadict import tag_for_keyword

        for key, value in match.items():
            if key == CLASSIFIED_KEY:
                if not isinstance(value, dict) or not value:
                    raise ValueError("match.classified maps label sets to labels, e.g. {view: [x-ray chest lateral]}")
                continue
            if isinstance(value, dict):
                raise ValueError(f"match key {key!r}: a mapping is allowed only under {CLASSIFIED_KEY!r}")
            if tag_for_keyword(key) is None:
                raise ValueError(f"match key {key!r} is not a DICOM keyword (e.g. Modality, BodyPartExamined)")
        return match


class DatabaseSection(_Strict):
    """Where the node keeps its state (SQLite by default, or PostgreSQL)."""
    url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<storage_dir>/node.db")
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    unsafe_fast_sqlite: bool = Field(
        False, description="Allow sqlite_synchronous below FULL: a power cut may then lose acknowledged instances")

    @model_validator(mode="after")
    def _durable(self) -> "DatabaseSection":
        if self.sqlite_synchronous == "NORMAL" and not self.unsafe_fast_sqlite:
            raise ValueError(
                "sqlite_synchronous: NORMAL breaks the promise that an instance is fsynced and committed before "
                "its C-STORE success (a power cut can lose the last commits); allowed: FULL or EXTRA, or set "
                "unsafe_fast_sqlite: true to accept that loss")
        return self


class QueueSection(_Strict):
    """The work queue (Huey on SQLite or Redis), its worker threads and leases."""
    url: str | None = Field(
        None, description="Huey broker: default sqlite file <storage_dir>/queue.db; redis://host:port/db also accepted"
    )
    workers: int = Field(4, ge=1, description="Worker threads of the worker process")
    lease_seconds: float = Field(
        60.0, gt=0, description="A claimed job or send is renewed every lease_seconds/4 while it runs; one not "
        "renewed for this long is taken over by the sweep")
    sweep_seconds: float | None = Field(
        None, gt=0, description="How often the worker sweeps for stale work (expired leases, quiet studies whose "
        "timer died with another process or node); default lease_seconds/4")


class RetentionSection(_Strict):
    """How long finished studies and their files are kept."""
    purge_delivered_after_hours: float = Field(
        72.0, ge=0, description="Spool files, results and rows of a study whose results were all delivered"
    )
    keep_failed_hours: float = Field(
        168.0, ge=0, description="A study whose job failed for good is kept this long (a parked job: until retried)")


class PriorsSection(_Strict):
    """Fetching the patient's previous chest X-ray (and its report) from a PACS for CXRReportGen."""

    enabled: bool = True
    query: str = Field(min_length=1, description="The destinations entry answering C-FIND and C-MOVE/C-GET")
    method: Literal["c-move", "c-get"] = "c-move"
    lookback_days: int = Field(1825, ge=1, description="Only studies this many days before the current one")
    timeout_seconds: float = Field(30.0, gt=0, description="The whole lookup (query, retrieve) ends by then")
    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"], min_length=1)
    report_text_attributes: list[str] = Field(
        default_factory=list, description="Keywords of the prior image read as its report when the study has no SR")
    report_text_dir: Path | None = Field(
        None, description="A folder of <prior StudyInstanceUID>.txt reports (e.g. a RIS export), when no SR")

    @field_validator("report_text_attributes")
    @classmethod
    def _keywords(cls, values: list[str]) -> list[str]:
        from pydicom.datadict import tag_for_keyword

        for key in values:
            if tag_for_keyword(key) is None:
                raise ValueError(f"{key!r} is not a DICOM keyword (e.g. ImageComments, StudyComments)")
        return values


class HttpSection(_Strict):
    """The node's HTTP side: health checks, Prometheus metrics and a read-only status page (node/http)."""

    host: str = Field("127.0.0.1", description="Address the HTTP side listens on")
    port: int | None = Field(8081, ge=1, le=65535, description="null: no HTTP side")
    token_env: str | None = Field(
        None, description="Environment variable holding the bearer token of write actions; unset: actions are off")
    show_phi: bool = Field(False, description="Show patient names, IDs and accession numbers on the status page")
    disk_floor_mb: int | None = Field(
        None, ge=0, description="/readyz fails below this free space on the spool; default node.min_free_disk_mb")
    stow_max_request_mb: float = Field(
        1024.0, gt=0, description="STOW-RS in (POST /dicomweb/studies): the largest request body accepted (413 above)")
    tls: HttpTlsSection | None = Field(None, description="HTTPS on the HTTP side (node/http/auth_settings.py)")
    oidc: OidcSection | None = Field(None, description="Sign-in and machine JWTs (node/http/auth_settings.py)")
    check_auth = model_validator(mode="after")(check_http_auth)


class LoggingSection(_Strict):
    """How log lines are written (the level stays the top-level ``log_level``)."""

    format: Literal["text", "json"] = Field("text", description="json: one JSON object per line, for collectors")
