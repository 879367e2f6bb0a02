"""Every use of a private Lightning, Hydra or timm API, in one place.

selfsup leans on a few internals of its frameworks that have no public equivalent. Each shim below names the
upstream code it touches and the version range it was checked on; ``tests/runtime/test_compat.py`` fails when
that code is gone or behaves otherwise, so an upgrade breaks one test here, not a run. The rest of selfsup imports
no private name of Lightning or Hydra and reads no private attribute of their objects.

Where a subclass must override a private hook (it can only do so in its own class body),
:data:`SUBCLASS_HOOKS` lists the hook and the module that overrides it, and the test checks the hook still exists.

Checked on: lightning 2.6.6, hydra-core 1.3.8, timm 1.0.31, torch 2.14.1 (``pip show lightning hydra-core timm
torch``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput

# -- Hydra ---------------------------------------------------------------------------------------------------------


# hydra-core 1.3.x (checked on 1.3.8): ``hydra.main`` runs its set-up and the app under
# ``hydra._internal.utils.run_and_report``, looked up as a module global at each call, which prints a composition
# error over several lines and exits with status 1. No public hook reports those errors otherwise.
@contextmanager
def hydra_error_report(report: Callable[[Callable[[], Any], Callable], Any]) -> Iterator[None]:
    """While inside, Hydra runs what ``hydra.main`` runs as ``report(func, original)`` (``original``: Hydra's own
    ``run_and_report``, for errors left to Hydra)."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    hydra_utils.run_and_report = lambda func: report(func, original)
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


# hydra-core 1.3.x (checked on 1.3.8): the basic sweeper's expansion of a command line's sweeps into jobs
# (``BasicSweeper.split_arguments``, a static method), which Hydra does not expose on its own.
def split_sweep(overrides: Sequence) -> list[list[str]]:
    """Each job's overrides (``key=value`` strings) of parsed ``overrides`` (``OverridesParser.parse_overrides``),
    as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(list(overrides), None)
    return [list(job) for batch in batches for job in batch]


# -- Lightning -----------------------------------------------------------------------------------------------------


# lightning 2.x (checked on 2.6.6): the global rank a launcher's environment gives this process (RANK, LOCAL_RANK,
# SLURM_PROCID, JSM_NAMESPACE_RANK), before any Trainer exists; None when none is set.
def env_rank() -> int | None:
    """This process's rank from the launcher's environment (None: not set), as Lightning reads it."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank()


# lightning 2.x (checked on 2.6.6): the trainer's cluster environment lives on its accelerator connector; the signal
# connector reads ``auto_requeue`` there when it registers SLURM's requeue handlers (strategies without
# ``cluster_environment`` — a single device — have it too).
def cluster_environment(trainer):
    """The trainer's cluster environment (``SLURMEnvironment``, ``LightningEnvironment``, ...)."""
    return trainer._accelerator_connector.cluster_environment


# lightning 2.x (checked on 2.6.6): FSDPStrategy keeps its ``state_dict_type`` argument ("full" or "sharded") only
# as ``_state_dict_type``.
def fsdp_state_dict_type(strategy) -> str:
    """``"full"`` or ``"sharded"``: what an ``FSDPStrategy`` saves."""
    return strategy._state_dict_type


# lightning 2.4+ (checked on 2.6.6): ModelParallelStrategy keeps its ``save_distributed_checkpoint`` argument only as
# ``_save_distributed_checkpoint``.
def saves_distributed_checkpoint(strategy) -> bool:
    """Whether a ``ModelParallelStrategy`` saves a directory of shards."""
    return bool(strategy._save_distributed_checkpoint)


# lightning 2.x (checked on 2.6.6): metrics are logged at the training epoch loop's ``_batches_that_stepped`` (saved in
# its state dict), which a restore from a checkpoint taken at an epoch's end leaves one ahead of ``global_step``.
def log_at_global_step(trainer) -> None:
    """Make the step metrics are logged at equal ``trainer.global_step`` (the optimiser step)."""
    loop = trainer.fit_loop.epoch_loop
    if loop._batches_that_stepped != trainer.global_step:
        loop._batches_that_stepped = trainer.global_step


# lightning 2.x (checked on 2.6.6): the spawn/fork launcher keeps its ``start_method`` argument only as
# ``_start_method``; a strategy's ``launcher`` is set when the Trainer is built.
def launcher_start_method(strategy) -> str | None:
    """``"spawn"``, ``"fork"`` or ``"forkserver"`` where the strategy starts its processes with multiprocessing, else
    None (one process, or processes started by the command or the cluster)."""
    launcher = strategy.launcher
    return launcher._start_method if isinstance(launcher, _MultiProcessingLauncher) else None


