"""Shared checks for the objective tests: value and gradients of a module against an independent reference."""

from __future__ import annotations

import torch


def randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def assert_matches(fn, ref, *inputs, rtol=1e-10, atol=1e-12, grad_inputs=None):
    """``fn(*inputs)`` and ``ref(*inputs)`` agree in value and in their gradients w.r.t. ``inputs[i]`` for
    i in ``grad_inputs`` (all by default)."""
    grad_inputs = range(len(inputs)) if grad_inputs is None else grad_inputs
    xs = [x.detach().clone().requires_grad_(i in grad_inputs) for i, x in enumerate(inputs)]
    ys = [x.detach().clone().requires_grad_(i in grad_inputs) for i, x in enumerate(inputs)]
    out, expected = fn(*xs), ref(*ys)
    assert out.dim() == 0
    torch.testing.assert_close(out, expected.to(out.dtype), rtol=rtol, atol=atol)
    grads = torch.autograd.grad(out, [xs[i] for i in grad_inputs])
    grads_ref = torch.autograd.grad(expected, [ys[i] for i in grad_inputs])
    for i, g, g_ref in zip(grad_inputs, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=rtol, atol=atol, msg=lambda m, i=i: f"gradient of input {i}: {m}")
    return out


def batch_of(z, feats=None, params=None, num_global=None, cls=None):
    """A one-branch :class:`~selfsup.objectives.ViewBatch` (no predictor, no target) of the views ``z``."""
    from selfsup.objectives import ViewBatch

    n = len(z)
    g = n if num_global is None else num_global
    feats = list(feats) if feats is not None else [None] * n
    params = list(params) if params is not None else [None] * n
    return (cls or ViewBatch)(list(z), list(z), list(z[:g]), feats, params, g)
