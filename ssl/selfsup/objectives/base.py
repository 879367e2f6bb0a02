"""The one call path of every objective: ``SSLModule`` hands what a step produced (:class:`ViewBatch`) to
``objective.forward_views``; the default in :class:`Objective` scores pairs of views with the objective's own
``forward(z_a, z_b, **extras)`` and averages them.

Which pairs (:meth:`ViewBatch.pairs`): queries come from every view, keys from the global views only (teachers never
see local crops). With one branch — no predictor, no target network, so a query and its key are the same tensor —
each unordered pair with a global view is scored once: (0, 1) for two views, all 2·L + 1 pairs for 2 global and
L local crops (SwAV's multi-crop, Caron et al. 2020, arXiv:2006.09882 §3.2, which the paper also applies to
SimCLR). With two branches (a predictor and/or a target) every (query view, other global key view) pair is scored,
which for two views is BYOL's symmetrised loss ``(L(q0, k1) + L(q1, k0)) / 2`` (Grill et al. 2020, eq. 2 and its
symmetrisation) and for multi-crop DINO's pairing; ``symmetric=false`` keeps (0, 1) only (MoCo v2's one direction).

The extras an objective's ``forward`` may name come from here too: ``feats_a``, ``feats_b`` (backbone features of
the two views), ``transform`` (the relative transform of the two views' recorded parameters, encoded in one place —
SIE) and whatever the run's memory part adds (``ViewBatch.extras``, e.g. MoCo v2's ``queue``).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from selfsup.data.views import relative_transform


@dataclass(frozen=True)
class RunFacts:
    """What the parts of a training module may be built with (:meth:`Objective.attach`, ``Memory.attach``).

    Attributes:
        embedding_dim: D, the width of the projections the objective receives.
        feature_dim: F, the width of the backbone's features.
        num_samples: images in the training split (None where no data is loaded: a sweep's pre-check).
        global_batch: rows per optimiser step over all processes (None where no data is loaded).
    """

    embedding_dim: int
    feature_dim: int
    num_samples: int | None = None
    global_batch: int | None = None


@dataclass
class ViewBatch:
    """One training step's outputs, per view, global views first.

    Attributes:
        z: online projections of every view, V x (B, D).
        q: what queries the loss: the predictor's outputs where there is one, else ``z`` (the same tensors).
        k: the target branch's outputs on the global views, G x (B, D): ``z[:G]`` itself for no target, detached
            for stop-gradient, the EMA network's for an EMA target (after the memory part: nearest neighbours).
        feats: backbone features of every view, V x (B, F).
        params: recorded augmentation parameters of every view, V x (B, P).
        num_global: G, the global views (teachers and keys see only these).
        symmetric: score both orders of a pair when queries and keys come from different branches.
        extras: named tensors for the objective's ``forward`` (a memory part's queue, its scores).
        index: each row's global dataset index (B,) (``batch["index"]``; DIET's classes), None when not known.
        tiles: per view, the backbone features of each tile of a jigsaw view (B, g², F), in the order the tiles
            sit in the view (``views.jigsaw``; PIRL), None for other views; empty when no view is a jigsaw.

    Token level (masked methods, docs/tokens.md; empty otherwise), one entry per masked view (the leading views):

        masks: the mask part's draws (``batch["masks"]``, ``selfsup.data.masks``): dicts of bool tensors.
        tokens: the online encoder's :class:`~selfsup.models.tokens.Tokens` of the masked views.
        predictions: the token head's outputs (``conf/token_head/``); with ``token_head=projector``, the projector
            on the masked patch tokens, (Σ masked, K) in (sample, position) order.
        teacher: the target network's :class:`~selfsup.models.tokens.Tokens` of the unmasked global views, with
            the blocks and projections the objective declares (``Objective.teacher_tokens``).
        pixels: the masked views' images (B, C, H, W) (MAE's targets).
    """

    z: list[torch.Tensor]
    q: list[torch.Tensor]
    k: list[torch.Tensor]
    feats: list[torch.Tensor]
    params: list[torch.Tensor | None]
    num_global: int
    symmetric: bool = True
    extras: dict = field(default_factory=dict)
    index: torch.Tensor | None = None
    tiles: list = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)
    tokens: list = field(default_factory=list)
    predictions: list = field(default_factory=list)
    teacher: list = field(default_factory=list)
    pixels: list = field(default_factory=list)

    @property
    def one_branch(self) -> bool:
        """Queries and keys are the same tensors (no predictor, no target network)."""
        return all(self.q[j] is self.k[j] for j in range(len(self.k)))

    def pairs(self) -> list[tuple[int, int]]:
        """(query view, key view) pairs an objective scores by default (see the module docstring)."""
        views, n_global = len(self.q), len(self.k)
        if self.one_branch:
            return [(j, i) for j in range(n_global) for i in range(j + 1, views)]
        if not self.symmetric:
            return [(0, 1)]
        return [(i, j) for i in range(views) for j in range(n_global) if i != j]

    def key(self, j: int) -> torch.Tensor:
        """The key of view j: the target branch's for a global view; with one branch a local view's own output."""
        return self.k[j] if j < len(self.k) else self.q[j]

    @classmethod
    def cat(cls, chunks: list[ViewBatch]) -> ViewBatch:
        """Row chunks of one step joined into one batch, in order: every tensor of every field — lists per view,
        ``extras`` and ``index`` included, and any field added later — concatenated along rows; a tensor two fields
        share (a query that is its projection) stays one tensor; other values must agree across chunks."""
        memo: dict = {}
        return cls(**{f.name: _join([getattr(c, f.name) for c in chunks], torch.cat, memo) for f in fields(cls)})

    def map(self, fn) -> ViewBatch:
        """A batch of the same structure with ``fn(tensor)`` in place of every tensor; a tensor two fields share is
        mapped once (the results are shared too)."""
        memo: dict = {}
        return type(self)(**{f.name: _join([getattr(self, f.name)], lambda t: fn(t[0]), memo) for f in fields(self)})

    def rows(self, start: int, stop: int) -> ViewBatch:
        """Rows ``start:stop`` of every tensor of every field (the inverse of :meth:`cat`)."""
        return self.map(lambda t: t[start:stop])

    def transform(self, i: int, j: int) -> torch.Tensor:
        """The transform of view i → view j, (B, 14) (``selfsup.data.views.relative_transform``): what SIE's
        hypernetwork reads (None when the parameters are not known)."""
        if self.params[i] is None or self.params[j] is None:
            return None
        return relative_transform(self.params[i], self.params[j])


def _join(parts: list, op, memo: dict):
    """``op`` over the tensors at the same place of each of ``parts`` (nested lists and dicts walked alike)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        key = tuple(id(p) for p in parts)
        if key not in memo:
            memo[key] = op(parts)
        return memo[key]
    if isinstance(first, list | tuple):
        return type(first)(_join([p[i] for p in parts], op, memo) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _join([p[k] for p in parts], op, memo) for k in first}
    if dataclasses.is_dataclass(first) and not isinstance(first, type):  # Tokens: walked field by field
        return type(first)(**{f.name: _join([getattr(p, f.name) for p in parts], op, memo) for f in fields(first)})
    if any(p != first for p in parts[1:]):
        raise ValueError(f"ViewBatch: chunks disagree on a value that is not a tensor: {parts}")
    return first


