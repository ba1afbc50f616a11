"""Calling model endpoints over HTTPS: transport and credentials only, no model knowledge.

* :mod:`node.invoke.client`: :class:`~node.invoke.client.EndpointClient` (auth, retries, process-wide concurrency limit).
* :mod:`node.invoke.auth`: endpoint keys, Entra tokens and their cache.
* :mod:`node.invoke.azureml`: scoring URI and keys of endpoints named by workspace (azure-ai-ml, looked up once).
* :mod:`node.invoke.deployments`: what is deployed behind a workspace endpoint (model asset and version, request
  timeout, concurrency, instances, traffic, auth mode).
* :mod:`node.invoke.errors`: :class:`~node.invoke.errors.EndpointError` and its cause (a 424's inner status: the
  input's fault or the model's; 408; 429...).

What goes into a request and what a reply means is each model's contract, in ``node/models/<model>/contract.py``.
"""
