"""Hospital IT over FHIR R4: one transaction Bundle per job result to an EHR (``type: fhir`` destinations).

* :mod:`node.fhir.settings`: the keys of ``type: fhir`` destinations;
* :mod:`node.fhir.bundle`: a :class:`node.reports.model.Report` as a transaction Bundle (conditional creates and
  updates by identifier, so a resend is idempotent);
* :mod:`node.fhir.sender`: the :class:`~node.flow.deliver.Sender` that POSTs it and reads the transaction response.
"""
