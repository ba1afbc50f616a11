"""C-MOVE or C-GET of a workitem's input instances from the ``retrieve_from`` PACS (``inputs: c-move | c-get``).

C-GET brings the instances on the same association (written into the spool and the database by
:class:`node.dicom.qr.SpoolingStoreHandler`); C-MOVE asks the PACS to send them to this node's own AE title, so
they arrive through the Storage SCP like any instance (declare the node as a C-MOVE destination on the PACS).
"""

from __future__ import annotations

from typing import Sequence

from pydicom.dataset import Dataset

from node.config import NodeConfig
from node.dicom.qr import XRAY_IMAGE_CLASSES, Deadline, Peer, QRSession, QueryError, QueryTimeout, SpoolingStoreHandler
from node.store.spool import Spool
from node.store.state import Store
from node.ups.settings import UpsSourceSection
from node.ups.workitem import InputRef

OK = (0x0000, 0xB000)  # success, or sub-operations with warnings


def retrieve_inputs(cfg: NodeConfig, source: UpsSourceSection, store: Store, spool: Spool,
                    inputs: Sequence[InputRef]) -> None:
    """Retrieve each input instance (IMAGE level); :class:`QueryError` when the PACS refuses or times out."""
    name = str(source.retrieve_from)
    dest = cfg.destinations[name]
    if dest.type != "dimse" or dest.host is None or dest.port is None or dest.ae_title is None:
        raise QueryError(f"retrieve_from {name!r} is not a DICOM (dimse) destination")
    method = "c-get" if source.inputs == "c-get" else "c-move"
    classes = sorted({i.sop_class_uid for i in inputs if i.sop_class_uid}) or list(XRAY_IMAGE_CLASSES)
    handler = (SpoolingStoreHandler(spool, store, source.key[:16], cfg.node.study_complete_after_seconds,
                                    is_prior=False) if method == "c-get" else None)
    try:
        with QRSession(Peer(name, dest.host, dest.port, dest.ae_title), Deadline(source.timeout_seconds),
                       ae_title=cfg.node.ae_title, method=method, move_destination=cfg.node.ae_title,
                       on_store=handler, image_classes=classes, sr_classes=()) as session:
            for ref in inputs:
                ident = Dataset()
                ident.QueryRetrieveLevel = "IMAGE"
                ident.StudyInstanceUID = ref.study_uid
                ident.SeriesInstanceUID = ref.series_uid
                ident.SOPInstanceUID = ref.sop_instance_uid
                status = session.retrieve(ident)
                if status not in OK:
                    raise QueryError(f"{method.upper()} of input {ref.sop_instance_uid} from {name} answered "
                                     f"0x{status:04X}")
    except QueryTimeout:
        raise QueryError(f"{method.upper()} from {name}: no answer within {source.timeout_seconds:g} s") from None
