"""IHE AI Workflow for Imaging (AIW-I): the node as a Task Performer on a UPS-RS worklist.

``sources: [{type: ups-rs, ...}]`` in the configuration;

:mod:`node.ups.settings` (the source's keys), :mod:`node.ups.client` (the UPS-RS transactions of PS3.18 §11 the
performer uses), :mod:`node.ups.workitem` (reading and writing workitem attributes), :mod:`node.ups.performer`
(poll, claim, fetch the inputs, run the mapped rule, report the outputs, complete or cancel).
"""
