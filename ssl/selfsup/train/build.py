"""Instantiate a composed training config: datamodule, module, trainer — and the run's batch facts, once."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from selfsup.data.batches import BatchPlan
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.autosave import LastCheckpoint
from selfsup.runtime.strategies import check_sync_batchnorm
from selfsup.train.memory import Memory
from selfsup.train.module import SSLModule

log = logging.getLogger("selfsup.train")


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Run lengths Lightning would accept but that train nothing (``max_steps=0``) or that it fails on late."""
    for key, minimum in (("max_steps", -1), ("max_epochs", -1)):
        value = trainer_cfg.get(key)
        if value is None and key == "max_epochs":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value == 0 or value < minimum:
            raise ValueError(
                f"trainer.{key}={value}: expected a positive integer (or -1: no limit; the other of "
                "trainer.max_steps/max_epochs ends the run)"
            )


def build(cfg: DictConfig):
    """(datamodule, module, trainer) for a composed config — what ``run`` fits and what tests instantiate.

    ``cfg`` is not modified: the batch facts (``global_batch_size`` split over the processes, steps per epoch and
    per run) go to ``datamodule.plan``. Bad values fail before the Trainer starts printing.
    """
    check_trainer(cfg.trainer)
    views, objective = views_and_objective(cfg)
    datamodule = instantiate(cfg.data, views=views, seed=cfg.seed)  # checks its values, loads the splits
    settings, datamodule.lidar = label_free(cfg)
    module = build_module(cfg, views, objective, datamodule.num_classes if cfg.online_probe else 0, settings)
    callbacks = build_callbacks(cfg)
    trainer = instantiate(
        cfg.trainer,
        default_root_dir=str(cfg.run_dir),
        callbacks=callbacks,
        logger=[instantiate(lg, save_dir=str(cfg.run_dir)) for lg in cfg.logger.values() if lg is not None],
        plugins=[ckpt_io.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # GlobalBatchSampler shards the global batch itself
    )
    check_sync_batchnorm(cfg.trainer.get("sync_batchnorm", False), trainer)
    datamodule.plan = BatchPlan.derive(  # the one place the batch facts are derived
        batch_size=cfg.data.batch_size,
        global_batch_size=cfg.get("global_batch_size"),
        num_samples=len(datamodule.splits[0]),
        world_size=trainer.world_size,
        accumulate=trainer.accumulate_grad_batches,
        limit_train_batches=trainer.limit_train_batches,
        max_steps=trainer.max_steps,
        max_epochs=trainer.max_epochs,
        shared_chunks=views.shared_chunks,
    )
    module.memory.check(datamodule.plan.global_batch)
    if hasattr(objective, "attach"):  # a head over the training samples (DIET): N and the embedding width
        objective.attach(num_samples=len(datamodule.splits[0]), in_dim=module.embedding_dim)
    check_grad_cache(cfg, module, trainer, datamodule.plan)
    if trainer.accumulate_grad_batches > 1:
        log.warning(
            "trainer.accumulate_grad_batches=%d: the loss sees micro-batches of %d rows, not the global batch "
            "of %d (fewer negatives); grad_cache_chunks=%d with data.batch_size=%d keeps the whole batch in "
            "the loss",
            trainer.accumulate_grad_batches,
            datamodule.plan.per_device,
            datamodule.plan.global_batch,
            trainer.accumulate_grad_batches,
            datamodule.plan.per_device * trainer.accumulate_grad_batches,
        )
    module.run_info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "global_batch": datamodule.plan.global_batch,
    }
    return datamodule, module, trainer


def check_parts(cfg: DictConfig) -> None:
    """Build every part of a run but its data and Trainer — views, objective, backbone, heads, target, memory,
    optimiser, callbacks — so that a bad value fails now: what a sweep runs for every point before the first
    trains (:class:`selfsup.runtime.sweep.SweepCheck`)."""
    check_trainer(cfg.trainer)
    views, objective = views_and_objective(cfg)
    build_module(cfg, views, objective, num_classes=0, label_free_settings=label_free(cfg)[0])
    build_callbacks(cfg)


def views_and_objective(cfg: DictConfig):
    """The view sampler and the objective, checked against each other (view count, local crops)."""
    views, objective = instantiate(cfg.views), instantiate(cfg.objective)
    needed = getattr(objective, "num_views", 2)
    if needed > len(views):
        raise ValueError(
            f"objective uses {needed} views but views has {len(views)} ({views.names}): pick a views "
            f"config with {needed} (e.g. views=care for objective=care)"
        )
    check_local_views(views, objective)
    return views, objective


def build_module(cfg: DictConfig, views, objective, num_classes: int, label_free_settings: dict) -> SSLModule:
    """The encoder, its heads, target and memory around ``objective``: the :class:`SSLModule` of the run."""
    backbone = instantiate(cfg.backbone)
    check_patch_size(backbone, views)
    return SSLModule(
        backbone=backbone,
        projector=instantiate(cfg.projector),
        objective=objective,
        optim=instantiate(cfg.optim),
        num_classes=num_classes,
        predictor=instantiate(cfg.predictor) if cfg.predictor is not None else None,
        target=instantiate(cfg.target),
        memory=instantiate(cfg.memory),
        symmetric=cfg.symmetric,
        global_views=views.global_views,
        batch_views=cfg.batch_views,
        grad_cache_chunks=grad_cache_chunks(cfg),
        label_free=label_free_settings,
    )