def _forward_parameters(objective: nn.Module) -> tuple[dict[str, inspect.Parameter], bool]:
    params = dict(inspect.signature(objective.forward).parameters)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, var_kw


def accepts(objective: nn.Module, name: str) -> bool:
    """Whether ``objective.forward`` takes the keyword ``name``."""
    params, var_kw = _forward_parameters(objective)
    return name in params or var_kw


def call_objective(
    objective: nn.Module,
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    feats_a: torch.Tensor | None = None,
    feats_b: torch.Tensor | None = None,
    transform: torch.Tensor | None = None,
    **more,
) -> torch.Tensor:
    """``objective(z_a, z_b, **extras)`` with only the extras its ``forward`` names (``feats_a``, ``feats_b``,
    ``transform`` and any ``more``); a ValueError when it requires one that is missing or None."""
    params, var_kw = _forward_parameters(objective)
    extras = {"feats_a": feats_a, "feats_b": feats_b, "transform": transform, **more}
    kwargs = {}
    for key, value in extras.items():
        if key not in params and not var_kw:
            continue
        if value is not None:
            kwargs[key] = value
    for key, p in params.items():
        if (
            key not in ("self", "z_a", "z_b")
            and p.default is inspect.Parameter.empty
            and key not in kwargs
            and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        ):
            raise ValueError(f"{type(objective).__name__}.forward needs {key!r}, which was not given")
    return objective(z_a, z_b, **kwargs)


