"""`evaluate.Metric` scripts shipped with gradiend_peft; load them with
``evaluate.load(gradiend_peft.evaluation.metric_path(name))`` (no Hub access needed)."""
