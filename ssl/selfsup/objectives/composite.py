"""Weighted sums of objectives over chosen pairs of views, configured in YAML (``conf/objective/care.yaml``).

    total = Σ_t weight_t · loss_t(z[views_t[0]], z[views_t[1]], **extras_t)

Each term is ``{loss: <objective>, weight: float ≥ 0, views: [i, j] | all}``; ``loss`` is any objective of this
package (Hydra instantiates it from its ``_target_``). ``views: all`` hands the term the whole step (its own
``forward_views``): how DINOv2 adds iBOT and KoLeo to DINO over multi-crop views. After each call, ``last_terms``
holds the detached unweighted value of every term, for logging (``train/<name>``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from selfsup import checks
from selfsup.objectives.base import Objective, ViewBatch, mean_over, score_pair

TERM_KEYS = ("loss", "weight", "views")


class CompositeObjective(Objective):
    """Weighted terms, each an objective applied to one pair of views.

    ``forward_views(batch)`` (:class:`~selfsup.objectives.base.ViewBatch`) scores each term on its views (i, j) —
    queries of view i against keys of view j, with that pair's extras (a term whose objective takes ``transform``
    gets ``params[j] − params[i]``); where queries and keys come from different branches and the batch is symmetric,
    in both orders, averaged. ``forward(z_a, z_b, ...)`` is the two-view form: views 0 and 1, allowed only when every
    term uses them.

    Args:
        terms: name → ``{"loss": objective, "weight": float ≥ 0 (default 1.0), "views": [i, j] (default [0, 1]) or
            "all"}``.

    What it declares (``Objective``) is what its terms declare: any term's token inputs, the union of their
    schedulable attributes (a schedule sets every term that has the attribute); and each term's weight, as
    ``<term>.weight`` (``callbacks: ObjectiveSchedule`` with ``attribute: koleo.weight``).
    """

    def __init__(self, terms: Mapping[str, Mapping]):
        super().__init__()
        if not terms:
            raise ValueError("objective.terms: expected at least one term")
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.views: dict[str, tuple[int, int] | None] = {}  # None: all views (the term's forward_views)
        for name, term in dict(terms).items():
            term = dict(term)
            unknown = sorted(set(term) - set(TERM_KEYS))
            if unknown:
                raise ValueError(f"objective.terms.{name}: unexpected keys {unknown}, expected {TERM_KEYS}")
            loss = term.get("loss")
            if not isinstance(loss, nn.Module):
                raise ValueError(f"objective.terms.{name}.loss={loss!r}: expected an objective (nn.Module)")
            weight = term.get("weight", 1.0)
            checks.number(f"objective.terms.{name}.weight", weight, minimum=0)
            views = term.get("views", (0, 1))
            if views == "all":
                self.losses[name], self.weights[name], self.views[name] = loss, float(weight), None
                continue
            if (
                isinstance(views, (str, bytes))
                or len(views) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in views)
                or views[0] == views[1]
            ):
                raise ValueError(
                    f"objective.terms.{name}.views={views!r}: expected two distinct view indices >= 0 or 'all'"
                )
            self.losses[name] = loss
            self.weights[name] = float(weight)
            self.views[name] = (int(views[0]), int(views[1]))
        self.last_terms: dict[str, torch.Tensor] = {}

        teachers = {loss.teacher_tokens for loss in self.losses.values()} - {None}
        if len(teachers) > 1:
            raise ValueError(f"objective.terms: the terms read different teacher tokens {sorted(teachers)}")
        self.teacher_tokens = teachers.pop() if teachers else None
        self.teacher_blocks = max(loss.teacher_blocks for loss in self.losses.values())
        self.masked = any(loss.masked for loss in self.losses.values())
        self.predicts_tokens = any(loss.predicts_tokens for loss in self.losses.values())
        inner = (a for loss in self.losses.values() for a in loss.schedulable)
        self.schedulable = tuple(dict.fromkeys([*inner, *(f"{name}.weight" for name in self.losses)]))

    @property
    def takes_local_views(self) -> bool:
        """Only when every term takes the whole step (a term on views [i, j] scores fixed views)."""
        return all(v is None and self.losses[n].takes_local_views for n, v in self.views.items())

    @property
    def continues_trained_model(self) -> bool:
        return any(loss.continues_trained_model for loss in self.losses.values())

    def set_scheduled(self, name: str, value: float) -> None:
        term, _, attribute = name.rpartition(".")
        if attribute == "weight" and term in self.weights:  # "<term>.weight": e.g. a KoLeo term ramped down
            checks.number(f"objective.terms.{term}.weight", value, minimum=0)
            self.weights[term] = float(value)
            return
        for loss in self.losses.values():
            if name in loss.schedulable:
                loss.set_scheduled(name, value)

    def attach(self, facts) -> None:
        for loss in self.losses.values():
            loss.attach(facts)

    def terms(self) -> dict[str, torch.Tensor]:
        return self.last_terms

    @property
    def num_views(self) -> int:
        """How many views the terms use (max index + 1; a term on all views: its own ``num_views``)."""
        return max(1 + max(v) if v is not None else self.losses[n].num_views for n, v in self.views.items())

    def forward_views(self, batch: ViewBatch) -> torch.Tensor:
        if len(batch.q) < self.num_views:
            raise ValueError(f"CompositeObjective: the terms use {self.num_views} views, got {len(batch.q)}")
        total, last = None, {}
        for name, loss in self.losses.items():
            if self.views[name] is None:
                value = loss.forward_views(batch)
            else:
                i, j = self.views[name]
                orders = [(i, j)] if batch.one_branch or not batch.symmetric else [(i, j), (j, i)]
                value = mean_over([score_pair(loss, batch, a, b) for a, b in orders])
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
        z, feats = [z_a, z_b], [feats_a, feats_b]
        params = [torch.zeros_like(transform), transform] if transform is not None else [None, None]
        return self.forward_views(ViewBatch(z, z, z, feats, params, num_global=2))

    def extra_repr(self) -> str:
        views = {n: "all" if v is None else list(v) for n, v in self.views.items()}
        return ", ".join(f"{name}: weight={self.weights[name]}, views={views[name]}" for name in self.losses)
