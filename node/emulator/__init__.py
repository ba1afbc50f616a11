"""A local emulator of the Azure ML online endpoints that serve the Foundry healthcare models.

:class:`~node.emulator.server.EmulatorServer` is a real HTTP server speaking the endpoints' protocol (bearer key,
``/score``, ``x-request-id``, 401/408/424/429/5xx with ``Retry-After``) with scriptable faults and the reply variants
the real deployments use (:mod:`node.emulator.variants`). Each model is a
*handler* named by the model's line in :mod:`node.models.registry` (``node/models/<model>/emulator.py``); a handler
implements :class:`ModelHandler` and raises :class:`RequestError` for requests the model would refuse.

Emulated answers are derived deterministically from the input pixels and say ``EMULATED`` in every sentence; they
are for testing the plumbing and must never be read as clinical output.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

EMULATOR_NAME = "dicom-ai-node-emulator"
EMULATOR_VERSION = "0.1.0"
EMULATOR_HEADER_VALUE = f"{EMULATOR_NAME}/{EMULATOR_VERSION}"


class RequestError(Exception):
    """A request the emulated model refuses: the container's ``status`` and ``{"message": message}``, which the server
    answers as Azure ML does, with 424 and ``ms-azureml-model-error-statuscode: <status>`` (404 stays the gateway's:
    no such model route)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@runtime_checkable
class ModelHandler(Protocol):
    """One emulated model.

    ``name`` is its path segment (``/<name>/score``) and ``model_version`` goes into ``x-ms-model-version`` (in the
    ``versioned`` variant only).
    ``accepts(columns)`` says whether a ``/score`` request with these ``input_data.columns`` is meant for it.
    ``score(input_data, options)`` returns the JSON reply; ``options`` holds the server's settings
    (``response_shape``: ``"rows"`` or ``"object"``).
    """

    name: str
    model_version: str

    def accepts(self, columns: list[str]) -> bool: ...

    def score(self, input_data: dict, options: dict[str, Any]) -> Any: ...


__all__ = ["EMULATOR_HEADER_VALUE", "EMULATOR_VERSION", "ModelHandler", "RequestError"]
