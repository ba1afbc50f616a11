"""The ``audit`` section of the configuration: the JSON-lines trail and, optionally, the ATNA audit repository."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from node.config_sections import TlsVersion, _Strict


class SyslogSection(_Strict):
    """The audit record repository (IHE ATNA, ITI-20): RFC 5424 syslog over RFC 5425 TLS, or TCP / UDP."""

    host: str = Field(description="The audit record repository's host name or address")
    port: int = Field(6514, ge=1, le=65535, description="6514 is syslog over TLS's registered port")
    transport: Literal["tls", "tcp", "udp"] = Field(
        "tls", description="tls: RFC 5425 (what IHE ATNA requires); tcp: RFC 6587 octet counting; udp: RFC 5426")
    ca_file: Path | None = Field(None, description="PEM CA bundle the repository's certificate must chain to")
    cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS), with key_file")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    server_name: str | None = Field(None, description="Name expected in the repository's certificate; default host")
    check_hostname: bool = Field(True, description="The certificate must name server_name (or host)")
    min_version: TlsVersion = "TLSv1.2"
    app_name: str = Field("dicom-node", min_length=1, max_length=48, pattern=r"^[\x21-\x7e]+$",
                          description="RFC 5424 APP-NAME of every message")
    audit_source_id: str | None = Field(None, description="AuditSourceID of every message; default node.instance_id")
    enterprise_site_id: str | None = Field(None, description="AuditEnterpriseSiteID (the hospital or site), if any")
    max_message_bytes: int = Field(
        32768, ge=4096, le=65000,
        description="Largest syslog message sent (the repository's own limit: rsyslog's MaxMessageSize); a "
                    "transfer of many instances lists its instance UIDs only while the message stays below it")
    spool_max_mb: int = Field(64, ge=1, description="Messages waiting for the repository, at most this much on disk")
    alert_backlog: int = Field(1000, ge=1, description="An ALERT is logged while more messages than this wait")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="Connect and TLS handshake limit")
    retry_max_seconds: float = Field(60.0, gt=0, description="Longest wait between two connection attempts")

    @model_validator(mode="after")
    def _transport_files(self) -> "SyslogSection":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        if self.transport == "tls" and self.ca_file is None:
            raise ValueError("transport tls needs ca_file, the CA bundle the repository's certificate chains to")
        if self.transport != "tls" and (self.ca_file or self.cert_file):
            raise ValueError(f"ca_file, cert_file and key_file are for transport tls, not {self.transport}")
        return self


class AuditSection(_Strict):
    """The audit trail: events as JSON lines (UIDs, AE titles, addresses; never names), and ATNA messages."""

    enabled: bool = True
    path: Path | None = Field(None, description="Default <storage_dir>/audit.jsonl")
    syslog: SyslogSection | None = Field(
        None, description="The audit record repository the events also go to as DICOM audit messages (ATNA)")

    @model_validator(mode="after")
    def _syslog_needs_the_trail(self) -> "AuditSection":
        if self.syslog is not None and not self.enabled:
            raise ValueError("audit.syslog forwards the audit trail: it needs enabled: true")
        return self
