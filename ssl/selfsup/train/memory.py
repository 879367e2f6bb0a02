"""State a method keeps between steps (``conf/memory/``): a queue of keys, a support set, SwAV's feature queue — and
the trained weights that read it (SwAV's prototypes, which score the batch and the queue).

The state lives in buffers — saved in every checkpoint, so a resumed run continues with it bit for bit, and restarted
by ``init_from`` — the trained weights in parameters (trained with the online networks, copied by ``init_from``).
Every memory is global over ranks: each rank enqueues the whole global batch (``distributed.gather``), so all ranks
hold the same rows and a 2-process run equals the 1-process run.

- ``none`` (:class:`Memory`): nothing kept.
- ``key_queue`` (:class:`KeyQueue`): MoCo's queue of past keys (He et al. 2020, arXiv:1911.05722, Algorithm 1;
  facebookresearch/moco ``builder.py::_dequeue_and_enqueue``), handed to the objective as ``queue`` (negatives).
- ``support_set`` (:class:`SupportSet`): NNCLR's support set (Dwibedi et al. 2021, arXiv:2104.14548, §3): each key is
  replaced by its nearest neighbour (cosine) among past embeddings.
- ``swav`` (:class:`SwAVPrototypes`): SwAV's prototypes, L2-normalised before every step, and its feature queue
  (Caron et al. 2020, arXiv:2006.09882; facebookresearch/swav ``main_swav.py::train``): queries and keys become
  prototype scores, the queue's scores go to the objective as ``queue_scores``. (SwAV keeps one queue per GPU of
  that GPU's features; here one global queue of the same total length: every rank the same rows.)
- ``sample_bank`` (:class:`SampleBank`): a memory bank of one row per training sample, a moving average of its
  image embedding (Wu et al. 2018, arXiv:1805.01978; PIRL, Misra & van der Maaten 2020, arXiv:1912.01991 §3.3;
  facebookresearch/vissl ``losses/nce_loss.py::NCEAverage``), handed to the objective as ``positives`` (the rows of
  the batch's samples) and ``negatives`` (rows drawn at random). docs/pirl.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import checks, distributed
from selfsup.data.views import generator_for
from selfsup.objectives.base import RunFacts, ViewBatch


class Memory(nn.Module):
    """No memory: the batch passes unchanged.

    What a memory declares (docs/design.md, "Part contracts"): ``keeps_state``, whether it carries rows or weights
    from step to step (gradient caching, which runs a step in chunks, refuses those); :meth:`attach`, :meth:`prepare`
    and :meth:`update`, called by the training module around every step.
    """

    keeps_state: bool = False

    def attach(self, facts: RunFacts) -> None:
        """Called once by the training module with the run's facts (the projection width ``facts.embedding_dim``;
        ``facts.global_batch``: refuse sizes that cannot work with that many rows a step, in one line)."""

    def prepare(self, batch: ViewBatch, epoch: int) -> ViewBatch:
        """The batch the objective sees (keys replaced, extras added)."""
        return batch

    def update(self, batch: ViewBatch, epoch: int) -> None:
        """After the loss: enqueue this step's rows (all ranks the same global rows)."""


