"""Evaluation: log-likelihood scoring, answer metrics, the ``lm-evaluation-harness`` model and the
evaluation grid. Built on :mod:`smollm3_jax.generation`."""
