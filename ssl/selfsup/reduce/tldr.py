"""TLDR: Twin Learning for Dimensionality Reduction (Kalantidis et al., TMLR 2022, arXiv:2110.09455).

Reduce existing feature vectors x ∈ R^D to z = f(x) ∈ R^d with a learned encoder f:

    1. offline, exact: the k nearest neighbours N_k(i) of every training row i (itself excluded)
    2. each step: a batch of rows i, each paired with ONE neighbour j drawn uniformly from N_k(i)
    3. A = g(f(x_i)), B = g(f(x_j)) with an auxiliary projector g (dropped after training)
    4. loss = scale_loss · [Σ_a (1 − C_aa)² + λ Σ_{a≠b} C_ab²],  C = BN(A)ᵀ BN(B) / n

i.e. ``scale_loss × BarlowTwinsLoss(lambd=λ)`` — the Barlow Twins loss of :mod:`selfsup.objectives.barlow_twins`
(batch standardisation without affine, biased variance, eps 1e-5) multiplied by a constant, which is how the
official code scales it (naver/tldr ``tldr/loss.py::BarlowTwinsLoss``: ``on_diag·scale + λ·off_diag·scale``, with
``TLDR_Module.bn = BatchNorm1d(affine=False)`` applied first, ``tldr/tldr.py``).
λ = 3.9e-3 and scale 1/32 are the first facebookresearch/barlowtwins release's (``main.py`` at f13c949); the
repo's ``BarlowTwinsLoss`` defaults to the current λ = 5.1e-3 without a scale, hence both are parameters here.

Defaults are the official code's (naver/tldr ``tldr/tldr.py::TLDR.__init__`` / ``fit``): n_components=32, a linear
encoder, projector ``mlp-2-2048``, k = 5 neighbours, batch 1024, scale_loss = 1/32, λ = 3.9e-3, 100 epochs, LARS
(momentum 0.9, η = 0.001, weight decay 1e-6, biases and norm parameters excluded from both, ``tldr/optimizer.py``),
lr = 0.2 × batch/256 with 10 linear warm-up epochs then a cosine to 0.001× (``adjust_learning_rate``). The official
README documents ``mlp-1-2048`` as the projector default while the code uses ``mlp-2-2048``; we follow the code.

Network strings (the official ``parse_net_config`` format):
    ``linear``            one ``Linear(D, d)`` with bias (PCA-like; the paper's default encoder)
    ``linear-<H>-<W>``    H hidden layers of width W, ``Linear → BatchNorm1d`` between them, no non-linearity
    ``mlp-<H>-<W>``       H hidden layers of width W, ``Linear(bias=False) → BatchNorm1d → ReLU``, last Linear
                          without bias
For the encoder the last layer maps to d; for the projector every layer (H hidden + the output) has width W, so
``mlp-2-2048`` is d → 2048 → 2048 → 2048.

Neighbours: the official code asks FAISS for the k+1 largest inner products and drops the first (assumed to be
the row itself). Here the search is exact, in chunks of query rows (a (chunk, N) block at a time, CPU or GPU), and
the row itself is masked by index, so duplicates do not break it. ``metric``: ``cosine`` (default: the official
inner product on L2-normalised rows, the paper's inputs; the same similarity as :func:`selfsup.metrics.knn_top1`),
``inner_product`` (the official code on raw rows) or ``euclidean``.
"""

from __future__ import annotations

import logging
import math
import re
import time

import torch
from torch import nn

from selfsup import checks
from selfsup.neighbours import neighbour_chunks
from selfsup.objectives.barlow_twins import BarlowTwinsLoss
from selfsup.optim import OptimizerSpec

log = logging.getLogger(__name__)

_NET = re.compile(r"^(linear|mlp)(?:-(\d+)-(\d+))?$")


# ---------------------------------------------------------------------------------------- neighbour graph, batches


def check_batch_size(batch_size: int, rows: int) -> int:
    """``train.batch_size``: pairs of a step, 2 to all ``rows`` (every epoch takes ``rows // batch_size`` steps)."""
    return checks.integer("train.batch_size", batch_size, minimum=2, maximum=rows)


