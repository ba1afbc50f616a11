"""Messages sent to an MLLP listener as a RIS or EHR would, with python-hl7's own client (no node code)."""

from __future__ import annotations

import hl7
from hl7.client import MLLPClient

END = b"\x1c\x0d"


def send_mllp(port: int, *messages: bytes, host: str = "127.0.0.1") -> list[hl7.Message]:
    """Send each message on one connection and wait for its whole ACK; the ACKs, parsed."""
    acks = []
    with MLLPClient(host, port) as client:
        client.socket.settimeout(30)
        for raw in messages:
            data = client.send_message(raw)
            while not data.endswith(END):
                data += client.socket.recv(4096)
            acks.append(hl7.parse(data.strip(b"\x0b" + END).decode("utf-8")))
    return acks


def msa_code(ack: hl7.Message) -> str:
    """MSA-1, the acknowledgment code (AA, AE, AR)."""
    return str(ack.segment("MSA")[1])
