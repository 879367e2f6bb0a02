"""Instantiate a composed training config, top to bottom: Trainer → data and batch plan → parts → module."""

from __future__ import annotations

import functools
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup import checks
from selfsup.data.batches import BatchPlan, TrainerFacts
from selfsup.data.datasets import MaskDraw
from selfsup.models.backbones import check_input_sizes
from selfsup.models.tokens import is_vit, patch_size
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.autosave import LastCheckpoint
from selfsup.runtime.strategies import check_fork_start, check_sync_batchnorm
from selfsup.train import init_from
from selfsup.train.label_free import LabelFree
from selfsup.train.module import SSLModule

log = logging.getLogger(__name__)


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Run lengths Lightning would accept but that train nothing (``max_steps=0``) or that it fails on late."""
    for key in ("max_steps", "max_epochs"):
        value = trainer_cfg.get(key)
        if value is None and key == "max_epochs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value == 0 or value < -1:
            raise ValueError(
                f"trainer.{key}={value}: expected a positive integer (or -1: no limit; the other of "
                "trainer.max_steps/max_epochs ends the run)"
            )


def build(cfg: DictConfig, resumed: dict | None = None):
    """(datamodule, module, trainer) for a composed config — what ``run`` fits and what tests instantiate.

    Top to bottom, each object constructed with the facts it needs (docs/design.md, "how a run flows"): the Trainer
    (processes, accumulation, run length) → the data and its batch plan → the parts → the module, which loads its
    starting weights (``init_from``). Bad values fail here, before training starts; ``cfg`` is not modified.

    Args:
        cfg: the composed training config.
        resumed: ``checkpoint["selfsup"]`` of the checkpoint a resumed run continues from (its ``init_from`` record
            is kept and nothing is loaded); None for a new run.
    """
    check_trainer(cfg.trainer)
    trainer = build_trainer(cfg)
    views, objective, masking = views_and_objective(cfg)
    label_free = LabelFree.from_config(cfg.get("label_free"))
    datamodule = instantiate(cfg.data, _partial_=True)(
        views=views,
        seed=cfg.seed,
        trainer_facts=TrainerFacts.of(trainer, cfg.get("global_batch_size")),
        lidar=label_free.lidar,
        masks=MaskDraw(masking, cfg.backbone.patch_size) if masking is not None else None,
    )
    plan = datamodule.batch_plan()  # reads the training split: sizes that do not fit fail here
    module = build_module(
        cfg,
        views,
        objective,
        label_free,
        num_classes=datamodule.num_classes if cfg.online_probe else 0,
        num_samples=len(datamodule.splits[0]),
        global_batch=plan.global_batch,
        init_from=functools.partial(init_from.apply, cfg, resumed=resumed),
        masking=masking,
    )
    check_grad_cache(cfg, module, trainer, plan)
    if trainer.accumulate_grad_batches > 1:
        log.warning(
            "trainer.accumulate_grad_batches=%d: the loss sees micro-batches of %d rows, not the global batch "
            "of %d (fewer negatives); grad_cache_chunks=%d with data.batch_size=%d keeps the whole batch in "
            "the loss",
            trainer.accumulate_grad_batches,
            plan.per_device,
            plan.global_batch,
            trainer.accumulate_grad_batches,
            plan.per_device * trainer.accumulate_grad_batches,
        )
    return datamodule, module, trainer


def build_trainer(cfg: DictConfig):
    """The Lightning Trainer of a run, with its callbacks, loggers and atomic checkpoint writes."""
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(cfg.run_dir),
        callbacks=build_callbacks(cfg),
        logger=[instantiate(lg, save_dir=str(cfg.run_dir)) for lg in cfg.logger.values() if lg is not None],
        plugins=[ckpt_io.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # GlobalBatchSampler shards the global batch itself
    )
    check_sync_batchnorm(cfg.trainer.get("sync_batchnorm", False), trainer)
    check_fork_start(trainer)
    return trainer


def check_parts(cfg: DictConfig) -> None:
    """Build every part of a run but its data and Trainer — views, objective, backbone, heads, target, memory,
    optimiser, callbacks — so that a bad value fails now: what a sweep runs for every point before the first
    trains (:class:`selfsup.runtime.sweep.SweepCheck`)."""
    check_trainer(cfg.trainer)
    views, objective, masking = views_and_objective(cfg)
    build_module(cfg, views, objective, LabelFree.from_config(cfg.get("label_free")), masking=masking)
    build_callbacks(cfg)


def views_and_objective(cfg: DictConfig):
    """The view sampler, the mask part (None without one) and the objective, checked against each other (view
    count, local crops, what the mask covers)."""
    views = instantiate(cfg.views)
    masking = build_masking(cfg, views)  # before the objective: its config may read backbone.patch_size
    objective = instantiate(cfg.objective)
    if objective.num_views > len(views):
        raise ValueError(
            f"objective uses {objective.num_views} views but views has {len(views)} ({views.names}): pick a views "
            f"config with {objective.num_views} (e.g. views=care for objective=care)"
        )
    n_global = views.global_views or len(views)
    if n_global < len(views) and not objective.takes_local_views:
        raise ValueError(
            f"views: {len(views) - n_global} local crops ({views.names[n_global:]}) but objective "
            f"{type(objective).__name__} scores fixed views and cannot take them; use views with global views only"
        )
    return views, objective, masking


def build_masking(cfg: DictConfig, views):
    """The mask part (``mask=...``; None without one), checked against the views: it masks global views only,
    each of a size the patch size (``backbone.patch_size``) divides into a grid the mask can be drawn on."""
    if cfg.get("mask") is None:
        return None
    masking = instantiate(cfg.mask)
    patch = cfg.backbone.get("patch_size")
    if patch is None:
        raise ValueError(
            f"mask={cfg.mask._target_}: masked methods need a ViT backbone with backbone.patch_size set "
            f"(e.g. backbone=vit_tiny_cifar), not backbone.name={cfg.backbone.get('name')}"
        )
    n_global = views.global_views or len(views)
    if masking.views > n_global:
        raise ValueError(f"mask.views={masking.views}: the views have only {n_global} global views to mask")
    for name, view in list(zip(views.names, views.views))[: masking.views]:
        key = f"views.views.{name}.size={view.size}"
        if view.size % patch:
            raise ValueError(f"{key}: not a multiple of the ViT's patch size {patch} (backbone.patch_size)")
        masking.check_grid(view.size // patch, view.size // patch, key)
    return masking


def build_module(
    cfg: DictConfig,
    views,
    objective,
    label_free: LabelFree,
    num_classes: int = 0,
    num_samples: int | None = None,
    global_batch: int | None = None,
    init_from=None,
    masking=None,
) -> SSLModule:
    """The encoder, its heads, target and memory around ``objective``: the :class:`SSLModule` of the run."""
    backbone = instantiate(cfg.backbone)
    check_input_sizes(backbone, input_sizes(views))
    target = instantiate(cfg.target)
    tiled = tiled_views(cfg, views, masking, target)
    if masking is not None and is_vit(backbone) and patch_size(backbone) != cfg.backbone.patch_size:
        raise ValueError(
            f"backbone.patch_size={cfg.backbone.patch_size}: the built ViT has patches of {patch_size(backbone)}"
        )
    return SSLModule(
        backbone=backbone,
        projector=instantiate(cfg.projector),
        objective=objective,
        optim=instantiate(cfg.optim),
        num_classes=num_classes,
        predictor=instantiate(cfg.predictor) if cfg.predictor is not None else None,
        target=target,
        memory=instantiate(cfg.memory),
        symmetric=cfg.symmetric,
        global_views=views.global_views,
        batch_views=cfg.batch_views,
        config=OmegaConf.to_container(cfg, resolve=True),
        num_samples=num_samples,
        global_batch=global_batch,
        init_from=init_from,
        grad_cache_chunks=grad_cache_chunks(cfg),
        label_free=label_free,
        masking=masking,
        token_head=instantiate(cfg.token_head) if cfg.get("token_head") is not None else None,
        tiled_views=tiled,
    )


def input_sizes(views) -> dict[str, int]:
    """Config key → the side of the images the backbone sees from each view (a jigsaw view's: its tiles)."""
    return {
        f"views.views.{name}.jigsaw_tile" if v.jigsaw else f"views.views.{name}.size": v.jigsaw_tile or v.size
        for name, v in zip(views.names, views.views)
    }


def tiled_views(cfg: DictConfig, views, masking, target) -> dict[int, int]:
    """View index → g of the jigsaw views, which the module encodes tile by tile; refused with a mask part or, for
    a global view, a target network that encodes the views itself (both would see the shuffled view whole)."""
    tiled = {i: v.jigsaw for i, v in enumerate(views.views) if v.jigsaw}
    for i in tiled:
        key = f"views.views.{views.names[i]}.jigsaw={views.views[i].jigsaw}"
        if masking is not None:
            raise ValueError(f"{key} with mask={cfg.mask._target_}: a masked method cannot take a jigsaw view")
        if target.encodes_views and i < (views.global_views or len(views)):
            raise ValueError(
                f"{key} with target={cfg.target._target_}: the target network would encode the shuffled view whole"
            )
    return tiled


def build_callbacks(cfg: DictConfig) -> list:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if sum(isinstance(c, LastCheckpoint) for c in callbacks) != 1:
        raise ValueError(
            "callbacks.last: expected exactly one selfsup.runtime.autosave.LastCheckpoint (it writes "
            "checkpoints/last.ckpt, which resume and preemption need)"
        )
    return callbacks


def grad_cache_chunks(cfg: DictConfig) -> int | None:
    """``grad_cache_chunks``: None, or an integer >= 1 (1: off); what it may run with: :func:`check_grad_cache`."""
    chunks = checks.integer("grad_cache_chunks", cfg.get("grad_cache_chunks"), minimum=1, allow_none=True)
    return chunks if chunks is not None and chunks > 1 else None


def check_grad_cache(cfg: DictConfig, module: SSLModule, trainer, plan: BatchPlan) -> None:
    """Gradient caching (train/grad_cache.py) runs on one process, without gradient accumulation, Trainer gradient
    clipping or a memory part that keeps state (``Memory.keeps_state``), on batches that split into equal chunks."""
    chunks = module.grad_cache_chunks
    if not chunks:
        return
    refusals = (
        (trainer.accumulate_grad_batches > 1, f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"),
        (trainer.gradient_clip_val is not None, f"trainer.gradient_clip_val={trainer.gradient_clip_val}"),
        (module.memory.keeps_state, f"memory={cfg.memory._target_}"),
        (module.masking is not None, f"mask={cfg.get('mask', {}).get('_target_')}"),
        (bool(module.tiled_views), f"jigsaw views {sorted(module.tiled_views)}"),
        (trainer.world_size > 1, f"{trainer.world_size} processes"),
    )
    for refused, setting in refusals:
        if refused:
            raise ValueError(
                f"grad_cache_chunks={chunks} with {setting}: not supported (gradient caching runs on one "
                "process, without gradient accumulation, Trainer gradient clipping, a memory part or masks)"
            )
    if plan.per_device % chunks:
        raise ValueError(
            f"grad_cache_chunks={chunks}: the batch of {plan.per_device} rows (data.batch_size) must "
            "split into equal chunks"
        )