def build_callbacks(cfg: DictConfig) -> list:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if sum(isinstance(c, LastCheckpoint) for c in callbacks) != 1:
        raise ValueError(
            "callbacks.last: expected exactly one selfsup.runtime.autosave.LastCheckpoint (it writes "
            "checkpoints/last.ckpt, which resume and preemption need)"
        )
    return callbacks


def label_free(cfg: DictConfig) -> tuple[dict, tuple[int, int] | None]:
    """The ``label_free`` settings checked: (SSLModule's settings, (images, views) of val/lidar or None: off).
    A run saved before the key existed gets the defaults."""
    lf = {
        "alpha_fit_range": [6, 100],
        "lidar_images": 500,
        "lidar_views": 8,
        "lidar_delta": 1e-4,
        **OmegaConf.to_container(cfg.get("label_free") or OmegaConf.create({}), resolve=True),
    }
    fit = lf["alpha_fit_range"]
    if not (
        isinstance(fit, list | tuple)
        and len(fit) == 2
        and all(isinstance(v, int) for v in fit)
        and 1 <= fit[0] < fit[1]
    ):
        raise ValueError(f"label_free.alpha_fit_range={fit}: expected [first, last] 1-based ranks, 1 <= first < last")
    images, views = lf["lidar_images"], lf["lidar_views"]
    for key, value, minimum in (("lidar_images", images, 0), ("lidar_views", views, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"label_free.{key}={value}: expected an integer >= {minimum}")
    if not (isinstance(lf["lidar_delta"], int | float) and lf["lidar_delta"] > 0):
        raise ValueError(f"label_free.lidar_delta={lf['lidar_delta']}: expected a value > 0")
    return {"alpha_fit_range": tuple(fit), "lidar_delta": float(lf["lidar_delta"])}, (
        (images, views) if images >= 2 else None
    )


def grad_cache_chunks(cfg: DictConfig) -> int | None:
    """``grad_cache_chunks``: None, or an integer >= 1 (1: off); what it may run with: :func:`check_grad_cache`."""
    chunks = cfg.get("grad_cache_chunks")
    if chunks is None:
        return None
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"grad_cache_chunks={chunks!r}: expected null or an integer >= 1")
    return chunks if chunks > 1 else None


def check_grad_cache(cfg: DictConfig, module: SSLModule, trainer, plan: BatchPlan) -> None:
    """Gradient caching (train/grad_cache.py) runs on one process, without gradient accumulation, Trainer gradient
    clipping or a memory part, on batches that split into equal chunks."""
    chunks = module.grad_cache_chunks
    if not chunks:
        return
    refusals = (
        (trainer.accumulate_grad_batches > 1, f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"),
        (trainer.gradient_clip_val is not None, f"trainer.gradient_clip_val={trainer.gradient_clip_val}"),
        (type(module.memory) is not Memory, f"memory={cfg.memory._target_}"),
        (trainer.world_size > 1, f"{trainer.world_size} processes"),
    )
    for refused, setting in refusals:
        if refused:
            raise ValueError(
                f"grad_cache_chunks={chunks} with {setting}: not supported (gradient caching runs on one "
                "process, without gradient accumulation, Trainer gradient clipping or a memory part)"
            )
    if plan.per_device % chunks:
        raise ValueError(
            f"grad_cache_chunks={chunks}: the batch of {plan.per_device} rows (data.batch_size) must "
            "split into equal chunks"
        )


def check_local_views(views, objective) -> None:
    """Local crops (views past ``views.global_views``) only for objectives that score pairs of any views."""
    n_global = views.global_views or len(views)
    if n_global < len(views) and not getattr(objective, "takes_local_views", True):
        raise ValueError(
            f"views: {len(views) - n_global} local crops ({views.names[n_global:]}) but objective "
            f"{type(objective).__name__} scores fixed views and cannot take them; use views with global views only"
        )


def check_patch_size(backbone, views) -> None:
    """A vision transformer's patch size divides every view's size (and a fixed-size ViT gets its own size)."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "patch_size"):
        return
    patch = int(patch_embed.patch_size[0])
    dynamic = bool(getattr(backbone, "dynamic_img_size", False))
    fixed = getattr(patch_embed, "img_size", None)
    for name, view in zip(views.names, views.views):
        if view.size % patch:
            raise ValueError(
                f"views.views.{name}.size={view.size}: not a multiple of the ViT's patch size {patch} "
                "(backbone.patch_size)"
            )
        if not dynamic and fixed is not None and view.size != int(fixed[0]):
            raise ValueError(
                f"views.views.{name}.size={view.size}: the ViT is built for {int(fixed[0])} px; set "
                "backbone.dynamic_img_size=true (multi-crop) or backbone.img_size"
            )
