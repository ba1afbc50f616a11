"""A RIS for the tests: hl7apy's ``MLLPServer`` (an MLLP implementation the node does not use), answering ORU^R01.

Every message received is kept (raw bytes, decoded by its MSH-18) and parsed on arrival under hl7apy's STRICT
validation (with message structure groups) and by python-hl7; a parse error is kept with the message, so a test
asserts "every ORU parsed" from the receiver's own record. Like hl7apy's server, the connection closes after each
answer. Answers are scripted per message: ``AA`` (default), ``AE``, ``AR``, ``wrong-id`` (AA for another control
ID), ``garbled`` (bytes that are no MLLP frame), ``silent`` (close without answering), ``slow:N`` (AA after N
seconds).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import hl7
from hl7apy import parser
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPRequestHandler, MLLPServer

from .ports import HOST

CODECS = {"8859/1": "latin_1", "UNICODE UTF-8": "utf-8", "ASCII": "ascii", "": "ascii"}


@dataclass
class Received:
    """One message as the RIS got it."""

    raw: bytes
    text: str
    control_id: str
    answer: str
    strict_error: str | None = None  # hl7apy STRICT parse/validate error, None when it passed
    python_hl7_error: str | None = None
    parsed: Any = None  # the python-hl7 message
    at: float = field(default_factory=time.time)


def _ack(control_id: str, code: str, text: str = "") -> str:
    ack = Message("ACK", version="2.5.1")
    ack.msh.msh_3 = "TEST_RIS"
    ack.msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"R{int(time.time() * 1000) % 10**12}"
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = "2.5.1"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if text:
        ack.msa.msa_3 = text
        err = ack.add_segment("ERR")
        err.err_3 = "207^Application internal error^HL70357"
        err.err_4 = "E"
        err.err_8 = text
    return ack.to_er7()


class _Handler(AbstractHandler):
    def __init__(self, message: str, ris: "Ris") -> None:
        super().__init__(message)
        self.ris = ris

    def reply(self) -> str:
        return self.ris._answer(self.incoming_message)


class _ErrorHandler(AbstractErrorHandler):
    """A message the RIS does not take (another MSH-9, not HL7): recorded as such, answered AR."""

    def __init__(self, exc: Exception, message: str, ris: "Ris") -> None:
        super().__init__(exc, message)
        self.ris = ris

    def reply(self) -> str:
        if isinstance(self.exc, ConnectionAbortedError):  # "silent": hl7apy closes without answering
            raise self.exc
        cid = _control_id(self.incoming_message)
        with self.ris._lock:
            self.ris.received.append(Received(raw=self.incoming_message.encode("latin-1"),
                                              text=self.incoming_message, control_id=cid, answer="AR",
                                              strict_error=f"not taken: {self.exc}"))
        return "\x0b" + _ack(cid, "AR", f"not taken: {self.exc}") + "\x1c\x0d"


class _RequestHandler(MLLPRequestHandler):
    encoding = "latin-1"  # lossless for the framing; the text is decoded again by its MSH-18


class Ris:
    """``with Ris() as ris:`` an MLLP listener on a free loopback port; ``ris.received`` is what came in."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.received: list[Received] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        handlers = {"ORU^R01": (_Handler, self), "ORU^R01^ORU_R01": (_Handler, self), "ERR": (_ErrorHandler, self)}
        self.server = MLLPServer(HOST, 0, handlers, timeout=timeout, request_handler_class=_RequestHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="ris")

    def __enter__(self) -> "Ris":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *answers: str) -> None:
        """The answers to the next messages, in order (then AA again)."""
        with self._lock:
            self._script.extend(answers)

    def _answer(self, text_latin1: str) -> str:
        raw = text_latin1.encode("latin-1")
        text = raw.decode(CODECS.get(_msh18(text_latin1), "utf-8"))
        rec = Received(raw=raw, text=text, control_id=_control_id(text), answer="")
        try:
            msg = parser.parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            msg.validate()
        except Exception as exc:  # noqa: BLE001 - any hl7apy failure is the finding
            rec.strict_error = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            rec.parsed = hl7.parse(text)
        except Exception as exc:  # noqa: BLE001
            rec.python_hl7_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            mode = self._script.popleft() if self._script else "AA"
            rec.answer = mode
            self.received.append(rec)
        if mode.startswith("slow:"):
            time.sleep(float(mode.split(":", 1)[1]))
            mode = "AA"
        if mode == "silent":
            raise ConnectionAbortedError("scripted: no answer")  # hl7apy closes the connection
        if mode == "garbled":
            return "this is not an MLLP frame\r"
        cid = "SOMETHING-ELSE" if mode == "wrong-id" else rec.control_id
        code = "AA" if mode == "wrong-id" else mode
        body = _ack(cid, code, "scripted refusal" if code != "AA" else "")
        return "\x0b" + body + "\x1c\x0d"

    def wait_for(self, n: int, timeout: float = 60.0) -> list[Received]:
        """Wait until at least ``n`` messages came in; returns them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"the RIS received {len(self.received)} message(s), expected {n}")


def _msh18(text: str) -> str:
    first = text.split("\r", 1)[0]
    fields = first.split("|")
    return fields[17] if len(fields) > 17 else ""


def _control_id(text: str) -> str:
    fields = text.split("\r", 1)[0].split("|")
    return fields[9] if len(fields) > 9 else ""


def obx_rows(rec: Received) -> list[dict[str, Any]]:
    """The OBX rows of a received ORU, read by python-hl7: type, identifier (code), sub-ID, value(s), status."""
    msg = rec.parsed
    rows = []
    for seg in msg.segments("OBX"):
        values = [msg.unescape(str(rep)) for rep in seg[5]] if len(seg) > 5 else []
        rows.append({"type": str(seg[2]), "code": str(seg[3][0][0]) if len(seg) > 3 else "",
                     "sub_id": str(seg[4]), "values": values, "status": str(seg[11])})
    return rows


def field_of(rec: Received, segment: str, index: int) -> str:
    """One field of the first ``segment`` (python-hl7, unescaped), '' when absent."""
    try:
        seg = rec.parsed.segment(segment)
    except KeyError:
        return ""
    return rec.parsed.unescape(str(seg[index])) if len(seg) > index else ""