def score_pair(objective: nn.Module, batch: ViewBatch, i: int, j: int) -> torch.Tensor:
    """``objective`` on query view i against key view j, with the extras of that pair."""
    transform = batch.transform(i, j) if accepts(objective, "transform") else None
    return call_objective(
        objective,
        batch.q[i],
        batch.key(j),
        feats_a=batch.feats[i],
        feats_b=batch.feats[j],
        transform=transform,
        **batch.extras,
    )


def mean_over(values: list[torch.Tensor]) -> torch.Tensor:
    """Their mean, summed in order (one value: itself)."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total if len(values) == 1 else total / len(values)


class Objective(nn.Module):
    """Base of every objective: ``forward(z_a, z_b, **extras)`` is the loss of one pair of views;
    :meth:`forward_views` applies it to a step's pairs (module docstring).

    What an objective declares — the training module and ``train/build.py`` read these and nothing else about it
    (docs/design.md, "Part contracts"):

    - ``num_views``: how many views a step must carry (2).
    - ``takes_local_views``: whether multi-crop's local views may be among them (True).
    - ``continues_trained_model``: it is a criterion for continuing a trained encoder (E2MC), so a run that starts
      from random weights (``init_from=null``) is warned (False).
    - ``schedulable``: the attributes a schedule may set between epochs (``callbacks: ObjectiveSchedule``; DINO's
      ``teacher_temp``) (none).
    - :meth:`attach`: called once, when the training module is built, with the run's facts (a head over the
      training samples is created there: DIET).
    - :meth:`terms`: the detached values of its parts after the last call, logged as ``train/<name>`` ({}).

    Token level (docs/tokens.md): what a masked method reads, checked against the run's parts when it is built.

    - ``masked``: it reads the masks of the leading views (``ViewBatch.masks``), so the run needs a mask part
      (``mask=...``) and a ViT backbone (False).
    - ``predicts_tokens``: it reads the token head's outputs (``ViewBatch.predictions``), so the run needs a
      ``token_head`` (False).
    - ``teacher_tokens``: what it reads of the target network on the unmasked views (``ViewBatch.teacher``):
      None (nothing), ``"final"`` (the patch tokens after the final norm), ``"blocks"`` (also the outputs of the last
      ``teacher_blocks`` blocks) or ``"projected"`` (also the target projector on the masked patch tokens) —
      a run with such an objective needs ``target=ema`` (None).
    """

    num_views: int = 2
    takes_local_views: bool = True
    continues_trained_model: bool = False
    schedulable: tuple[str, ...] = ()
    masked: bool = False
    predicts_tokens: bool = False
    teacher_tokens: str | None = None
    teacher_blocks: int = 0

    def set_scheduled(self, name: str, value: float) -> None:
        """Set one of :attr:`schedulable` (``callbacks: ObjectiveSchedule``)."""
        setattr(self, name, value)

    def attach(self, facts: RunFacts) -> None:
        """Called once by the training module with the run's facts; the default needs none."""

    def terms(self) -> dict[str, torch.Tensor]:
        """Detached values of the objective's parts after the last call (logged as ``train/<name>``)."""
        return {}

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        return mean_over([score_pair(self, batch, i, j) for i, j in batch.pairs()])
