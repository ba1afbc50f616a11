"""What the MLLP listener does with a message type: a small registry other concerns plug into.

The listener takes ORM^O01 and OMI^O23 (orders: :mod:`node.hl7.orders`) and ORU^R01, and keeps every message it
acknowledges in ``hl7_messages``. A concern that wants a message type (the monitoring side: radiologists' ORU^R01)
registers a handler in a module named ``node/<its package>/hl7_handlers.py``; the listener imports every such
module when it starts (:func:`discover`), so registering needs no edit here::

    # node/monitoring/hl7_handlers.py
    from node.hl7.handlers import InboundMessage, Refusal, handles

    @handles("ORU^R01")
    def keep_radiologist_report(msg: InboundMessage, conn) -> None:
        ...  # write to your own tables with ``conn`` (SQLAlchemy Core), nothing else that blocks

A handler runs inside the transaction that stores the message, after the ``hl7_messages`` row is inserted
(``msg.id``), before the ACK: what it writes commits with the message or not at all. It must be quick (the sender
waits for the ACK) and must not send anything anywhere. To refuse the message raise :class:`Refusal` (``AE`` for
content the sender must fix, ``AR`` for a message that cannot be taken at all): nothing of it is kept and the ACK
carries the text. Any other exception is answered AE ("could not be processed") and nothing is kept. A message
resent with the same sender, MSH-10 and text is acknowledged AA again without running the handlers twice.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

#: message types the listener takes without any handler (the built-in order intake and the ORU store)
BUILT_IN = ("ORM^O01", "OMI^O23", "ORU^R01")


@dataclass(frozen=True)
class InboundMessage:
    """One message as the listener took it (``text`` and ``parsed`` are PHI: never log them at INFO)."""

    id: int  # its hl7_messages row
    message_type: str  # MSH-9.1^MSH-9.2, e.g. "ORU^R01"
    control_id: str  # MSH-10
    version: str  # MSH-12
    sending_application: str  # MSH-3
    sending_facility: str  # MSH-4
    accession: str  # OBR-18 (or IPC-1), "" when absent
    text: str  # the message, decoded by its MSH-18, segments separated by \r
    parsed: Any  # the same, as a python-hl7 hl7.Message
    received_at: float


class Refusal(Exception):
    """Raised by a handler to refuse a message: ``code`` AE or AR, ``text`` goes back in MSA-3 / ERR-8."""

    def __init__(self, code: str, text: str) -> None:
        if code not in ("AE", "AR"):
            raise ValueError("a refusal is AE or AR")
        super().__init__(text)
        self.code = code
        self.text = text


Handler = Callable[[InboundMessage, Any], None]  # (message, SQLAlchemy connection inside the transaction)
_HANDLERS: dict[str, list[Handler]] = {}
_DISCOVERED = False
_CONFIG: Any = None


def configure(cfg: Any) -> None:
    """The listener's configuration (a :class:`node.config.NodeConfig`), for handlers that need their own keys."""
    global _CONFIG
    _CONFIG = cfg


def node_config() -> Any:
    """The configuration the listener runs with (None outside a listener: a handler then uses its defaults)."""
    return _CONFIG


def register(message_type: str, handler: Handler) -> None:
    """Call ``handler`` for every message of ``message_type`` ("ORU^R01"); registering it twice is harmless."""
    if "^" not in message_type:
        raise ValueError("a message type is MSH-9.1^MSH-9.2, e.g. ORU^R01")
    found = _HANDLERS.setdefault(message_type, [])
    if handler not in found:
        found.append(handler)


def handles(message_type: str) -> Callable[[Handler], Handler]:
    """Decorator form of :func:`register`."""
    def wrap(handler: Handler) -> Handler:
        register(message_type, handler)
        return handler
    return wrap


def handlers_for(message_type: str) -> list[Handler]:
    """The handlers of a message type, in registration order."""
    return list(_HANDLERS.get(message_type, []))


def accepted_types() -> set[str]:
    """Every message type the listener takes: the built-in ones and those with a handler."""
    return set(BUILT_IN) | set(_HANDLERS)


def discover() -> list[str]:
    """Import every ``node.<package>.hl7_handlers`` module once (their decorators register); returns their names."""
    global _DISCOVERED
    import node

    found = []
    for info in pkgutil.iter_modules(node.__path__):
        if not info.ispkg:
            continue
        name = f"node.{info.name}.hl7_handlers"
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        importlib.import_module(name)
        found.append(name)
    if found and not _DISCOVERED:
        log.info("HL7 handlers loaded from %s", ", ".join(found))
    _DISCOVERED = True
    return found
