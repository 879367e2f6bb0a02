"""``init_from=<checkpoint | run dir>``: a new run that starts from another run's weights — and nothing else.

The weights of the built module (backbone, projector, predictor, the target branch, the objective's parameters and
buffers) are copied from the checkpoint's ``state_dict``; the optimiser, LR schedule, step and epoch counters,
data order and loggers start fresh (``trainer.fit`` without ``ckpt_path``), and two parts restart as in any new
run: the online probe (``probe.*``: it scores the continued run) and the memory part's state (its buffers: queues of
the old network's embeddings); a memory part's trained weights (SwAV's prototypes) are copied like the others.
What E2MC's continued pre-training needs (``docs/e2mc.md``), and any fine-tuning of a selfsup encoder with another
recipe of the same architecture.

The file is read by :func:`selfsup.runtime.checkpoint.load` (weights-only unpickling: a pickle that would run code
is refused; a DeepSpeed shard directory is consolidated first) and must be a selfsup checkpoint. Every weight the
new module has must be in it with the same shape; weights only the checkpoint has (a BYOL checkpoint's predictor
and EMA teacher continued as SimCLR) are left out and listed. The source — path, sha256 of the file, its step and
method — is recorded in ``checkpoint["selfsup"]["init_from"]`` of every checkpoint of the new run and in
``<run dir>/.hydra/init_from.yaml``.

Resume is separate (``selfsup.runtime.resume``): a resumed run continues from its own ``last.ckpt``; ``init_from``
in its saved config is not applied again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.files import atomic_write_text

if TYPE_CHECKING:
    from selfsup.train.module import SSLModule

log = logging.getLogger(__name__)

KEY = "init_from"


def sha256(path: Path) -> str:
    """Hex sha256 of a file, or of a shard directory's files (relative name and content, in sorted order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_weights(module: SSLModule, source, trusted: Sequence[str] = ()) -> dict:
    """Copy the weights of the selfsup checkpoint ``source`` (a ``.ckpt`` file, a run directory — its
    ``checkpoints/last.ckpt`` — or a DeepSpeed shard directory) into ``module``; returns what was loaded (the record
    kept in the run's checkpoints). One-line ValueError/FileNotFoundError for a missing file, a file that is not a
    selfsup checkpoint or would run code, and for weights that are missing or have other shapes
    (:func:`selfsup.runtime.checkpoint.fit`). ``trusted``: constructors its saved config may name beyond selfsup's
    own (``trusted_targets``)."""
    path = ckpt_io.resolve(source, KEY)
    ckpt = ckpt_io.load(path, KEY, trusted)
    trained = {f"memory.{name}" for name, _ in module.memory.named_parameters()}  # SwAV's prototypes

    def restarts(key: str) -> bool:
        """The online probe and what the memory part keeps between steps (its buffers: queues) restart as in a new
        run; a memory part's trained weights are copied like every other weight."""
        return key.startswith("probe.") or (key.startswith("memory.") and key not in trained)

    expected = {k: v for k, v in module.state_dict().items() if not restarts(k)}
    found = {k: v for k, v in ckpt["state_dict"].items() if not restarts(k)}
    saved_cfg = ckpt["selfsup"].get("config") or {}
    left_out = ckpt_io.fit(expected, found, source, KEY, saved_cfg, extra_ok=True)
    module.load_state_dict({k: found[k] for k in expected}, strict=False)  # not strict: probe/memory stay fresh
    if left_out:
        log.warning(
            "%s=%s: %d weights of the checkpoint are not part of this model and were left out: %s",
            KEY,
            source,
            len(left_out),
            ckpt_io.listed(left_out),
        )
    objective = (saved_cfg.get("objective") or {}).get("_target_")
    record = {
        "path": str(path.resolve()),
        "sha256": sha256(path),
        "global_step": int(ckpt.get("global_step", 0)),
        "epoch": int(ckpt.get("epoch", 0)),
        "objective": objective,
        "loaded": len(expected),
        "left_out": left_out,
    }
    log.info(
        "%s: loaded %d weights from %s (step %d, sha256 %s); optimiser, schedule and step start fresh",
        KEY,
        len(expected),
        path,
        record["global_step"],
        record["sha256"][:12],
    )
    return record


def apply(cfg, module: SSLModule, resumed: dict | None = None) -> dict | None:
    """The ``init_from`` record of this run, for the checkpoints' run info (``checkpoint["selfsup"]["init_from"]``)
    and ``.hydra/init_from.yaml``; the caller puts it there — ``module.run_info`` is not touched.

    A NEW run (``resumed`` None) with ``cfg.init_from`` set: the weights are loaded into ``module``
    (:func:`load_weights`) and its record returned; None when ``init_from`` is null (warned when the objective
    continues a trained model, ``Objective.continues_trained_model``: E2MC).

    ``resumed``: the ``checkpoint["selfsup"]`` entry of the checkpoint a resumed run continues from — then nothing
    is loaded (Lightning restores the run's own weights) and the run's original record (or None) is returned."""
    if resumed is not None:
        return resumed.get(KEY)
    source = cfg.get(KEY)
    if source is None:
        if module.objective.continues_trained_model:
            log.warning(
                "%s=null: the objective is a criterion for continuing a trained model (E2MC, docs/e2mc.md), but "
                "this run starts from random weights; set %s=<checkpoint|run dir>",
                KEY,
                KEY,
            )
        return None
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{KEY}={source!r}: expected the path of a selfsup checkpoint or run directory")
    return load_weights(module, source, cfg.get("trusted_targets") or ())


def write_record(run_dir, record: dict | None) -> None:
    """``<run dir>/.hydra/init_from.yaml``: where the run's weights came from."""
    if record is not None:
        atomic_write_text(Path(run_dir) / ".hydra" / "init_from.yaml", OmegaConf.to_yaml(OmegaConf.create(record)))
