"""Evaluation of trained encoders: ``selfsup-eval`` (``python -m selfsup.evaluate``).

``jobs`` resolves what ``checkpoint=`` names into evaluation jobs (:class:`~selfsup.evaluate.jobs.EvalJob`: one
encoder and where its results go), ``features`` extracts and caches frozen features, ``probes`` holds the augmented
SGD protocol, ``report`` writes metrics.json and the reports, ``baseline`` the quickstart's table of the trained
encoder next to its random init. The label-free and probe metrics themselves are ``selfsup.metrics``.
"""

from selfsup.evaluate.cli import evaluate, main

__all__ = ["evaluate", "main"]
