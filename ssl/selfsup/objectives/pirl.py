"""PIRL: Pretext-Invariant Representation Learning (Misra & van der Maaten 2020, arXiv:1912.01991; docs/pirl.md).

An image I and its jigsaw I^t (``views.jigsaw``: tiles of a crop, shuffled) are embedded — the image by the
projector, f(v_I); the jigsaw tile by tile through the backbone, each tile's features by a shared linear map, the
maps concatenated in the tiles' shuffled order and mapped again, g(v_{I^t}) (§3.2; facebookresearch/vissl
``configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet50.yaml``: ``mlp [F, 128]`` per tile,
``siamese_concat_view``, ``mlp [9·128, 128]``) — and each is contrasted with the memory bank's row of its image
m_I (``memory=sample_bank``, the moving average of f(v_I)) against K bank rows (eq. 5):

    L = λ · L_NCE(m_I, g(v_{I^t})) + (1 − λ) · L_NCE(m_I, f(v_I)),   λ = 0.5

    L_NCE(m, v) = −log h(v, m) − Σ_{k=1..K} log(1 − h(v, m_k)),   h(v, m) = P(v, m) / (P(v, m) + K/n)

with P(v, m) = exp(cos(v, m)/τ) / Z, n the samples in the bank, and Z the normalising constant estimated once, on
the first step, as n × the mean of exp(cos/τ) over the jigsaw term's scored pairs (Wu et al. 2018's NCE, as
vissl ``losses/nce_loss.py``: ``NCEAverage.compute_partition_function``, ``NCECriterion`` with its float32 eps in
the denominators). ``norm_constant_update: every_step`` gives each term its own Z, re-estimated on every step
from that term's scores (a self-normalised NCE; docs/pirl.md says why small datasets need it).
``loss_type: cross_entropy`` replaces L_NCE by the cross-entropy of the positive among the K + 1 scores (vissl's
other ``loss_type``, InfoNCE).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks, distributed
from selfsup.objectives.base import Objective, RunFacts, ViewBatch

EPS = float(np.finfo("float32").eps)  # vissl NCECriterion's eps


def nce_memory_scores(v: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float):
    """exp(cos/τ) of each row of v (B, D) with its positive (B, D) and the K negatives (K, D): (B, 1 + K), the
    positive first. The bank rows are unit vectors already; v is normalised here."""
    v = F.normalize(v, dim=1)
    pos = (v * positives.to(v.dtype)).sum(dim=1, keepdim=True)
    return torch.exp(torch.cat([pos, v @ negatives.to(v.dtype).T], dim=1) / temperature)


def nce_criterion(p: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE of normalised scores p = exp(cos/τ)/Z (B, 1 + K), the positive first, against K noise samples of
    probability 1/n each: −mean over rows of [log(p₀/(p₀ + K/n)) + Σ_k log((K/n)/(p_k + K/n))]."""
    noise = (p.shape[1] - 1) / num_samples
    data_term = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
    noise_term = torch.log(noise / (p[:, 1:] + noise + EPS)).sum(dim=1)
    return -(data_term + noise_term).mean()


