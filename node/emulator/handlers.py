"""The emulated models, by name: one :class:`~node.emulator.ModelHandler` per model of
:func:`node.models.registry.emulator_handlers`, served at ``/<name>/score`` and by ``/score``'s column dispatch."""

from __future__ import annotations

from node.emulator import ModelHandler
from node.models import registry

__all__ = ["HANDLERS", "register_handler"]

HANDLERS: dict[str, ModelHandler] = {}


def register_handler(handler: ModelHandler) -> None:
    """Make a model available at ``/<handler.name>/score`` and to ``/score``'s column dispatch."""
    HANDLERS[handler.name] = handler


for _handler in registry.emulator_handlers():
    register_handler(_handler)
