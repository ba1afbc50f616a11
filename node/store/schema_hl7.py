"""Tables of Hospital IT (node/hl7): the HL7 v2 messages the MLLP listener took, and the orders they carry.

Defined on the one :data:`node.store.schema.metadata` by :func:`hl7_tables`, which ``node.store.schema`` calls
(this module imports nothing of the store, so there is no import cycle); created by the migration
``0007_hospital_it``. A message row is
written, with its order row when it is one, in the transaction that precedes its ACK (AA): nothing acknowledged is
lost, nothing refused is half kept.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text


def hl7_tables(metadata: MetaData) -> tuple[Table, Table]:
    """(hl7_messages, hl7_orders) on ``metadata``."""
    return _messages(metadata), _orders(metadata)


#: Every message accepted (ORM^O01, OMI^O23, ORU^R01), as received (decoded by its MSH-18): the raw text is PHI.
def _messages(metadata: MetaData) -> Table:
    table = Table(
        "hl7_messages",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("received_at", Float, nullable=False),
        Column("message_type", String(16), nullable=False),  # MSH-9.1^MSH-9.2, e.g. ORM^O01
        Column("control_id", String(199), nullable=False),  # MSH-10
        Column("sending_application", String(227), nullable=False, default=""),
        Column("sending_facility", String(227), nullable=False, default=""),
        Column("accession", String(64)),  # the order's accession number, when the message names one
        Column("peer", String(64), nullable=False, default=""),  # remote address
        Column("text", Text, nullable=False),
    )
    Index("ix_hl7_messages_control", table.c.sending_application, table.c.control_id)
    Index("ix_hl7_messages_received", table.c.received_at)
    return table


#: The newest order per accession number (a later ORM/OMI for the same accession replaces the fields it gives).
def _orders(metadata: MetaData) -> Table:
    table = Table(
        "hl7_orders",
        metadata,
        Column("accession", String(64), primary_key=True),
        Column("patient_id", String(64), nullable=False, default=""),
        Column("patient_issuer", String(64), nullable=False, default=""),
        Column("placer_number", String(64), nullable=False, default=""),  # ORC-2 / OBR-2
        Column("filler_number", String(64), nullable=False, default=""),  # ORC-3 / OBR-3
        Column("order_control", String(2), nullable=False),  # ORC-1: NW, XO, CA, DC, SC...
        Column("order_status", String(2), nullable=False, default=""),  # ORC-5
        Column("reason", Text, nullable=False, default=""),  # OBR-31 reason for study
        Column("clinical_info", Text, nullable=False, default=""),  # OBR-13 relevant clinical information
        Column("procedure", Text, nullable=False, default=""),  # OBR-4 universal service identifier text
        Column("study_uid", String(64), nullable=False, default=""),  # IPC-3 / ZDS-1 when given
        Column("message_id", Integer, nullable=False),  # the hl7_messages row that last set it
        Column("received_at", Float, nullable=False),  # first seen
        Column("updated_at", Float, nullable=False),
        Column("matched_study_uid", String(64)),  # the study that used it (retention purges it with that study)
        Column("matched_at", Float),
    )
    Index("ix_hl7_orders_updated", table.c.updated_at)
    return table
