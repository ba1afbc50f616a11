"""Checking a rule's ``params`` against its model's schema (the schema comes from :mod:`node.models.registry`).

A rule's ``params`` are free-form in the YAML; the model of the rule's endpoint decides what they mean. For the
models whose registry entry names a params schema they are checked when the configuration is read (unknown keys and
bad values are configuration errors naming the rule), so a typo such as ``promt:`` fails at start-up, not on the
first study at 3 a.m.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["RuleParamsError", "validate_params"]


class RuleParamsError(ValueError):
    """A rule's params are not valid for its model: ``loc`` is the key path inside ``params``."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


def validate_params(model: str, schema: type[BaseModel], params: dict[str, Any]) -> Any:
    """``params`` validated by ``schema``, the params model of ``model``.

    Raises :class:`RuleParamsError` with the key path of the first problem.
    """
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        # A typo'd key explains a "missing" one: report unknown keys first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key for a {model} rule; allowed: {', '.join(schema.model_fields)}"
        elif err["type"] == "missing":
            msg = f"required for a {model} rule"
        raise RuleParamsError(tuple(err["loc"]), msg) from None
