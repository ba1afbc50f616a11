"""ATNA: the audit trail as DICOM audit messages (PS3.15 A.5) sent to the hospital's audit record repository.

The node records every event once, as a JSON line (:mod:`node.ops.audit`). When ``audit.syslog`` is set, a
process of its own (:mod:`node.audit.forwarder`, started by ``serve``) reads that file as it grows, turns the
events into DICOM audit messages (:mod:`node.audit.events`), keeps them in a durable, bounded spool
(:mod:`node.audit.spool`) and sends them in order as RFC 5424 syslog messages over RFC 5425 TLS (or TCP, UDP:
:mod:`node.audit.transport`). Nothing on the receive path waits for any of it.
"""