class PIRLLoss(Objective):
    """PIRL's loss over the image view and the jigsaw view (module docstring); the jigsaw head is built here.

    Args:
        image_view, jigsaw_view: which views are the image and its jigsaw (``views=pirl``: 0 and 1).
        grid: the jigsaw's g (g² tiles; conf: the jigsaw view's ``views.jigsaw``).
        tile_dim: the width each tile's features are mapped to before the concatenation (PIRL: 128).
        temperature: τ (PIRL: 0.07).
        weight: λ, the jigsaw term's weight (PIRL: 0.5).
        loss_type: ``nce`` (PIRL) or ``cross_entropy``.
        norm_constant_update: ``first_step`` (PIRL, vissl: one Z, from the first step's jigsaw term) or
            ``every_step`` (each term's Z from its own scores, every step).

    Reads the memory part's ``positives`` and ``negatives`` (``memory=sample_bank``). ``terms()`` logs
    ``jigsaw_nce`` and ``image_nce``. The constant Z is a buffer (−1 until the first step sets it): saved in
    checkpoints, so a resumed run keeps the Z it started with (``every_step``: the last term's, re-estimated anyway).
    """

    num_views = 2
    takes_local_views = False

    def __init__(
        self,
        image_view: int = 0,
        jigsaw_view: int = 1,
        grid: int = 3,
        tile_dim: int = 128,
        temperature: float = 0.07,
        weight: float = 0.5,
        loss_type: str = "nce",
        norm_constant_update: str = "first_step",
    ):
        super().__init__()
        self.image_view = checks.integer("objective.image_view", image_view, minimum=0)
        self.jigsaw_view = checks.integer("objective.jigsaw_view", jigsaw_view, minimum=0)
        if self.image_view == self.jigsaw_view:
            raise ValueError(f"objective.jigsaw_view={jigsaw_view}: expected another view than objective.image_view")
        self.grid = checks.integer("objective.grid", grid, minimum=1)
        self.tile_dim = checks.integer("objective.tile_dim", tile_dim, minimum=1)
        self.temperature = checks.number("objective.temperature", temperature, above=0)
        self.weight = checks.number("objective.weight", weight, minimum=0, maximum=1)
        if loss_type not in ("nce", "cross_entropy"):
            raise ValueError(f"objective.loss_type={loss_type!r}: expected 'nce' or 'cross_entropy'")
        self.loss_type = loss_type
        if norm_constant_update not in ("first_step", "every_step"):
            raise ValueError(
                f"objective.norm_constant_update={norm_constant_update!r}: expected 'first_step' or 'every_step'"
            )
        self.norm_constant_update = norm_constant_update
        self.tile_head: nn.Linear | None = None
        self.jigsaw_head: nn.Linear | None = None
        self.num_samples: int | None = None
        self.register_buffer("norm_constant", torch.full((), -1.0, dtype=torch.float64))
        self._terms: dict[str, torch.Tensor] = {}

    def attach(self, facts: RunFacts) -> None:
        self.tile_head = nn.Linear(facts.feature_dim, self.tile_dim)
        self.jigsaw_head = nn.Linear(self.grid**2 * self.tile_dim, facts.embedding_dim)
        self.num_samples = facts.num_samples

    def terms(self) -> dict[str, torch.Tensor]:
        return self._terms

    def embed_jigsaw(self, tiles: torch.Tensor) -> torch.Tensor:
        """g(v_{I^t}): tile features (B, g², F), in the view's (shuffled) order → (B, D)."""
        if tiles.shape[1] != self.grid**2:
            raise ValueError(
                f"objective.grid={self.grid}: the jigsaw view has {tiles.shape[1]} tiles, expected {self.grid**2}"
            )
        return self.jigsaw_head(self.tile_head(tiles).flatten(1))

    def term(self, v: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, first: bool) -> torch.Tensor:
        """L_NCE (or the cross-entropy) of embeddings v (B, D) against the bank. Z is estimated from this call's
        scores on every call (``every_step``), or on the first call of the run (``first``: the jigsaw term)."""
        scores = nce_memory_scores(v, positives, negatives, self.temperature)
        if self.loss_type == "cross_entropy":
            labels = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
            return F.cross_entropy(torch.log(scores), labels)
        if self.norm_constant_update == "every_step" or (first and self.norm_constant < 0):
            with torch.no_grad():  # mean over ranks of the rank means: the global mean (equal batches)
                mean = distributed.gather(scores.mean().to(torch.float64)[None]).mean()
                self.norm_constant.fill_(mean.item() * self.num_samples)
        z = self.norm_constant.to(scores.dtype, copy=True)  # a copy: every_step refills the buffer after this
        return nce_criterion(scores / z, self.num_samples)

    def forward(
        self, z_a: torch.Tensor, z_b: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """``z_a``: f(v_I) of the images (B, D); ``z_b``: g(v_{I^t}) of their jigsaws (B, D)."""
        if self.num_samples is None:
            raise ValueError("PIRLLoss: the bank's sample count is not known: train through selfsup.train.build")
        jigsaw = self.term(z_b, positives, negatives, True)  # first: vissl sets Z on its first embedding, the patches'
        image = self.term(z_a, positives, negatives, False)
        self._terms = {"jigsaw_nce": jigsaw.detach(), "image_nce": image.detach()}
        return self.weight * jigsaw + (1 - self.weight) * image

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        tiles = batch.tiles[self.jigsaw_view] if self.jigsaw_view < len(batch.tiles) else None
        if tiles is None:
            raise ValueError(
                f"objective: view {self.jigsaw_view} is not a jigsaw: set views.views.<its name>.jigsaw (views=pirl)"
            )
        if "positives" not in batch.extras:
            raise ValueError("objective: PIRLLoss reads a memory bank: set memory=sample_bank")
        extras = batch.extras
        return self(batch.z[self.image_view], self.embed_jigsaw(tiles), extras["positives"], extras["negatives"])
