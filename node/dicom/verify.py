"""Ask a PACS which of our result instances it holds: an IMAGE-level C-FIND on each SOP Instance UID.

Used before a send whose answer was never seen is repeated (``verify_by: c-find``): a result the PACS already
holds is not sent again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from node.config import DestinationSection
from node.dicom.tls import client_tls_args

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class InstanceRef:
    """Where one result instance sits in the PACS hierarchy (the keys of a hierarchical IMAGE query)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str


class VerifyError(Exception):
    """The PACS could not be asked (network, refusal, failure status): nothing may be concluded."""


#: Told of each C-FIND sent: (the identifier, matches or None when it failed, the failure or None).
OnQuery = Callable[[Dataset, "int | None", "BaseException | None"], None]


def held_instances(dest: DestinationSection, calling_ae: str, refs: Sequence[InstanceRef],
                   on_query: OnQuery | None = None) -> set[str]:
    """The SOP Instance UIDs among ``refs`` that the PACS reports it holds; raises :class:`VerifyError`.

    ``on_query`` is told of every C-FIND sent and what came of it (the audit trail's ``verify-query``)."""
    if not refs:
        return set()
    ae = AE(ae_title=calling_ae)
    for timeout in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, timeout, dest.timeout_seconds)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=client_tls_args(dest.tls, dest.host))
    except (OSError, RuntimeError) as exc:
        raise VerifyError(f"cannot associate for C-FIND: {exc}") from exc
    if not assoc.is_established:
        raise VerifyError("the destination refused or dropped the C-FIND association")
    held: set[str] = set()
    told = on_query or (lambda query, matches, error: None)
    query = Dataset()
    try:
        for ref in refs:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = ref.study_uid
            query.SeriesInstanceUID = ref.series_uid
            query.SOPInstanceUID = ref.sop_instance_uid
            for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    raise VerifyError("no C-FIND response (timeout or abort)")
                if code in PENDING and ident is not None and str(ident.get("SOPInstanceUID", "")) == \
                        ref.sop_instance_uid:
                    held.add(ref.sop_instance_uid)
                elif code not in PENDING and code != 0x0000:
                    raise VerifyError(f"C-FIND failed (0x{code:04X})")
            told(query, int(ref.sop_instance_uid in held), None)
    except VerifyError as exc:
        told(query, None, exc)
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        told(query, None, exc)
        raise VerifyError(f"C-FIND failed: {exc}") from exc
    finally:
        if assoc.is_established:
            assoc.release()
    return held