class _Queue(Memory):
    """A ring buffer ``bank`` (size, dim) of L2-normalised rows, oldest overwritten first."""

    keeps_state = True

    def __init__(self, size: int):
        super().__init__()
        self.size = checks.integer("memory.size", size, minimum=1)

    def attach(self, facts: RunFacts) -> None:
        # random unit rows to start with, as MoCo's queue and lightly's memory bank
        self.register_buffer("bank", F.normalize(torch.randn(self.size, facts.embedding_dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        global_batch = facts.global_batch
        if global_batch is not None and self.size < global_batch:
            raise ValueError(
                f"memory.size={self.size}: smaller than the global batch ({global_batch} rows); expected "
                f"at least {global_batch}"
            )

    @torch.no_grad()
    def enqueue(self, rows: torch.Tensor) -> None:
        rows = F.normalize(distributed.gather(rows.detach()).to(self.bank.dtype), dim=1)  # (N_global, D)
        n, start = rows.shape[0], int(self.ptr)
        idx = (start + torch.arange(n, device=rows.device)) % self.size
        self.bank[idx] = rows
        self.ptr.fill_((start + n) % self.size)


class KeyQueue(_Queue):
    """MoCo's queue: the keys of past steps are the negatives (``queue`` extra) of this one.

    Args:
        size: keys kept (65536 on ImageNet, 4096 on CIFAR-10).
    """

    def __init__(self, size: int = 65536):
        super().__init__(size)

    def prepare(self, batch, epoch):
        batch.extras["queue"] = self.bank.clone()  # the negatives before this step's keys enter
        return batch

    def update(self, batch, epoch):
        for j in sorted({j for _, j in batch.pairs()}):  # the key views this step scored
            self.enqueue(batch.k[j])


class SupportSet(_Queue):
    """NNCLR's support set: every key becomes its nearest neighbour (cosine) among the stored projections; after the
    step the first view's projections are stored.

    Args:
        size: projections kept (98304 in the paper on ImageNet).
    """

    def __init__(self, size: int = 98304):
        super().__init__(size)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) → the nearest support rows (B, D), detached."""
        scores = F.normalize(z.detach(), dim=1) @ self.bank.to(z.dtype).T  # (B, size)
        return self.bank[scores.argmax(dim=1)].to(z.dtype)

    def prepare(self, batch, epoch):
        batch.k = [self.nearest(kj) for kj in batch.k]
        return batch

    def update(self, batch, epoch):
        self.enqueue(batch.z[0])


class SwAVPrototypes(Memory):
    """SwAV's prototypes and feature queue. Before every step the prototypes are L2-normalised; the queries and keys
    become the scores ``normalize(z) · prototypesᵀ`` (V x (B, K)); once the queue of the ``crops_for_assign`` views
    is full its scores go to the objective as ``queue_scores``; after the step the normalised features of those views
    enter the queue (from ``queue_start_epoch`` on, newest first).

    Args:
        num_prototypes: K (3000 on ImageNet).
        queue_size: features kept per assigned view (0: no queue; SwAV: 3840 with small batches).
        queue_start_epoch: the epoch the queue starts filling (SwAV: 15).
        crops_for_assign: the views whose codes are computed (as the objective's).
    """

    keeps_state = True

    def __init__(
        self,
        num_prototypes: int = 3000,
        queue_size: int = 0,
        queue_start_epoch: int = 15,
        crops_for_assign: tuple[int, ...] = (0, 1),
    ):
        super().__init__()
        checks.integer("memory.num_prototypes", num_prototypes, minimum=1)
        checks.integer("memory.queue_size", queue_size, minimum=0)  # 0: no queue
        self.num_prototypes, self.queue_size, self.queue_start_epoch = num_prototypes, queue_size, queue_start_epoch
        self.crops_for_assign = tuple(int(i) for i in crops_for_assign)

    def attach(self, facts: RunFacts) -> None:
        dim, global_batch = facts.embedding_dim, facts.global_batch
        self.prototypes = nn.Linear(dim, self.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(len(self.crops_for_assign), self.queue_size, dim))
        if global_batch is not None and 0 < self.queue_size < global_batch:
            raise ValueError(
                f"memory.queue_size={self.queue_size}: smaller than the global batch ({global_batch} "
                f"rows); expected 0 (no queue) or at least {global_batch}"
            )

    def prepare(self, batch, epoch):
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        embedding = [F.normalize(z, dim=1) for z in batch.z]
        scores = [self.prototypes(e) for e in embedding]  # V x (B, K)
        batch.q, batch.k = scores, scores[: batch.num_global]
        if self.queue_size and bool((self.queue[:, -1] != 0).all()):  # full: SwAV uses it from then on
            batch.extras["queue_scores"] = [self.queue[n] @ self.prototypes.weight.T for n in range(len(self.queue))]
        self._embedding = embedding  # what update() enqueues
        return batch

    @torch.no_grad()
    def update(self, batch, epoch):
        embedding, self._embedding = self._embedding, None
        if not self.queue_size or epoch < self.queue_start_epoch:
            return
        for n, i in enumerate(self.crops_for_assign):
            rows = distributed.gather(embedding[i].detach()).to(self.queue.dtype)  # (N_global, D)
            self.queue[n, rows.shape[0] :] = self.queue[n, : -rows.shape[0]].clone()
            self.queue[n, : rows.shape[0]] = rows


class SampleBank(Memory):
    """A memory bank with one L2-normalised row per training sample: before a step the objective gets the rows of
    the batch's samples (``positives``, (B, D)) and ``num_negatives`` rows drawn uniformly from the whole bank
    (``negatives``, (K, D)); after it each sample's row moves towards its new embedding,
    ``m ← normalise(momentum · m + (1 − momentum) · normalise(z_view))``.

    The bank starts as VISSL's (``NCEAverage.init_memory``): uniform in ±1/sqrt(D/3), rows normalised. The
    negatives of a step are drawn from a generator keyed by (``seed``, steps taken) — the same rows on every rank,
    after a resume, whatever the process count — and shared by the batch's rows. (VISSL draws K rows per sample;
    at K = 32,000 and 256 rows that is a (256, 32000, 128) gather, 4 GB in float32. Each row's negatives are a
    uniform draw from the bank either way; here they are shared.)

    Args:
        momentum: weight of the old row (PIRL: 0.5).
        num_negatives: K, rows drawn per step (PIRL: 32,000 of ImageNet's 1.28 M; at most the bank size).
        view: the view whose projections update the bank (PIRL: the image, view 0).
        seed: the negatives' generator seed (conf: the run's ``seed``).
    """

    keeps_state = True

    def __init__(self, momentum: float = 0.5, num_negatives: int = 32000, view: int = 0, seed: int = 0):
        super().__init__()
        self.momentum = checks.number("memory.momentum", momentum, minimum=0, below=1)
        self.num_negatives = checks.integer("memory.num_negatives", num_negatives, minimum=1)
        self.view = checks.integer("memory.view", view, minimum=0)
        self.seed = checks.integer("memory.seed", seed, minimum=0)

    def attach(self, facts: RunFacts) -> None:
        size = facts.num_samples if facts.num_samples is not None else self.num_negatives  # no data: a pre-check
        if self.num_negatives > size:
            raise ValueError(
                f"memory.num_negatives={self.num_negatives}: more than the {size} training samples the bank holds; "
                f"expected at most {size}"
            )
        dim = facts.embedding_dim
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("bank", F.normalize(torch.rand(size, dim).mul_(2 * bound).sub_(bound), dim=1))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def prepare(self, batch, epoch):
        if batch.index is None:
            raise ValueError("memory=SampleBank needs each row's dataset index (batch['index']), which was not given")
        g = generator_for(self.seed, int(self.steps))
        draw = torch.randint(0, self.bank.shape[0], (self.num_negatives,), generator=g)
        batch.extras["positives"] = self.bank[batch.index.to(self.bank.device)]
        batch.extras["negatives"] = self.bank[draw.to(self.bank.device)]
        return batch

    @torch.no_grad()
    def update(self, batch, epoch):
        rows = distributed.gather(F.normalize(batch.z[self.view].detach(), dim=1)).to(self.bank.dtype)
        index = distributed.gather(batch.index.to(self.bank.device))
        self.bank[index] = F.normalize(self.momentum * self.bank[index] + (1 - self.momentum) * rows, dim=1)
        self.steps += 1
