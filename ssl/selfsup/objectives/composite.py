"""Weighted sums of objectives over chosen pairs of views, configured in YAML (``conf/objective/care.yaml``).

    total = Σ_t weight_t · loss_t(z[views_t[0]], z[views_t[1]], **extras_t)

Each term is ``{loss: <objective>, weight: float ≥ 0, views: [i, j]}``; ``loss`` is any objective of this package
(Hydra instantiates it from its ``_target_``). After each call, ``last_terms`` holds the detached unweighted value of
every term, for logging (``train/<name>``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

EXTRAS = ("feats_a", "feats_b", "transform")
TERM_KEYS = ("loss", "weight", "views")


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
) -> torch.Tensor:
    """``objective(z_a, z_b, **extras)`` with only the extras its ``forward`` names (``feats_a``, ``feats_b``,
    ``transform``); raises ValueError when it requires one that is None."""
    params, var_kw = _forward_parameters(objective)
    given = {"feats_a": feats_a, "feats_b": feats_b, "transform": transform}
    kwargs = {}
    for key, value in given.items():
        if key not in params and not var_kw:
            continue
        if value is not None:
            kwargs[key] = value
        elif key in params and params[key].default is inspect.Parameter.empty:
            raise ValueError(f"{type(objective).__name__}.forward needs {key!r}, which was not given")
    return objective(z_a, z_b, **kwargs)


class CompositeObjective(nn.Module):
    """Weighted terms, each an objective applied to one pair of views.

    Call ``forward_views(z, feats, params)`` with the embeddings of ALL views (``z[i]`` (N, D) of view i),
    optionally their backbone features ``feats[i]`` (N, F) and recorded augmentation parameters ``params[i]``
    (N, P). A term on views (i, j) whose objective takes ``transform`` gets ``params[j] − params[i]``, or
    ``transform_fn(i, j)`` when that callable is given. ``forward(z_a, z_b, ...)`` is the two-view form: views 0
    and 1, allowed only when every term uses them.

    Args:
        terms: name → ``{"loss": objective, "weight": float ≥ 0 (default 1.0), "views": [i, j] (default [0, 1])}``.
    """

    def __init__(self, terms: Mapping[str, Mapping]):
        super().__init__()
        if not terms:
            raise ValueError("objective.terms: expected at least one term")
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.views: dict[str, tuple[int, int]] = {}
        for name, term in dict(terms).items():
            term = dict(term)
            unknown = sorted(set(term) - set(TERM_KEYS))
            if unknown:
                raise ValueError(f"objective.terms.{name}: unexpected keys {unknown}, expected {TERM_KEYS}")
            loss = term.get("loss")
            if not isinstance(loss, nn.Module):
                raise ValueError(f"objective.terms.{name}.loss={loss!r}: expected an objective (nn.Module)")
            weight = term.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise ValueError(f"objective.terms.{name}.weight={weight!r}: expected a number >= 0")
            views = term.get("views", (0, 1))
            if (
                isinstance(views, (str, bytes))
                or len(views) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in views)
                or views[0] == views[1]
            ):
                raise ValueError(f"objective.terms.{name}.views={views!r}: expected two distinct view indices >= 0")
            self.losses[name] = loss
            self.weights[name] = float(weight)
            self.views[name] = (int(views[0]), int(views[1]))
        self.last_terms: dict[str, torch.Tensor] = {}

    @property
    def num_views(self) -> int:
        """How many views the terms use (max index + 1)."""
        return 1 + max(max(v) for v in self.views.values())

    def forward_views(
        self,
        z: Sequence[torch.Tensor],
        feats: Sequence[torch.Tensor] | None = None,
        params: Sequence[torch.Tensor] | None = None,
        transform_fn: Callable[[int, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if len(z) < self.num_views:
            raise ValueError(f"CompositeObjective: the terms use {self.num_views} views, got {len(z)}")
        if transform_fn is None and params is not None:
            transform_fn = lambda i, j: params[j] - params[i]  # noqa: E731
        total, last = None, {}
        for name, loss in self.losses.items():
            i, j = self.views[name]
            transform = transform_fn(i, j) if transform_fn is not None and accepts(loss, "transform") else None
            value = call_objective(
                loss,
                z[i],
                z[j],
                feats_a=None if feats is None else feats[i],
                feats_b=None if feats is None else feats[j],
                transform=transform,
            )
            last[name] = value.detach()
            total = self.weights[name] * value if total is None else total + self.weights[name] * value
        self.last_terms = last
        return total

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        feats_a: torch.Tensor | None = None,
        feats_b: torch.Tensor | None = None,
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.num_views > 2:
            raise ValueError(
                f"CompositeObjective: the terms use {self.num_views} views; call forward_views with all of them"
            )
        feats = None if feats_a is None and feats_b is None else [feats_a, feats_b]

        def transform_fn(i: int, j: int) -> torch.Tensor | None:
            if (i, j) != (0, 1):
                raise ValueError(f"CompositeObjective: a transform was given for views (0, 1), a term uses ({i}, {j})")
            return transform

        return self.forward_views([z_a, z_b], feats, transform_fn=None if transform is None else transform_fn)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight={self.weights[name]}, views={list(self.views[name])}" for name in self.losses)
