"""The HTTP side's Jinja2 templates (``node/http/templates``), autoescaped, and how a page is rendered."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

from node.http import queries

TEMPLATES = Environment(loader=PackageLoader("node.http", "templates"), autoescape=select_autoescape(["html"]))
TEMPLATES.filters["clock"] = queries.clock


def render(name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """``templates/<name>`` with ``values`` as an HTML response."""
    return HTMLResponse(TEMPLATES.get_template(name).render(**values), status_code=status_code)
