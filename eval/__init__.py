"""Evaluation of trained models: benchmark scorers and condensation probes."""