# lightning 2.x (checked on 2.6.6): a WandbLogger's run exists once ``_experiment`` is set; ``logger.experiment`` would
# start one.
def wandb_run_started(logger) -> bool:
    """Whether a ``WandbLogger`` has started its W&B run (without starting one)."""
    return logger._experiment is not None


# lightning 2.x (checked on 2.6.6): the spawn/fork launcher (``_MultiProcessingLauncher``) has rank 0 return a
# ``_WorkerOutput`` from ``_collect_rank_zero_results`` (after ``function`` ran in ``_wrapping_function``), which
# the main process loads the weights from. Under FSDP rank 0 alone holds a flat shard, so the full state dict is
# gathered by every rank first. (Lightning is imported when this module is: the CLIs import it anyway.)
class FullWeightsLauncher(_MultiProcessingLauncher):
    """A spawn/fork launcher (for FSDP) that hands the main process the full weights, not rank 0's flat FSDP shard;
    its workers leave without the interpreter's teardown. Built as ``FullWeightsLauncher(strategy, start_method=...)``
    (module level: ``spawn`` pickles it)."""

    def _collect_rank_zero_results(self, trainer, results):
        import tempfile

        import torch
        from lightning.pytorch.trainer.states import TrainerFn

        state_dict = self._strategy.lightning_module_state_dict()  # a collective: every rank takes part
        output = None
        if self._strategy.local_rank == 0:
            callback = trainer.checkpoint_callback
            best = getattr(callback, "best_model_path", None) if callback else None
            weights_path = None
            if trainer.state.fn == TrainerFn.FITTING:
                weights_path = os.path.join(tempfile.mkdtemp(), ".temp.ckpt")
                self._strategy.checkpoint_io.save_checkpoint(state_dict, weights_path)
            output = _WorkerOutput(best, weights_path, trainer.state, results, self.get_extra_results(trainer))
        # No rank leaves (tearing its gloo connections down under a peer still in a collective: "terminate called
        # without an active exception", SIGABRT) before all are done; then close the group before the process exits.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return output

    def _wrapping_function(self, *args, **kwargs) -> None:
        super()._wrapping_function(*args, **kwargs)  # rank 0 has put its results (a SimpleQueue: written now)
        # Every collective is done and the group closed, yet the interpreter's own teardown of FSDP's gloo state
        # still aborted now and then ("terminate called without an active exception"): nothing is left to do
        # here, so the worker leaves without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# Private hooks that selfsup's subclasses override or read in their own class bodies: (class, attribute) -> the
# module doing so. Checked on lightning 2.6.6; ``tests/runtime/test_compat.py`` checks each still exists.
SUBCLASS_HOOKS: dict[tuple[str, str], str] = {
    # FSDP on the CPU, and the spawn/fork launcher above
    ("lightning.pytorch.strategies.FSDPStrategy", "_configure_launcher"): "selfsup.runtime.strategies",
    ("lightning.pytorch.strategies.FSDPStrategy", "_setup_model"): "selfsup.runtime.strategies",
    ("lightning.pytorch.strategies.FSDPStrategy", "_launcher"): "selfsup.runtime.strategies",
    # DeepSpeed on CPU processes: its process-group set-up without the CUDA device check
    ("lightning.pytorch.strategies.DeepSpeedStrategy", "_init_deepspeed_distributed"): "selfsup.runtime.strategies",
    # metrics.csv kept on resume
    ("lightning.pytorch.loggers.csv_logs.ExperimentWriter", "_check_log_dir_exists"): "selfsup.runtime.loggers",
    ("lightning.pytorch.loggers.csv_logs.ExperimentWriter", "_fs"): "selfsup.runtime.loggers",
    ("lightning.pytorch.loggers.CSVLogger", "_experiment"): "selfsup.runtime.loggers",
    ("lightning.pytorch.loggers.CSVLogger", "_fs"): "selfsup.runtime.loggers",
}


# -- timm -----------------------------------------------------------------------------------------------------------
# timm 1.0.x (checked on 1.0.31): ``VisionTransformer._pos_embed`` adds the prefix tokens (class, registers) and the
# position embedding — resampled to the grid with ``dynamic_img_size`` — to patch embeddings, the step of
# ``forward_features`` between ``patch_embed`` and the blocks; masked methods (``selfsup.models.tokens.encode``) run
# the steps around it themselves (a mask token before it, kept patches after it).
def vit_pos_embed(vit, patches):
    return vit._pos_embed(patches)
