"""The node's own results read once, neutrally, for the hospital systems beyond the PACS (RIS, EHR).

A :class:`~node.reports.model.Report` is built once per job result (per rule and study version) from the SR, SEG
and classification SR the node wrote, so the ORU^R01 (:mod:`node.hl7.oru`) and the FHIR Bundle
(:mod:`node.fhir.bundle`) say what the PACS holds:

* :mod:`node.reports.model`: the report (patient, study, algorithm, findings, labels, segments) as plain data;
* :mod:`node.reports.read`: reading the written DICOM results into it;
* :mod:`node.reports.job`: the report of a finished job (a result of kind ``report`` in the outbox, with stable
  identifiers), and its retraction (:func:`node.flow.retract.retract`).
"""
