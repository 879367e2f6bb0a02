"""Dimensionality reduction of existing feature vectors: TLDR (Kalantidis et al. 2022, arXiv:2110.09455).

``selfsup-reduce features=<file | selfsup-eval dir> out=<dir>`` (:mod:`selfsup.reduce.cli`); the pieces:
:func:`knn_graph` (exact, chunked), :class:`TLDR`, :func:`fit`, :func:`transform`, :func:`load_features`,
:func:`load_encoder`, and label-based retrieval metrics in :mod:`selfsup.neighbours` (shared with ``selfsup-eval``).
"""

from selfsup.reduce.io import load_encoder, load_features
from selfsup.reduce.tldr import TLDR, fit, knn_graph, sample_positives, transform

__all__ = ["TLDR", "fit", "knn_graph", "load_encoder", "load_features", "sample_positives", "transform"]
