"""Calling model endpoints over HTTPS: transport and credentials only, no model knowledge.

* :mod:`node.invoke.client`: :class:`~node.invoke.client.EndpointClient` (auth, retries, process-wide concurrency limit).
* :mod:`node.invoke.auth`: endpoint keys, Entra tokens and their cache.
* :mod:`node.invoke.azureml`: scoring URI and keys of endpoints named by workspace (azure-ai-ml, looked up once).

What goes into a request and what a reply means is each model's contract, in ``node/models/<model>/contract.py``.
"""
