"""Lightning strategies the configs in ``conf/trainer/`` name, and checks on strategy x accelerator choices.

- ``FSDPStrategy``: Lightning's FSDP (``torch.distributed.fsdp.FullyShardedDataParallel``) that also runs on the
  CPU (gloo): Lightning refuses ``strategy="fsdp"`` with ``accelerator="cpu"`` and wraps with ``device_id=None``;
  here the wrap gets ``device_id=cpu``. ``start_method="fork"``/``"spawn"`` starts the processes with
  multiprocessing instead of re-running the command (what ``ddp_fork``/``ddp_spawn`` do for DDP) — for tests and
  notebooks.
- ``DeepSpeedStrategy``: Lightning's, with ``allow_cpu=true`` lifting its CUDA-only check (ZeRO runs on gloo with
  DeepSpeed's CPU accelerator; for tests). ``pip install selfsup[deepspeed]``.
- ``check_sync_batchnorm``: torch's SyncBatchNorm refuses CPU tensors, so ``trainer.sync_batchnorm=true`` on the
  CPU with several processes is refused before training (we do not fall back silently).
- ``check_fork_start``: processes forked from one that already holds a ``torch.distributed`` process group would
  inherit it without its threads and wait in their first collective forever; refused before training.
"""

from __future__ import annotations

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy as _DeepSpeedStrategy
from lightning.pytorch.strategies import FSDPStrategy as _FSDPStrategy

from selfsup import checks, distributed
from selfsup.runtime import compat

START_METHODS = ("popen", "spawn", "fork")


class FSDPStrategy(_FSDPStrategy):
    """Lightning's ``FSDPStrategy`` on CUDA or CPU. (The private hooks it overrides are listed, and checked, in
    :mod:`selfsup.runtime.compat`.)

    Args:
        sharding_strategy: FULL_SHARD (ZeRO-3), SHARD_GRAD_OP (ZeRO-2), NO_SHARD, HYBRID_SHARD.
        state_dict_type: "full" writes one ordinary checkpoint (what ``resume``/``selfsup-eval`` read);
            "sharded" a directory of shards.
        start_method: "popen" re-runs the command per local rank (Lightning's default; srun under SLURM);
            "spawn"/"fork" start them with multiprocessing.
        auto_wrap_min_params: wrap every submodule with at least this many parameters in its own FSDP unit
            (0: one unit for the whole model).
    """

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "full",
        start_method: str = "popen",
        auto_wrap_min_params: int = 0,
    ):
        checks.one_of("trainer.strategy.start_method", start_method, START_METHODS)
        checks.integer("trainer.strategy.auto_wrap_min_params", auto_wrap_min_params, minimum=0)
        policy = None
        if auto_wrap_min_params > 0:
            import functools

            from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

            policy = functools.partial(size_based_auto_wrap_policy, min_num_params=auto_wrap_min_params)
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, auto_wrap_policy=policy)
        self.start_method = start_method

    def _configure_launcher(self) -> None:
        if self.start_method == "popen" or self.cluster_environment.creates_processes_externally:
            return super()._configure_launcher()
        self._launcher = compat.FullWeightsLauncher(self, start_method=self.start_method)

    def _setup_model(self, model):
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


class DeepSpeedStrategy(_DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` (ZeRO stage 1-3). ``allow_cpu=true`` runs it on CPU processes (tests).
    (The private hook it calls is listed, and checked, in :mod:`selfsup.runtime.compat`.)

    Args:
        stage: ZeRO stage (2: optimiser state and gradients sharded, 3: parameters too).
        offload_optimizer: ZeRO-Offload of the optimiser state to host memory.
        allow_cpu: lift Lightning's "only supported on CUDA GPUs" check.
    """

    def __init__(self, stage: int = 2, offload_optimizer: bool = False, allow_cpu: bool = False):
        checks.integer("trainer.strategy.stage", stage, minimum=1, maximum=3)  # ZeRO stage
        super().__init__(stage=stage, offload_optimizer=offload_optimizer)
        self.allow_cpu = allow_cpu

    def _on_cpu(self) -> bool:
        return self.allow_cpu and isinstance(self.accelerator, CPUAccelerator)

    @property
    def root_device(self) -> torch.device:
        device = super().root_device
        # DeepSpeed's engine reads the device index (None on "cpu"); its CPU accelerator ignores the value
        return torch.device("cpu", 0) if device.type == "cpu" and self.allow_cpu else device

    def setup_environment(self) -> None:
        if self._on_cpu():  # skip the CUDA-only check, keep DDP's process-group set-up
            return super(_DeepSpeedStrategy, self).setup_environment()
        super().setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()  # as Lightning's, without the CUDA device-index check
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def check_sync_batchnorm(sync_batchnorm: bool, trainer) -> None:
    """Refuse ``sync_batchnorm=true`` where torch cannot synchronise (CPU processes)."""
    if sync_batchnorm and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        raise ValueError(
            f"trainer.sync_batchnorm=true with accelerator=cpu and {trainer.world_size} processes: torch's "
            "SyncBatchNorm runs on CUDA only; set trainer.sync_batchnorm=false (BatchNorm statistics then stay per "
            "process, so results differ from one process) or use a BatchNorm-free model (+backbone.norm=none "
            "projector.batch_norm=false)"
        )


def check_fork_start(trainer) -> None:
    """Refuse to fork the training processes (``trainer=ddp_cpu``, ``fsdp_cpu``) from a process that already holds
    a ``torch.distributed`` process group: Lightning would reuse the copy, whose gloo threads died in the fork."""
    if compat.launcher_start_method(trainer.strategy) == "fork" and distributed.is_initialized():
        raise ValueError(
            f"trainer.strategy forks {trainer.world_size} processes from this one, which already holds a "
            f"torch.distributed process group (world size {distributed.world_size()}): they would wait in "
            "its first collective forever; call torch.distributed.destroy_process_group() first, or start them with "
            "trainer.strategy=ddp_spawn"
        )
