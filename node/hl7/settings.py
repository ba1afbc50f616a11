"""Configuration keys of Hospital IT over HL7 v2: ``type: hl7v2`` destinations and the ``mllp`` listener.

Plain pydantic models that import nothing from :mod:`node.config` (which imports them): the destination keys are
a mixin of :class:`node.config_sections.DestinationSection`, the listener is the top-level ``mllp`` section.
Every key is documented in ``config/example.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from node.fhir.settings import FHIR_KEYS

#: HL7 v2 HD namespace IDs (MSH-3..6): no delimiter characters
HD_RE = re.compile(r"^[^|^~\\&\r\n]{1,180}$")

#: Result kinds only hospital-IT destinations receive
REPORT_KIND = "report"
HOSPITAL_IT_TYPES = ("hl7v2", "fhir")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetractionSection(_Strict):
    """How a retraction is said to this RIS (receivers differ): OBR-25 and the OBX-11 of every row."""

    obr25: Literal["C", "X"] = Field("C", description="OBR-25 of the retraction: C (corrected) or X (cancelled)")
    obx11: Literal["W", "D", "X"] = Field(
        "W", description="OBX-11 of every row: W (post original as wrong), D (delete) or X (cannot be obtained)")


class Hl7DestinationKeys(_Strict):
    """The keys of a ``type: hl7v2`` destination (``host``, ``port``, ``tls`` are the destination's own)."""

    sending_application: str = Field("DICOM_AI_NODE", description="MSH-3 (HD namespace ID)")
    sending_facility: str | None = Field(None, description="MSH-4 (HD namespace ID)")
    receiving_application: str | None = Field(None, description="MSH-5 (HD namespace ID)")
    receiving_facility: str | None = Field(None, description="MSH-6 (HD namespace ID)")
    processing_id: Literal["P", "T", "D"] = Field("P", description="MSH-11: P production, T training, D debugging")
    retraction: RetractionSection = Field(default_factory=RetractionSection)
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest ACK frame read from the peer (bytes)")

    @model_validator(mode="after")
    def _hd_values(self) -> "Hl7DestinationKeys":
        for key in ("sending_application", "sending_facility", "receiving_application", "receiving_facility"):
            value = getattr(self, key)
            if value is not None and not HD_RE.match(value):
                raise ValueError(f"{key} must be 1 to 180 characters without | ^ ~ \\ & or line breaks")
        return self


def destination_defaults(data: Any) -> Any:
    """Before validation: a hospital-IT destination receives ``report`` results unless ``results`` says otherwise."""
    if isinstance(data, dict) and data.get("type") in HOSPITAL_IT_TYPES and "results" not in data:
        return {**data, "results": [REPORT_KIND]}
    return data


def check_destination(dest: Any) -> None:
    """After validation: the keys that belong to each kind of destination (raises ValueError naming them)."""
    hl7_keys = [k for k in Hl7DestinationKeys.model_fields if k in dest.model_fields_set]
    if dest.type != "hl7v2" and hl7_keys:
        raise ValueError(f"{', '.join(hl7_keys)}: only for type: hl7v2 destinations")
    fhir_keys = [k for k in FHIR_KEYS if k in dest.model_fields_set]
    if dest.type != "fhir" and fhir_keys:
        raise ValueError(f"{', '.join(fhir_keys)}: only for type: fhir destinations")
    hospital = dest.type in HOSPITAL_IT_TYPES
    if hospital and list(dest.results) != [REPORT_KIND]:
        raise ValueError(f"type: {dest.type} destinations receive results: [report] only")
    if not hospital and REPORT_KIND in dest.results:
        raise ValueError("results: report is for type: hl7v2 and type: fhir destinations")
    if dest.type == "hl7v2":
        if dest.host is None or dest.port is None:
            raise ValueError("type: hl7v2 needs host and port (the RIS's MLLP listener)")
        if dest.storage_commitment or dest.verify_by != "none":
            raise ValueError("storage_commitment and verify_by are DICOM keys; an hl7v2 destination has no such "
                             "service (an unanswered ORU is resent with the same MSH-10)")
    if dest.type == "fhir":
        if dest.url is None or not re.match(r"^https?://", dest.url):
            raise ValueError("type: fhir needs url, the FHIR R4 base URL (https://<workspace>-<service>.fhir."
                             "azurehealthcareapis.com, or http:// for a local peer)")
        if dest.auth == "basic" and not (dest.user and dest.password_env):
            raise ValueError("auth: basic needs user and password_env (the variable holding the password)")
        if dest.auth == "bearer" and not dest.token_env:
            raise ValueError("auth: bearer needs token_env, the environment variable that holds the token")
        if dest.storage_commitment or dest.verify_by != "none":
            raise ValueError("storage_commitment and verify_by are DICOM keys; a FHIR transaction is idempotent")


class MllpTlsSection(_Strict):
    """TLS on the MLLP listener's port (MLLP over TLS: the whole connection is TLS)."""

    cert_file: Path = Field(description="PEM certificate (chain) of this node")
    key_file: Path = Field(description="PEM private key of cert_file")
    ca_file: Path | None = Field(None, description="PEM CA bundle that client certificates must chain to")
    require_client_cert: bool = Field(True, description="Refuse clients without a certificate signed by ca_file")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _ca_for_clients(self) -> "MllpTlsSection":
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file, the CA bundle client certificates must chain to")
        return self


class MllpListenerSection(_Strict):
    """The MLLP listener: orders in (ORM^O01, OMI^O23) and ORU^R01 kept for the monitoring side."""

    host: str = Field("0.0.0.0", description="Address the listener binds")
    port: int = Field(2575, ge=0, le=65535, description="MLLP port (2575 is HL7's registered one); 0: any free port")
    tls: MllpTlsSection | None = None
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="A larger frame is refused (AR) and the connection closed")
    idle_timeout_seconds: float = Field(
        300.0, gt=0, description="A connection silent this long is closed (senders reconnect)")
    receiving_application: str = Field("DICOM_AI_NODE", description="MSH-3 of the ACKs (and MSH-5 expected, if set)")
    receiving_facility: str | None = Field(None, description="MSH-4 of the ACKs")
    keep_unmatched_orders_hours: float = Field(
        2160.0, ge=0, description="An order no study has matched is purged after this long (90 days)")
    keep_messages_hours: float = Field(
        2160.0, ge=0, description="The raw text of every message taken (orders, ORU^R01) is purged after this "
        "long; an order matched by a study goes when retention purges that study")
