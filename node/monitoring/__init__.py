"""Is the model still right here? Agreement with the radiologists and drift, watched in production (issue 27).

The pipeline, one module per step:

- report doors: :mod:`node.monitoring.hl7_handlers` (ORU^R01 on the MLLP listener), :mod:`node.monitoring.fhir_door`
  (a FHIR DiagnosticReport POSTed to the HTTP side), :mod:`node.monitoring.sr_door` (an SR the node did not write,
  stored to the SCP, found when its study is decided); all through :mod:`node.monitoring.intake`;
- extraction: :mod:`node.monitoring.extract` (spaCy + negspacy, :mod:`node.monitoring.vocabulary`,
  :mod:`node.monitoring.termsets`);
- the AI side: :mod:`node.monitoring.observe` (what each finished job said and what went in, endpoint calls);
- statistics: :mod:`node.monitoring.agreement` (counts, agreement, sensitivity, PPV, Wilson intervals) and
  :mod:`node.monitoring.drift` (chi-square, Kolmogorov-Smirnov, MMD with permutations, Benjamini-Hochberg);
- the operator's baseline: :mod:`node.monitoring.baseline`; the periodic evaluation and its alerts:
  :mod:`node.monitoring.evaluate`;
- what people see: :mod:`node.monitoring.page` (the Monitoring page), :mod:`node.monitoring.report` (the
  committee's HTML/CSV), :mod:`node.monitoring.gauges` (Prometheus).
"""
