"""Gradient caching: the loss and gradient of a whole batch, with the activation memory of one chunk of it.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (arXiv:2101.06983, §3):

1. embed every chunk of the batch without an autograd graph (what the loss reads: projections, predictions,
   backbone features; the target branch's keys);
2. compute the loss on the whole batch from those embeddings, made leaves, and its gradient with respect to them
   (and to the objective's own parameters, e.g. SIE's hypernetwork);
3. run each chunk's online branch again, now with its graph, and backpropagate the cached gradient of its rows
   (the target branch's keys carry no gradient: they are not computed again).

The parameters' gradient is then that of the whole batch (chain rule: the loss depends on the parameters only
through the embeddings), for batch-level objectives too — InfoNCE keeps all 2N − 2 negatives. Each chunk's second
pass replays its random state (dropout, drop-path), and BatchNorm buffers are restored after the first pass, so
they are updated once per chunk. BatchNorm itself normalises each chunk with that chunk's statistics, as it does
each process's share under DDP without SyncBatchNorm: the equality with one big batch is exact for models without
BatchNorm (tested in float64). Memories (queues, support sets, prototypes) are not supported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfsup.objectives import ViewBatch


def split_batch(batch: dict, chunks: int) -> list[dict]:
    """A training batch (``views``, ``params``, ``label``, ``index``) cut into ``chunks`` equal row ranges."""
    rows = batch["views"][0].shape[0]
    if rows % chunks:
        raise ValueError(f"grad_cache_chunks={chunks}: the batch of {rows} rows does not split into equal chunks")

    def cut(x):
        if isinstance(x, torch.Tensor):
            return x.chunk(chunks)
        if isinstance(x, (list, tuple)):
            return [list(parts) for parts in zip(*(cut(t) for t in x), strict=True)]
        return [x] * chunks  # None

    parts = {key: cut(value) for key, value in batch.items()}
    return [{key: parts[key][i] for key in batch} for i in range(chunks)]


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _online(feats: list, z: list, q: list) -> list[torch.Tensor]:
    """The online branch's tensors that carry gradient to the parameters, in a fixed order, each once (a query that
    is its projection, a projection that is the features under ``projector=identity``)."""
    unique = {}
    for t in (*z, *feats, *q):
        unique.setdefault(id(t), t)
    return list(unique.values())


def _whole(outs: list[ViewBatch]) -> ViewBatch:
    """The chunks' outputs joined into one ViewBatch (:meth:`ViewBatch.cat`: every field) whose online tensors are
    fresh leaves; a query or key that was the projection itself (no predictor; no target network) stays that leaf."""
    whole = ViewBatch.cat(outs)
    online = {id(t) for t in _online(whole.feats, whole.z, whole.q)}
    return whole.map(lambda t: t.detach().requires_grad_() if id(t) in online else t)


def grad_cache_backward(
    module, batch: dict, chunks: int, backward: Callable[[torch.Tensor, ViewBatch], None]
) -> tuple[torch.Tensor, ViewBatch]:
    """Run steps 1–3 (module docstring) for an ``SSLModule`` on ``batch``; ``backward(loss, whole)`` backpropagates
    the whole-batch loss (in training: ``SSLModule.manual_backward``, with the online probe's loss added). Returns
    the loss and the whole batch's ViewBatch (its embeddings are leaves); the parameters' ``.grad`` then hold the
    whole batch's gradient."""
    parts = split_batch(batch, chunks)
    buffers = [b.detach().clone() for b in module.buffers()]
    states, outs = [], []
    with torch.no_grad():
        for part in parts:
            states.append(_rng_state())
            outs.append(module.step_outputs(part))
    with torch.no_grad():
        for saved, current in zip(buffers, module.buffers(), strict=True):
            current.copy_(saved)
    whole = _whole(outs)
    loss = module.objective.forward_views(whole)
    backward(loss, whole)
    leaves = _online(whole.feats, whole.z, whole.q)
    start = 0
    for part, state in zip(parts, states, strict=True):
        rows = part["views"][0].shape[0]
        _set_rng_state(state)
        tensors = _online(*module.online(part["views"])[:3])  # keys are cached: no second target pass
        grads = [None if leaf.grad is None else leaf.grad[start : start + rows] for leaf in leaves]
        used = [(t, g) for t, g in zip(tensors, grads, strict=True) if g is not None]
        if used:
            torch.autograd.backward([t for t, _ in used], [g for _, g in used])
        start += rows
    return loss.detach(), whole
