"""CXRReportGen's indication: from the RIS's order when one matches the study, else from the DICOM header.

An order taken by the MLLP listener (node/hl7) matches when its accession number is the study's AccessionNumber
and, when both say one, its patient ID is the study's PatientID (an accession reused for another patient is not
used: the header's text is). A cancelled order is not used. The order's indication is its reason for study, then
its relevant clinical information (:func:`node.hl7.orders.indication_of`). The job and the rule tester
(``dicom-node rules test``) both decide here, so the tester shows the source the job will use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import pydicom

from node.hl7.orders import indication_of

Source = Literal["order", "dicom header", "none"]
OrderLookup = Callable[[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Indication:
    """The text sent as ``indication``, where it came from, and why an order was not used (when one was found)."""

    text: str | None
    source: Source
    accession: str = ""  # the matched order's accession number ("" unless source is "order")
    note: str = ""


def choose_indication(header_text: str | None, header: pydicom.Dataset, orders: OrderLookup | None) -> Indication:
    """The indication of a study whose frontal image has ``header`` (see the module docstring)."""
    fallback = Indication(header_text, "dicom header" if header_text else "none")
    accession = str(header.get("AccessionNumber", "") or "").strip()
    if orders is None or not accession:
        return fallback
    order = orders(accession)
    if order is None:
        return fallback
    patient = str(header.get("PatientID", "") or "").strip()
    if patient and order.get("patient_id") and order["patient_id"] != patient:
        return Indication(fallback.text, fallback.source, note="an order has this accession number but another "
                                                               "patient ID: not used")
    text = indication_of(order)
    if text is None:
        why = "cancelled" if order.get("order_control") in ("CA", "DC", "OC", "OD", "CR") else "gives no reason"
        return Indication(fallback.text, fallback.source, note=f"the matching order {why}: not used")
    return Indication(text, "order", accession=accession)
