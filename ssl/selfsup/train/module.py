"""SSLModule: a method made of parts — none of them named here.

    views ─► backbone ─► projector ─► [predictor] ─► queries q          (online branch, every view)
    global views ─► target (none | stopgrad | ema) ─► keys k             (conf/target/)
    (q, k, features, parameters) ─► memory (none | key_queue | support_set | swav) ─► objective.forward_views
                                                                          (conf/memory/, conf/objective/)

Masked methods (docs/tokens.md) add three parts: a mask drawn with the views (conf/mask/), a head over tokens
(conf/token_head/: MAE's decoder, I-JEPA's predictor, data2vec's linear head, or the projector itself for iBOT)
and the target network's tokens; the objective declares which it reads (``Objective.masked``, ``predicts_tokens``,
``teacher_tokens``). MAE = random mask (drop) + decoder + mae; I-JEPA = multi-block mask + predictor + ema + ijepa;
data2vec = block mask (mask token) + linear head + ema + data2vec; DINOv2's iBOT + KoLeo = DINO + block mask +
token_head=projector + composite(dino, ibot, koleo).

A method is a recipe that picks the parts: SimCLR = projector + info_nce; SimSiam = projector + predictor +
stopgrad + negative_cosine; BYOL = ... + ema; MoCo v2 = projector + ema + key_queue + info_nce (queue negatives);
NNCLR = projector + predictor + support_set + info_nce; DINO = DINO head + ema + multi-crop + dino; SwAV = projector
+ swav memory + multi-crop + swav; PIRL = a jigsaw view (encoded tile by tile) + sample_bank memory + pirl.
Everything else — optimiser groups, schedules, the online probe, validation, checkpoint metadata — lives here once.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import nn

import selfsup
from selfsup import distributed
from selfsup.data.views import jigsaw_tiles
from selfsup.metrics import alpha_req, knn_top1, lidar, rankme
from selfsup.models.token_heads import ProjectorOnTokens
from selfsup.models.tokens import Tokens, encode, is_vit
from selfsup.objectives import Objective, RunFacts, ViewBatch
from selfsup.train.grad_cache import grad_cache_backward
from selfsup.train.label_free import LabelFree
from selfsup.train.memory import Memory
from selfsup.train.optim import OptimizerSpec
from selfsup.train.target import Target


def _out_dim(head: nn.Module, in_dim: int) -> int:
    was_training = head.training
    with torch.no_grad():
        out = head.eval()(torch.zeros(2, in_dim)).shape[1]
    head.train(was_training)
    return out


class SSLModule(L.LightningModule):
    """Self-supervised training of ``backbone`` by the parts of a method (module docstring).

    Args:
        backbone: encoder with ``num_features`` (selfsup.models.build_backbone).
        projector: builder ``in_dim -> nn.Module`` (a Hydra partial of selfsup.models.mlp or dino_head).
        objective: a selfsup.objectives.Objective.
        optim: optimiser, LR scaling and schedule.
        num_classes: classes of the online linear probe on detached backbone features (0: no probe).
        predictor: builder ``in_dim -> nn.Module`` applied to online projections (BYOL, SimSiam, MoCo v3, NNCLR).
        target: the key branch (selfsup.train.target; default: none).
        memory: state kept between steps (selfsup.train.memory; default: none).
        symmetric: score both view orders where queries and keys come from different branches.
        global_views: how many leading views are global (keys and teachers see only those; default: all).
        batch_views: one backbone call per resolution for views of equal size (multi-crop), instead of one per view.
        config: the resolved training config, stored in every checkpoint (``checkpoint["selfsup"]["config"]``).
        num_samples: images in the training split (for parts that need it: DIET's head); None: not known.
        global_batch: rows per optimiser step over all processes, checked against the memory part's sizes and
            stored in every checkpoint (what a resume must keep); None: not known.
        init_from: called with the built module to load its starting weights (``train/init_from.py``); returns the
            record of where they came from, stored in every checkpoint (``checkpoint["selfsup"]["init_from"]``).
        grad_cache_chunks: compute each batch in this many chunks with gradient caching (``train/grad_cache.py``):
            the loss and gradient of the whole batch with the activation memory of one chunk (None: off).
        label_free: settings of the label-free scores logged at validation (``label_free`` in conf/train.yaml;
            default: its values there).
        masking: the mask part the data draws masks with (``selfsup.data.masks``; masked methods): its ``apply``
            says how the encoder hides masked patches; None: no masks.
        token_head: builder ``in_dim -> nn.Module`` of the head over tokens (``conf/token_head/``); a
            :class:`~selfsup.models.token_heads.ProjectorOnTokens` means the projector on the masked patch tokens
            (iBOT's head shared with DINO's); None: no head.
        tiled_views: view index → g for the jigsaw views (``views.jigsaw``): each of their g² tiles goes through
            the backbone alone; the tiles' features reach the objective as ``ViewBatch.tiles`` and their mean as
            the view's features. None: no jigsaw view.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: Callable[[int], nn.Module],
        objective: Objective,
        optim: OptimizerSpec,
        num_classes: int = 0,
        predictor: Callable[[int], nn.Module] | None = None,
        target: Target | None = None,
        memory: Memory | None = None,
        symmetric: bool = True,
        global_views: int | None = None,
        batch_views: bool = False,
        config: dict | None = None,
        num_samples: int | None = None,
        global_batch: int | None = None,
        init_from: Callable[[nn.Module], dict | None] | None = None,
        grad_cache_chunks: int | None = None,
        label_free: LabelFree | None = None,
        masking=None,
        token_head: Callable[[int], nn.Module] | None = None,
        tiled_views: dict[int, int] | None = None,
    ):
        super().__init__()
        self.tiled_views = dict(tiled_views or {})
        self.backbone = backbone
        self.projector = projector(in_dim=backbone.num_features)
        self.embedding_dim = proj_dim = _out_dim(self.projector, backbone.num_features)  # D of the projections
        self.predictor = predictor(in_dim=proj_dim) if predictor is not None else None
        self.objective = objective
        self.target = target if target is not None else Target()
        self.target.attach(self.backbone, self.projector)
        facts = RunFacts(proj_dim, backbone.num_features, num_samples, global_batch)
        self.memory = memory if memory is not None else Memory()
        self.memory.attach(facts)
        self.optim, self.symmetric, self.global_views, self.batch_views = optim, symmetric, global_views, batch_views
        self.probe = nn.Linear(backbone.num_features, num_classes) if num_classes > 0 else None
        self.masking = masking
        self._attach_token_parts(objective, token_head)
        self.objective.attach(facts)  # after every other part: DIET's head is drawn last
        self.label_free = label_free if label_free is not None else LabelFree.from_config()
        self._val_outputs: dict[int, list] = {}
        self.grad_cache_chunks = grad_cache_chunks
        self.automatic_optimization = not grad_cache_chunks  # gradient caching runs its own backward passes
        record = init_from(self) if init_from is not None else None
        run_info = {"config": config, "global_batch": global_batch, "init_from": record}
        self.run_info = {k: v for k, v in run_info.items() if v is not None}  # checkpoint["selfsup"]: what is known

    def _attach_token_parts(self, objective: Objective, token_head) -> None:
        """The mask token and the head over tokens, checked against what the objective reads (one line each)."""
        name = type(objective).__name__
        if objective.masked and self.masking is None:
            raise ValueError(f"objective {name} is a masked method: set a mask part (e.g. mask=random)")
        if (self.masking is not None or token_head is not None) and not is_vit(self.backbone):
            part = f"mask={type(self.masking).__name__}" if self.masking is not None else "token_head"
            raise ValueError(
                f"{part}: masked methods need a timm vision transformer backbone (e.g. backbone=vit_tiny_cifar), "
                f"not {type(self.backbone).__name__}"
            )
        if objective.predicts_tokens and token_head is None:
            raise ValueError(f"objective {name} reads token predictions: set a token_head (e.g. token_head=mae)")
        if objective.teacher_tokens is not None and type(self.target).token_keys is Target.token_keys:
            raise ValueError(f"objective {name} reads the target network's tokens: it needs target=ema")
        self.mask_token = None
        if self.masking is not None and self.masking.apply == "token":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))  # DINOv2's init: zeros
        head = token_head(in_dim=self.backbone.embed_dim) if token_head is not None else None
        self.head_is_projector = isinstance(head, ProjectorOnTokens)
        self.token_head = None if self.head_is_projector else head

    # -- training -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, F) — what evaluation and export use."""
        return self.backbone(x)

    def _features(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list]:
        """Backbone features of every view V x (B, F), and the tile features of the jigsaw views (B, g², F) (None
        for the others; [] without jigsaw views), whose features are the mean over their tiles."""
        if not self.tiled_views:
            return self._pooled_features(views), []
        plain = iter(self._pooled_features([x for v, x in enumerate(views) if v not in self.tiled_views]))
        feats, tiles = [], []
        for v, x in enumerate(views):
            grid = self.tiled_views.get(v)
            tiles.append(None if grid is None else self.backbone(jigsaw_tiles(x, grid)).unflatten(0, (x.shape[0], -1)))
            feats.append(next(plain) if grid is None else tiles[-1].mean(dim=1))
        return feats, tiles

    def _pooled_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features of every view: one call per view, or per run of equal-sized views (``batch_views``)."""
        if not self.batch_views:
            return [self.backbone(v) for v in views]
        feats, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            feats.extend(self.backbone(torch.cat(views[start:end])).chunk(end - start))
            start = end
        return feats

    def online(self, views: list[torch.Tensor]) -> tuple[list, list, list, list]:
        """The online branch on every view: backbone features V x (B, F), projections V x (B, D), queries (the
        predictor's outputs, or the projections themselves — the same tensors — without a predictor) and the
        jigsaw views' tile features (:meth:`_features`)."""
        feats, tiles = self._features(views)
        z = [self.projector(f) for f in feats]
        q = [self.predictor(zi) for zi in z] if self.predictor is not None else z
        return feats, z, q, tiles

    def step_outputs(self, batch: dict) -> ViewBatch:
        """The parts applied to a training batch: what the objective's ``forward_views`` receives."""
        views, params = batch["views"], batch["params"]
        n_global = self.global_views or len(views)
        if batch.get("masks"):
            return self._masked_step_outputs(batch, n_global)
        feats, z, q, tiles = self.online(views)
        k = self.target.keys(views[:n_global], z[:n_global])  # G x (B, D)
        out = ViewBatch(z, q, k, feats, params, n_global, self.symmetric, index=batch.get("index"), tiles=tiles)
        return self.memory.prepare(out, self.current_epoch)

    def _encode_masked(self, x: torch.Tensor, masks: dict) -> Tokens:
        """One masked view through the online encoder: kept patches only (``apply="drop"``: the context of
        I-JEPA's masks, else the unmasked patches) or masked patches replaced by the mask token."""
        if self.masking.apply == "drop":
            keep = masks["context"] if "context" in masks else ~masks["mask"]
            return encode(self.backbone, x, keep=keep)
        return encode(self.backbone, x, replace=masks["mask"], mask_token=self.mask_token)

    def _masked_step_outputs(self, batch: dict, n_global: int) -> ViewBatch:
        """The step of a masked method: the leading views encoded at token level with their masks, the rest as
        usual; the token head on each masked view; the target network's tokens of the unmasked global views."""
        views, masks = batch["views"], batch["masks"]
        tokens = [self._encode_masked(x, m) for x, m in zip(views, masks)]
        feats = [t.pooled for t in tokens] + self._pooled_features(views[len(masks) :])
        z = [self.projector(f) for f in feats]
        q = [self.predictor(zi) for zi in z] if self.predictor is not None else z
        k, teacher = self.target.token_keys(views[:n_global], z[:n_global], self.objective.teacher_blocks)
        patch = self.backbone.patch_embed.patch_size
        predictions = []
        for v, (x, m, t) in enumerate(zip(views, masks, tokens)):
            grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
            if self.head_is_projector:  # iBOT: the (shared) heads on the masked patches only, as DINOv2
                predictions.append(self.projector(t.patches[m["mask"]]))
                if self.objective.teacher_tokens == "projected":
                    teacher[v].projected = self.target.project_tokens(teacher[v].patches[m["mask"]])
            elif self.token_head is not None:
                predictions.append(self.token_head(t, m, grid))
        out = ViewBatch(
            z,
            q,
            k,
            feats,
            batch["params"],
            n_global,
            self.symmetric,
            index=batch.get("index"),
            masks=list(masks),
            tokens=tokens,
            predictions=predictions,
            teacher=teacher,
            pixels=list(views[: len(masks)]),
        )
        return self.memory.prepare(out, self.current_epoch)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if self.grad_cache_chunks:
            return self._grad_cache_step(batch)
        out = self.step_outputs(batch)
        loss = self.objective.forward_views(out)
        self.memory.update(out, self.current_epoch)
        self._log_step(loss)
        if self.probe is not None:
            loss = loss + self._probe_step(out.feats[0].detach(), batch["label"])
        return {"loss": loss, "z": out.z[0].detach()}  # z: for callbacks (runtime/guards.py CollapseMonitor)

    def _log_step(self, loss: torch.Tensor) -> None:
        for name, value in self.objective.terms().items():
            self.log(f"train/{name}", value, sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])

    def _grad_cache_step(self, batch: dict) -> dict:
        """One optimiser step on the whole batch computed in ``grad_cache_chunks`` chunks (manual optimisation)."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad(set_to_none=True)

        def backward(loss: torch.Tensor, whole: ViewBatch) -> None:
            if self.probe is not None:
                loss = loss + self._probe_step(whole.feats[0].detach(), batch["label"])
            self.manual_backward(loss)

        loss, whole = grad_cache_backward(self, batch, self.grad_cache_chunks, backward)
        self._log_step(loss)
        opt.step()
        sched.step()
        self._step_target(self.global_step)  # manual optimisation: the step is counted once opt.step() returns
        return {"loss": loss, "z": whole.z[0].detach()}

    def _probe_step(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not known.any():
            return feats.new_zeros(())
        logits = self.probe(feats[known])
        probe_loss = F.cross_entropy(logits, labels[known])
        self.log("train/probe_loss", probe_loss, sync_dist=True)
        self.log("train/probe_top1", (logits.argmax(1) == labels[known]).float().mean(), sync_dist=True)
        return probe_loss

    def online_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains besides the online probe: the target network follows them, it is not trained."""
        return [p for n, p in self.named_parameters() if not n.startswith(("probe.", "target."))]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` clips the online parameters only: the online probe's gradients never change
        how far the encoder moves, with or without ``online_probe``. Under FSDP and DeepSpeed, which shard the
        gradients and clip them themselves, Lightning's own clipping applies."""
        if self.probe is None or isinstance(self.trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if not gradient_clip_val:
            return None
        online = [p for p in self.online_parameters() if p.grad is not None]
        if gradient_clip_algorithm == "value":
            return torch.nn.utils.clip_grad_value_(online, gradient_clip_val)
        torch.nn.utils.clip_grad_norm_(online, gradient_clip_val)
        return None

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # The target follows the online weights right after they change: before on_train_batch_end, where callbacks
        # save checkpoints (a checkpoint must hold the target of the same step), and once per optimiser step under
        # gradient accumulation. Lightning counts this step after the hook returns: + 1.
        self._step_target(self.global_step + 1)

    def _step_target(self, step: int) -> None:
        tau = self.target.step(self.backbone, self.projector, step, self.trainer.datamodule.batch_plan().total_steps)
        if tau is not None:
            self.log("train/momentum", tau)

    # -- validation: kNN top-1 of held-out images against the training bank; label-free scores ------------------
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, index = batch
        f = self.backbone(x)
        self._val_outputs.setdefault(dataloader_idx, []).append((f, self.projector(f), y, index))

    def _gathered(self, dataloader_idx: int):
        """(features, embeddings, labels, indices) of one validation loader over all ranks, in index order."""
        f, z, y, index = (torch.cat(t) for t in zip(*self._val_outputs[dataloader_idx]))
        f, z, y, index = (distributed.gather(t) for t in (f, z, y, index))  # (N over ranks, ...) in rank order
        order = torch.argsort(index, stable=True)
        f, z, y, index = f[order], z[order], y[order], index[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # drop the padding duplicates of sharded evaluation
        return f[first], z[first], y[first], index[first]

    def on_validation_epoch_end(self) -> None:
        """kNN top-1 (bank: loader 0, queries: loader 1), RankMe and α-ReQ of the queries' embeddings and backbone
        features, and LiDAR of loader 2's augmented views (``SSLDataModule.lidar``) when it ran in full."""
        if not {0, 1} <= set(self._val_outputs):
            self._val_outputs.clear()
            return
        bank_f, _, bank_y, _ = self._gathered(0)
        query_f, query_z, query_y, _ = self._gathered(1)
        views = self._gathered(2) if 2 in self._val_outputs else None
        self._val_outputs.clear()
        metrics = {"val/rankme": rankme(query_z).item(), "val/rankme_backbone": rankme(query_f).item()}
        if query_z.shape[0] >= 2:
            for suffix, x in (("", query_z), ("_backbone", query_f)):
                fit = alpha_req(x, self.label_free.alpha_fit_range)
                metrics[f"val/alpha_req{suffix}"], metrics[f"val/alpha_req_r2{suffix}"] = fit["alpha"], fit["r2"]
        if views is not None:
            metrics.update(self._lidar(*views))
        if (bank_y >= 0).all() and (query_y >= 0).all():
            metrics["val/knn_top1"] = knn_top1(bank_f, bank_y, query_f, query_y)
            if self.probe is not None:
                metrics["val/probe_top1"] = (self.probe(query_f).argmax(1) == query_y).float().mean().item()
        self.log_dict(metrics, prog_bar=True, sync_dist=True)  # equal on every rank (gathered): the mean is a no-op

    def _lidar(self, f: torch.Tensor, z: torch.Tensor, _labels, index: torch.Tensor) -> dict:
        """val/lidar (embeddings) and val/lidar_backbone of the (n·q) views, image-major; {} for an incomplete set
        (``trainer.limit_val_batches``)."""
        views = self.trainer.datamodule.lidar_dataset()
        n, q = len(views.rows), views.q
        if n < 2 or not torch.equal(index.cpu(), torch.arange(n * q)):
            return {}
        delta = self.label_free.lidar_delta
        return {
            "val/lidar": lidar(z.reshape(n, q, -1), delta).item(),
            "val/lidar_backbone": lidar(f.reshape(n, q, -1), delta).item(),
        }

    # -- optimisation and checkpoints ---------------------------------------------------------------------------
    def configure_optimizers(self):
        plan = self.trainer.datamodule.batch_plan()  # selfsup.data.batches.BatchPlan: the run's batch facts
        online = self.online_parameters()
        probe = list(self.probe.parameters()) if self.probe is not None else []
        opt, sched = self.optim.build(online, probe, plan.global_batch, plan.total_steps, plan.steps_per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["selfsup"] = {"version": selfsup.__version__, **self.run_info}