def knn_graph(
    x: torch.Tensor,
    k: int = 5,
    metric: str = "cosine",
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """(N, k) int64 indices of the k nearest other rows of every row of ``x`` (N, D), nearest first; exact.

    Args:
        x: (N, D) features, finite.
        k: neighbours per row, 1 ≤ k < N.
        metric: ``cosine``, ``inner_product`` or ``euclidean``.
        chunk_size: query rows per (chunk, N) score block; None: as many as fit in 2^25 elements.
        device: where the search runs (the bank is copied there once); None: x's device. The result is on the CPU.
    """
    n = x.shape[0]
    checks.integer("knn.k", k, minimum=1, maximum=n - 1)  # n - 1: the other rows
    out = torch.empty(n, k, dtype=torch.long)
    for start, _, idx in neighbour_chunks(x, x, k, metric, chunk_size, exclude_self=True, device=device):
        out[start : start + idx.shape[0]] = idx.cpu()
    return out


def sample_positives(knn: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One neighbour per row of ``index``, drawn uniformly among its k (``knn[index, U{0..k-1}]``, as the official
    ``fit`` does with ``np.random.randint(n_neighbors)``)."""
    pick = torch.randint(knn.shape[1], (index.shape[0],), generator=generator, device=knn.device)
    return knn[index, pick]


# ---------------------------------------------------------------------------------------------- model


def parse_net(spec: str, key: str) -> tuple[str, int, int]:
    """``linear`` | ``linear-<H>-<W>`` | ``mlp-<H>-<W>`` → (type, hidden layers H, width W)."""
    m = _NET.match(str(spec))
    if m is None or (m.group(1) == "mlp" and m.group(2) is None):
        raise ValueError(
            f"{key}={spec!r}: expected linear, linear-<hidden layers>-<width> or mlp-<hidden layers>-<width>"
        )
    kind, hidden, width = m.group(1), int(m.group(2) or 0), int(m.group(3) or 0)
    if hidden > 0 and width < 1:
        raise ValueError(f"{key}={spec!r}: expected a width >= 1")
    return kind, hidden, width


def _stack(kind: str, sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    bias = kind == "linear"
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=bias), nn.BatchNorm1d(sizes[i + 1])]
        if kind == "mlp":
            layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=bias))
    return nn.Sequential(*layers)


def build_encoder(input_dim: int, n_components: int, spec: str = "linear") -> nn.Sequential:
    """The encoder f: D → d of a network string (official ``TLDR_Module`` layout)."""
    kind, hidden, width = parse_net(spec, "tldr.encoder")
    return _stack(kind, [input_dim] + [width] * hidden + [n_components])


def build_projector(n_components: int, spec: str | None = "mlp-2-2048") -> nn.Sequential | None:
    """The projector g: d → W (hidden + output layers all of width W); None: the loss is on f's output."""
    if spec is None:
        return None
    kind, hidden, width = parse_net(spec, "tldr.projector")
    if hidden == 0:
        raise ValueError(f"tldr.projector={spec!r}: expected <type>-<hidden layers>-<width> (or null: no projector)")
    return _stack(kind, [n_components] + [width] * (hidden + 1))


class TLDR(nn.Module):
    """Encoder f (kept) + projector g (training only) + the scaled Barlow Twins loss on neighbour pairs.

    Args:
        input_dim: D, the width of the input features.
        n_components: d, the output dimension.
        encoder: network string of f (module docstring).
        projector: network string of g, or None (loss on f's output).
        lambd: λ of the Barlow Twins off-diagonal term (official 3.9e-3).
        scale_loss: constant factor of the whole loss (official 1/32).
    """

    def __init__(
        self,
        input_dim: int,
        n_components: int = 32,
        encoder: str = "linear",
        projector: str | None = "mlp-2-2048",
        lambd: float = 3.9e-3,
        scale_loss: float = 1 / 32,
    ):
        super().__init__()
        checks.integer("tldr.n_components", n_components, minimum=1)
        checks.number("tldr.scale_loss", scale_loss, above=0)
        self.input_dim, self.n_components = int(input_dim), n_components
        self.encoder_spec, self.projector_spec = encoder, projector
        self.scale_loss = float(scale_loss)
        self.encoder = build_encoder(self.input_dim, n_components, encoder)
        self.projector = build_projector(n_components, projector)
        self.objective = BarlowTwinsLoss(lambd=lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, d)

    def loss(self, x: torch.Tensor, x_pos: torch.Tensor) -> torch.Tensor:
        """scale_loss · BarlowTwins(g(f(x)), g(f(x_pos))) over a batch of (row, neighbour) pairs (B, D) each."""
        z_a, z_b = self.encoder(x), self.encoder(x_pos)  # (B, d)
        if self.projector is not None:
            z_a, z_b = self.projector(z_a), self.projector(z_b)  # (B, W)
        return self.scale_loss * self.objective(z_a, z_b)

    def architecture(self) -> dict:
        return {"input_dim": self.input_dim, "n_components": self.n_components, "encoder": self.encoder_spec}


# ---------------------------------------------------------------------------------------------- training


def fit(
    model: TLDR,
    x: torch.Tensor,
    knn: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 1024,
    lr: float = 0.2,
    warmup_epochs: float = 10.0,
    weight_decay: float = 1e-6,
    min_lr_ratio: float = 0.001,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_every: int = 50,
) -> dict:
    """Train ``model`` on rows ``x`` (N, D) with positives from ``knn`` (N, k); returns a training summary.

    Every epoch visits a random permutation of the rows in ``N // batch_size`` full batches (the official
    ``BatchSampler(RandomSampler, drop_last=True)``); each row's positive is a fresh uniform pick among its k
    neighbours. LARS + linear warm-up + cosine come from :class:`selfsup.optim.OptimizerSpec` (lr × batch/256).
    The model is left on ``device`` in eval mode.
    """
    n = x.shape[0]
    if knn.ndim != 2 or knn.shape[0] != n:
        raise ValueError(f"knn: got shape {tuple(knn.shape)}, expected ({n}, k)")
    check_batch_size(batch_size, n)
    checks.integer("train.epochs", epochs, minimum=1)
    device = torch.device(device)
    x, knn = x.to(device), knn.to(device)
    if x.dtype != torch.float64:
        x = x.float()
    model.to(device=device, dtype=x.dtype).train()
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * epochs
    spec = OptimizerSpec(
        name="lars",
        lr=lr,
        lr_scaling="linear",
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        min_lr_ratio=min_lr_ratio,
    )
    opt, sched = spec.build(model.parameters(), [], batch_size, total, steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(seed)
    losses, t0, step = [], time.perf_counter(), 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen, device=device)
        for b in range(steps_per_epoch):
            index = order[b * batch_size : (b + 1) * batch_size]  # (B,)
            loss = model.loss(x[index], x[sample_positives(knn, index, gen)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise ValueError(f"train.lr={lr}: the loss became {losses[-1]} at step {step}; expected a lower lr")
            if log_every and step % log_every == 0:
                elapsed = time.perf_counter() - t0
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.4g  (%.0f pairs/s)",
                    epoch + 1,
                    step,
                    total,
                    losses[-1],
                    opt.param_groups[0]["lr"],
                    step * batch_size / elapsed,
                )
    seconds = time.perf_counter() - t0
    model.eval()
    tail = losses[-steps_per_epoch:]
    return {
        "steps": total,
        "seconds": seconds,
        "pairs_per_second": total * batch_size / max(seconds, 1e-9),
        "first_loss": losses[0],
        "last_epoch_loss": sum(tail) / len(tail),
    }


@torch.no_grad()
def transform(encoder: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """f(x) in eval mode, in row batches; (N, d) float32 on the CPU."""
    was_training = encoder.training
    encoder.eval()
    p = next(encoder.parameters())
    out = [encoder(x[i : i + batch_size].to(p.device, p.dtype)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    encoder.train(was_training)
    return torch.cat(out)
