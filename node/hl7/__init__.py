"""Hospital IT over HL7 v2.5.1: ORU^R01 results to a RIS over MLLP, and orders (ORM^O01, OMI^O23) in.

* :mod:`node.hl7.settings`: the configuration keys of ``type: hl7v2`` destinations and of the ``mllp`` listener;
* :mod:`node.hl7.oru`: a :class:`node.reports.model.Report` as an ORU^R01 message (built with hl7apy);
* :mod:`node.hl7.mllp`: MLLP framing over TCP/TLS (python-hl7's asyncio streams);
* :mod:`node.hl7.ack`: what an ACK means for the outbox row;
* :mod:`node.hl7.sender`: the :class:`~node.flow.deliver.Sender` of ``type: hl7v2`` destinations;
* :mod:`node.hl7.inbound`, :mod:`node.hl7.orders`, :mod:`node.hl7.handlers`, :mod:`node.hl7.listener`: the MLLP
  listener (``dicom-node mllp``, started by ``serve``): validation, durable storage before the ACK, the order
  fields, and the per-message-type handler registry other concerns plug into.
"""
