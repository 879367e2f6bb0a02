"""The batch facts of a run — rows per process, rows per optimiser step, batches and steps per epoch, steps in the
run, where in its data a step falls — derived in one place (:meth:`BatchPlan.derive`) and read by the sampler, the
loader, the LR and momentum schedules and the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from selfsup import checks


def batches_per_epoch(batches: int, limit: int | float | None) -> int:
    """Training batches an epoch runs under Lightning's ``trainer.limit_train_batches`` (a fraction or a count)."""
    if limit is None:
        return batches
    return int(batches * limit) if isinstance(limit, float) else min(batches, int(limit))


@dataclass(frozen=True)
class TrainerFacts:
    """What the Trainer and the run config decide about batches, before any data is read: the processes, the
    accumulation, the run length and ``global_batch_size``. With a dataset's size and ``data.batch_size`` they give
    the :class:`BatchPlan` (:meth:`BatchPlan.derive`)."""

    world_size: int = 1
    accumulate: int = 1
    limit_train_batches: int | float | None = None
    max_steps: int = -1
    max_epochs: int | None = 1
    global_batch_size: int | None = None

    @classmethod
    def of(cls, trainer, global_batch_size: int | None = None) -> TrainerFacts:
        """The facts of a Lightning ``trainer`` (None: one process, one epoch)."""
        if trainer is None:
            return cls(global_batch_size=global_batch_size)
        return cls(
            trainer.world_size,
            trainer.accumulate_grad_batches,
            trainer.limit_train_batches,
            trainer.max_steps,
            trainer.max_epochs,
            global_batch_size,
        )


@dataclass(frozen=True)
class BatchPlan:
    """How a run's data is cut into batches and optimiser steps.

    Args:
        per_device: rows a process takes per loader batch.
        world_size: processes (``trainer.num_nodes x trainer.devices``).
        accumulate: loader batches per optimiser step (``trainer.accumulate_grad_batches``).
        batches_per_epoch: loader batches a process runs per epoch (the last incomplete global batch is dropped,
            ``trainer.limit_train_batches`` applies).
        total_steps: optimiser steps of the whole run (what the schedules span).
    """

    per_device: int
    world_size: int = 1
    accumulate: int = 1
    batches_per_epoch: int = 1
    total_steps: int = 1

    @property
    def rows_per_batch(self) -> int:
        """Rows of one loader batch over all processes (the sampler's global batch)."""
        return self.per_device * self.world_size

    @property
    def global_batch(self) -> int:
        """Rows per optimiser step (what the LR scales with, what a resume must keep)."""
        return self.rows_per_batch * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch: Lightning also steps on an epoch's last, partial accumulation."""
        return max(1, -(-self.batches_per_epoch // self.accumulate))

    def position(self, global_step: int) -> tuple[int, int]:
        """(epoch, loader batches of it already trained on) after ``global_step`` optimiser steps."""
        epoch, step_in_epoch = divmod(global_step, self.steps_per_epoch)
        return epoch, min(step_in_epoch * self.accumulate, self.batches_per_epoch)

    @classmethod
    def derive(
        cls, *, batch_size: int, num_samples: int, facts: TrainerFacts, shared_chunks: int | None = None
    ) -> BatchPlan:
        """The plan of a run; one-line errors for batch sizes that do not fit the processes or the data.

        Args:
            batch_size: ``data.batch_size``, rows per process (used when ``facts.global_batch_size`` is null).
            num_samples: images in the training split.
            facts: the processes, accumulation and run length; ``global_batch_size``: rows per optimiser step
                whatever the allocation (split over processes and accumulation).
            shared_chunks: chunks of a global batch sharing one view draw (``views.shared_chunks``).
        """
        per_device, world_size, accumulate = batch_size, facts.world_size, facts.accumulate
        global_batch_size = facts.global_batch_size
        if global_batch_size is not None:
            checks.integer("global_batch_size", global_batch_size, minimum=1, allow_none=True)
            parts = world_size * accumulate
            if global_batch_size % parts or global_batch_size // parts < 2:
                raise ValueError(
                    f"global_batch_size={global_batch_size}: not divisible by {world_size} process(es) "
                    f"(trainer.num_nodes x trainer.devices) x trainer.accumulate_grad_batches={accumulate} in batches "
                    f"of at least 2 rows; expected a multiple of {parts}, at least {2 * parts}"
                )
            per_device = global_batch_size // parts
        rows = per_device * world_size
        if rows > num_samples:
            raise ValueError(
                f"data.batch_size={per_device} x {world_size} process(es) is larger than the training set "
                f"({num_samples} images): lower data.batch_size or raise data.subset"
            )
        if shared_chunks and rows // shared_chunks < 2:
            raise ValueError(
                f"data.batch_size={per_device} x {world_size} process(es) = {rows} rows is too small for "
                f"views.shared_chunks={shared_chunks}: expected at least 2 rows per chunk ({2 * shared_chunks} in all)"
            )
        epoch = batches_per_epoch(num_samples // rows, facts.limit_train_batches)
        plan = cls(per_device, world_size, accumulate, epoch)
        total = facts.max_steps if facts.max_steps > 0 else plan.steps_per_epoch * max(1, facts.max_epochs or 1)
        return cls(per_device, world_size, accumulate, epoch, total)
