"""Experiment tracking (MLflow), kept at the edges: model code never imports it."""
