"""The models the node knows: one line per model, naming its params schema, contract, pipeline and emulator.

Adding a model means one package under ``node/models/`` (``params.py``, ``contract.py``, ``pipeline.py``,
``emulator.py``) and one :class:`ModelSpec` line in :data:`MODELS`. Everything else (the configuration's
``endpoints.<name>.model``, the rule params check, the worker's choice of pipeline, the emulator's routes) reads
this table.

The parts are named by import path and loaded on first use: reading the configuration or running the Storage SCP
never imports the conversion, writing and model code (numpy, highdicom, nibabel...).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

__all__ = ["MODELS", "ModelSpec", "emulator_handlers", "model_names", "params_for", "pipeline_for", "spec"]


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, name) if name else obj


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name in ``endpoints.<name>.model`` and ``module:attribute`` references to its parts."""

    name: str
    #: the request/response contract module (build requests, parse replies)
    contract: str
    #: ``run(ctx: JobContext) -> JobOutput``
    pipeline: str
    #: the emulator's handler object (a :class:`node.emulator.ModelHandler`)
    emulator: str
    #: the pydantic model of a rule's ``params``; None: no schema (params are read by the pipeline as given)
    params: str | None = None

    def params_schema(self) -> type["BaseModel"] | None:
        """The params model, or None when the model has no schema."""
        return _load(self.params) if self.params else None

    def load_contract(self) -> Any:
        return _load(self.contract)

    def load_pipeline(self) -> Any:
        return _load(self.pipeline)

    def load_emulator(self) -> Any:
        return _load(self.emulator)


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("cxrreportgen", contract="node.models.cxrreportgen.contract",
              pipeline="node.models.cxrreportgen.pipeline:run", emulator="node.models.cxrreportgen.emulator:HANDLER",
              params="node.models.cxrreportgen.params:CXRParams"),
    ModelSpec("medimageinsight", contract="node.models.medimageinsight.contract",
              pipeline="node.models.medimageinsight.pipeline:run",
              emulator="node.models.medimageinsight.emulator:HANDLER",
              params="node.models.medimageinsight.params:InsightParams"),
    ModelSpec("medimageparse", contract="node.models.medimageparse.contract2d",
              pipeline="node.models.medimageparse.pipeline2d:run",
              emulator="node.models.medimageparse.emulator2d:HANDLER",
              params="node.models.medimageparse.params:Parse2DParams"),
    ModelSpec("medimageparse3d", contract="node.models.medimageparse.contract3d",
              pipeline="node.models.medimageparse.pipeline3d:run",
              emulator="node.models.medimageparse.emulator3d:HANDLER",
              params="node.models.medimageparse.params:Parse3DParams"),
)}


def model_names() -> list[str]:
    """Every model name an endpoint may give, in registry order."""
    return list(MODELS)


def spec(model: str) -> ModelSpec:
    """The registry entry of ``model``; KeyError names the models allowed."""
    try:
        return MODELS[model]
    except KeyError:
        raise KeyError(f"unknown model {model!r}; allowed: {', '.join(MODELS)}") from None


def params_for(model: str, params: dict[str, Any]) -> Any:
    """The validated params of a rule whose endpoint runs ``model`` (the dict itself for models without a schema).

    Raises :class:`node.models.params.RuleParamsError` with the key path of the first problem.
    """
    from node.models.params import validate_params

    schema = spec(model).params_schema()
    return params if schema is None else validate_params(model, schema, params)


def pipeline_for(model: str) -> Any:
    """The pipeline of an endpoint's model (imported on first use)."""
    return spec(model).load_pipeline()


def emulator_handlers() -> list[Any]:
    """The emulator handler of every model, in registry order."""
    return [m.load_emulator() for m in MODELS.values()]
