"""The records the receive path hands to the store (imported by the parts that write them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance as the SCP commits it (a row of ``instances``)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae: str
    is_prior: bool = False
