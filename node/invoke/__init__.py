"""Calling the model endpoints: the HTTP client, credentials, workspace look-ups and per-model contracts.

* :mod:`node.invoke.client`: :class:`EndpointClient` (auth, retries, process-wide concurrency limit).
* :mod:`node.invoke.auth`: endpoint keys, Entra tokens and their cache.
* :mod:`node.invoke.azureml`: scoring URI and keys of endpoints named by workspace (azure-ai-ml, looked up once).
* :mod:`node.invoke.cxrreportgen`: CXRReportGen request building, reply parsing and box geometry.
"""

from node.invoke.client import EndpointClient, EndpointError, EndpointReply
from node.invoke.cxrreportgen import RawFinding, build_request, denormalize_box, parse_response

__all__ = ["EndpointClient", "EndpointError", "EndpointReply", "RawFinding", "build_request", "denormalize_box",
           "parse_response"]
