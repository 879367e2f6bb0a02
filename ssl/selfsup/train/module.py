"""SSLModule: backbone → projector [→ predictor] → objective, with an online probe and kNN/RankMe validation.

A method is a projector, an objective and (optionally) a predictor and a momentum target:
SimCLR/Barlow/VICReg/... use neither; SimSiam a predictor and stop-gradient; BYOL and MoCo v3 a predictor and an
EMA target network. Everything else — optimiser groups, schedules, probe, validation, checkpoint metadata — lives
here once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

import selfsup
from selfsup import distributed
from selfsup.metrics import knn_top1, rankme
from selfsup.objectives import call_objective
from selfsup.train.optim import OptimizerSpec


class MomentumSpec:
    """EMA target network (BYOL/MoCo v3): τ goes from ``base`` to ``final`` on a cosine over the run.

    Args:
        base: momentum at step 0 (BYOL: 0.996, MoCo v3: 0.99).
        final: momentum at the last step.
    """

    def __init__(self, base: float = 0.996, final: float = 1.0):
        if not (0 <= base <= final <= 1):
            raise ValueError(f"momentum.base={base}, momentum.final={final}: expected 0 <= base <= final <= 1")
        self.base, self.final = base, final

    def at(self, step: int, total: int) -> float:
        return self.final - (self.final - self.base) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1) / 2


def _out_dim(head: nn.Module, in_dim: int) -> int:
    was_training = head.training
    with torch.no_grad():
        out = head.eval()(torch.zeros(2, in_dim)).shape[1]
    head.train(was_training)
    return out


class SSLModule(L.LightningModule):
    """Self-supervised training of ``backbone`` with ``objective`` on the first two views (and more for
    objectives that take them, e.g. CARE's chunk-shared views).

    Args:
        backbone: encoder with ``num_features`` (selfsup.models.build_backbone).
        projector: builder ``in_dim -> nn.Module`` (a Hydra partial of selfsup.models.mlp).
        objective: a selfsup.objectives module.
        optim: optimiser, LR scaling and schedule.
        num_classes: classes of the online linear probe on detached backbone features (0: no probe).
        predictor: builder ``in_dim -> nn.Module`` applied to online projections (BYOL, SimSiam, MoCo v3).
        momentum: EMA target network for the second branch (BYOL, MoCo v3); without it and with a predictor
            the targets are the detached online projections (SimSiam).
        symmetric: also score (view 1, view 0) and average both directions (predictor/momentum methods).
        run_info: stored in every checkpoint as ``checkpoint["selfsup"]``: the resolved training config
            (``"config"``) and the global batch it trains with (``"global_batch"``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: Callable[[int], nn.Module],
        objective: nn.Module,
        optim: OptimizerSpec,
        num_classes: int = 0,
        predictor: Callable[[int], nn.Module] | None = None,
        momentum: MomentumSpec | None = None,
        symmetric: bool = True,
        run_info: dict | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projector(in_dim=backbone.num_features)
        proj_dim = _out_dim(self.projector, backbone.num_features)
        self.predictor = predictor(in_dim=proj_dim) if predictor is not None else None
        self.objective = objective
        self.optim, self.momentum, self.symmetric = optim, momentum, symmetric
        self.probe = nn.Linear(backbone.num_features, num_classes) if num_classes > 0 else None
        if momentum is not None:
            self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.run_info = run_info or {}
        self._val_outputs: dict[int, list] = {}

    # -- training -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, F) — what evaluation and export use."""
        return self.backbone(x)

    def _targets(self, views: list[torch.Tensor], z: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.momentum is not None:
            with torch.no_grad():
                return [self.target_projector(self.target_backbone(v)) for v in views]
        return [zi.detach() for zi in z] if self.predictor is not None else z

    def _score(self, a, b, feats_a, feats_b, params_a, params_b) -> torch.Tensor:
        # transform (B, P): the difference of the two views' recorded augmentation parameters (SIE)
        return call_objective(self.objective, a, b, feats_a, feats_b, transform=params_b - params_a)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        views, params = batch["views"], batch["params"]
        feats = [self.backbone(v) for v in views]  # V x (B, F)
        z = [self.projector(f) for f in feats]  # V x (B, D)
        if self.predictor is not None or self.momentum is not None:  # BYOL, SimSiam, MoCo v3
            q = [self.predictor(zi) if self.predictor is not None else zi for zi in z[:2]]
            k = self._targets(views[:2], z[:2])
            loss = self._score(q[0], k[1], feats[0], feats[1], params[0], params[1])
            if self.symmetric:
                loss = 0.5 * (loss + self._score(q[1], k[0], feats[1], feats[0], params[1], params[0]))
        elif hasattr(self.objective, "forward_views"):  # composite objectives use any views they name
            loss = self.objective.forward_views(z, feats, params)
        else:
            loss = self._score(z[0], z[1], feats[0], feats[1], params[0], params[1])
        for name, value in getattr(self.objective, "last_terms", {}).items():
            self.log(f"train/{name}", value, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        if self.probe is not None:
            loss = loss + self._probe_step(feats[0].detach(), batch["label"])
        return loss

    def _probe_step(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not known.any():
            return feats.new_zeros(())
        logits = self.probe(feats[known])
        probe_loss = F.cross_entropy(logits, labels[known])
        self.log("train/probe_loss", probe_loss, sync_dist=True)
        self.log("train/probe_top1", (logits.argmax(1) == labels[known]).float().mean(), sync_dist=True)
        return probe_loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.momentum is None:
            return
        tau = self.momentum.at(self.global_step, self.trainer.datamodule.batch_plan().total_steps)
        with torch.no_grad():
            for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
                for p_o, p_t in zip(online.parameters(), target.parameters()):
                    p_t.lerp_(p_o, 1 - tau)
                for b_o, b_t in zip(online.buffers(), target.buffers()):
                    b_t.copy_(b_o)
        self.log("train/momentum", tau)

    # -- validation: kNN top-1 of held-out images against the training bank, RankMe of embeddings ---------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, index = batch
        f = self.backbone(x)
        self._val_outputs.setdefault(dataloader_idx, []).append((f, self.projector(f), y, index))

    def _gathered(self, dataloader_idx: int):
        f, z, y, index = (torch.cat(t) for t in zip(*self._val_outputs[dataloader_idx]))
        f, z, y, index = (distributed.gather(t) for t in (f, z, y, index))  # (N over ranks, ...) in rank order
        order = torch.argsort(index, stable=True)
        f, z, y, index = f[order], z[order], y[order], index[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # drop the padding duplicates of sharded evaluation
        return f[first], z[first], y[first]

    def on_validation_epoch_end(self) -> None:
        if set(self._val_outputs) != {0, 1}:
            self._val_outputs.clear()
            return
        bank_f, _, bank_y = self._gathered(0)
        query_f, query_z, query_y = self._gathered(1)
        self._val_outputs.clear()
        metrics = {"val/rankme": rankme(query_z).item(), "val/rankme_backbone": rankme(query_f).item()}
        if (bank_y >= 0).all() and (query_y >= 0).all():
            metrics["val/knn_top1"] = knn_top1(bank_f, bank_y, query_f, query_y)
            if self.probe is not None:
                metrics["val/probe_top1"] = (self.probe(query_f).argmax(1) == query_y).float().mean().item()
        self.log_dict(metrics, prog_bar=True, sync_dist=True)  # equal on every rank (gathered): the mean is a no-op

    # -- optimisation and checkpoints ---------------------------------------------------------------------------
    def configure_optimizers(self):
        plan = self.trainer.datamodule.batch_plan()  # selfsup.data.batches.BatchPlan: the run's batch facts
        online = [p for n, p in self.named_parameters() if not n.startswith(("probe.", "target_"))]
        probe = list(self.probe.parameters()) if self.probe is not None else []
        opt, sched = self.optim.build(online, probe, plan.global_batch, plan.total_steps, plan.steps_per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["selfsup"] = {"version": selfsup.__version__, **self.run_info}
