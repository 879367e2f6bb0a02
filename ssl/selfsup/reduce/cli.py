"""``selfsup-reduce features=<file | selfsup-eval dir> out=<dir> [tldr.*] [knn.*] [train.*]`` — TLDR reduction.

Loads the matrix (:mod:`selfsup.reduce.io`), finds every training row's k nearest neighbours exactly, fits the TLDR
encoder (:mod:`selfsup.reduce.tldr`), and writes the reduced vectors of every split with the encoder into ``out``.
Bad input ends in one line (``selfsup-reduce: error: features=...: ...``) and exit status 2.
"""

from __future__ import annotations

import logging
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from selfsup import checks
from selfsup.config import CONF_DIR
from selfsup.devices import device_of
from selfsup.neighbours import check_metric
from selfsup.reduce.io import load_features, save_outputs
from selfsup.reduce.tldr import TLDR, check_batch_size, fit, knn_graph, transform
from selfsup.runtime.errors import check_output_dir, one_line_errors, run_hydra_app
from selfsup.runtime.warnings import quiet_known_warnings

log = logging.getLogger(__name__)


def reduce(cfg: DictConfig) -> dict:
    """Run one reduction; returns the summary written to ``<out>/summary.json`` (with the output paths). With
    ``threads`` torch uses that many CPU threads for the reduction only (the caller's count is restored)."""
    checks.integer("threads", cfg.threads, minimum=1, allow_none=True)
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _reduce(cfg)
    finally:
        torch.set_num_threads(before)  # a process-wide setting: in-process callers (tests) keep theirs


def _reduce(cfg: DictConfig) -> dict:
    quiet_known_warnings()
    t_cfg, k_cfg, f_cfg = cfg.tldr, cfg.knn, cfg.train
    check_metric(k_cfg.metric)
    device = device_of(cfg.device)
    check_output_dir("out", cfg.out)  # before the neighbour search and the training, not after them
    path, splits = load_features(cfg.features, cfg.key)
    x = splits["train"]["features"]  # (N, D)
    log.info("features %s: %s", path, ", ".join(f"{s} {tuple(d['features'].shape)}" for s, d in splits.items()))

    with torch.random.fork_rng(devices=[]):  # the model's initialisation, seeded; built first to check tldr.*
        torch.manual_seed(f_cfg.seed)
        model = TLDR(
            x.shape[1],
            n_components=t_cfg.n_components,
            encoder=t_cfg.encoder,
            projector=t_cfg.projector,
            lambd=t_cfg.lambd,
            scale_loss=t_cfg.scale_loss,
        )
    # the training options too, before the (long) neighbour search
    check_batch_size(f_cfg.batch_size, x.shape[0])

    t0 = time.perf_counter()
    knn = knn_graph(x, k=k_cfg.k, metric=k_cfg.metric, chunk_size=k_cfg.chunk_size, device=device)  # (N, k)
    knn_seconds = time.perf_counter() - t0
    log.info("exact %d-NN graph of %d rows (%s) in %.1f s", k_cfg.k, x.shape[0], k_cfg.metric, knn_seconds)

    stats = fit(
        model,
        x,
        knn,
        epochs=f_cfg.epochs,
        batch_size=f_cfg.batch_size,
        lr=f_cfg.lr,
        warmup_epochs=f_cfg.warmup_epochs,
        weight_decay=f_cfg.weight_decay,
        min_lr_ratio=f_cfg.min_lr_ratio,
        seed=f_cfg.seed,
        device=device,
        log_every=f_cfg.log_every,
    )
    log.info(
        "trained %d steps in %.1f s (%.0f pairs/s), loss %.4f -> %.4f",
        stats["steps"],
        stats["seconds"],
        stats["pairs_per_second"],
        stats["first_loss"],
        stats["last_epoch_loss"],
    )

    reduced = {}
    for split, d in splits.items():
        reduced[split] = transform(model.encoder, d["features"])  # (N, d)
        reduced[f"{split}_labels"] = d["labels"]
    summary = {
        "features": str(path),
        "key": cfg.key,
        "rows": {s: int(d["features"].shape[0]) for s, d in splits.items()},
        "input_dim": int(x.shape[1]),
        "architecture": model.architecture(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "knn_seconds": knn_seconds,
        "train": stats,
    }
    paths = save_outputs(cfg.out, model.encoder.cpu(), model.architecture(), reduced, summary)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return {**summary, "paths": {k: str(v) for k, v in paths.items()}}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="reduce")
@one_line_errors("selfsup-reduce")
def _app(cfg: DictConfig) -> None:
    reduce(cfg)


def main() -> None:
    run_hydra_app(_app, "selfsup-reduce")


if __name__ == "__main__":
    main()
