"""SSLMem: how much an encoder memorized the images it was trained on (Wang et al. 2024, "Memorization in
Self-Supervised Learning Improves Downstream Generalization", arXiv:2401.12233; docs/memorization.md).

For a candidate image x, an encoder f trained on a set that holds x and a reference encoder g trained on a set that
does not (the same data otherwise), with a(E, x) the alignment of E on x:

    a(E, x)      = mean over views j of ‖n(E(x)) − n(E(aug_j(x)))‖₂        (n: L2 normalisation)
    SSLMem(x)    = a(g, x) − a(f, x)                                           (> 0: f aligns x better than g)
    normalised   = SSLMem(x) / (max_x SSLMem − min_x SSLMem) over the candidates

This is the score of sprintml/MemorizationSSL ``memorization_scores.py`` (clean image against augmented views, L2 of
the normalised representations, 5 views, the range normalisation); the views are the run's own first training view
drawn on the image (the official code augments the normalised tensor).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from selfsup.data.datamodules import read_indices
from selfsup.data.datasets import AugmentedViews, EvalDataset
from selfsup.data.sources import Subset, stratified_first
from selfsup.evaluate.features import extract

VIEW_SEED_TAG = 4  # generator keys (seed, 4, row, view): apart from training draws and LiDAR's (tag 2)


def alignment(clean: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """a(E, x) for each row: clean features (N, F), view features (N, q, F) → (N,)."""
    c = torch.nn.functional.normalize(clean.double(), dim=-1)
    v = torch.nn.functional.normalize(views.double(), dim=-1)
    return (v - c[:, None]).norm(dim=-1).mean(dim=1)


def sslmem(align_f: torch.Tensor, align_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSLMem scores, the same divided by their range; zeros when every score is equal)."""
    score = align_g - align_f
    span = score.max() - score.min()
    return score, score / span if span > 0 else torch.zeros_like(score)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def training_rows(data: dict, labels: torch.Tensor, key: str) -> np.ndarray:
    """The training-split rows a run trained on: its ``data.subset_file``, its ``data.subset`` (the first K taken
    class by class) or all of them."""
    if data.get("subset_file"):
        return read_indices(data["subset_file"], len(labels), key)
    if data.get("subset"):
        return stratified_first(labels, int(data["subset"]))
    return np.arange(len(labels))


def _same_data(f: dict, g: dict) -> None:
    differ = [k for k in ("_target_", "dataset", "root", "train_dir") if f.get(k) != g.get(k)]
    if differ:
        raise ValueError(
            f"eval.memorization.reference: trained on other data than the evaluated run ({differ[0]}: "
            f"{g.get(differ[0])} vs {f.get(differ[0])}); SSLMem compares two runs of one training split"
        )


def memorization(job, reference, e, device, seed: int) -> tuple[dict, list[dict]]:
    """(metrics, one row per candidate sorted by score) of ``job`` (f) against ``reference`` (g) on the candidates
    of ``e.candidates`` (indices into the full training split); refuses splits that do not define SSLMem."""
    data_f, data_g = dict(job.train_config.get("data") or {}), dict(reference.train_config.get("data") or {})
    _same_data(data_f, data_g)
    full_cfg = {**data_f, "subset": None, "subset_file": None, "num_workers": 0}
    dm = instantiate(full_cfg, views=None, _convert_="all")
    full = dm.splits[0]
    n = len(full)
    candidates = read_indices(e.candidates, n, "eval.memorization.candidates")
    rows = {
        name: training_rows(data, full.labels, f"{name}'s data.subset_file")
        for name, data in (("evaluated run", data_f), ("reference run", data_g))
    }
    missing = np.setdiff1d(candidates, rows["evaluated run"])
    if missing.size:
        raise ValueError(
            f"eval.memorization.candidates={e.candidates}: {missing.size} candidates (e.g. {int(missing[0])}) are not "
            "in the evaluated run's training set: f must be trained on every candidate"
        )
    overlap = np.intersect1d(candidates, rows["reference run"])
    if overlap.size:
        raise ValueError(
            f"eval.memorization.reference={e.reference}: its training set holds {overlap.size} of the candidates "
            f"(e.g. {int(overlap[0])}): the reference run g must be trained without them (SSLMem's splits overlap)"
        )
    source = Subset(full, candidates)
    views_cfg = job.train_config.get("views")
    if not views_cfg:
        raise ValueError("eval.memorization: the evaluated run saved no views config; SSLMem draws its views")
    view = next(iter(instantiate(views_cfg, _convert_="all").views))
    q = int(e.views)
    clean_ds = EvalDataset(source, dm.image_size, dm.mean, dm.std, dm.crop_fraction)
    views_ds = AugmentedViews(source, view, len(source), q, seed, VIEW_SEED_TAG)
    align = {}
    for name, enc in (("f", job.backbone), ("g", reference.backbone)):
        clean, labels = extract(enc, clean_ds, device=device)
        aug, _ = extract(enc, views_ds, device=device)
        align[name] = alignment(clean, aug.reshape(len(source), q, -1))
        if name == "g":  # atypicality: distance of each candidate to its class's mean under the reference encoder
            z = torch.nn.functional.normalize(clean.double(), dim=1)
            centres = torch.stack([z[labels == c].mean(0) for c in labels.unique()])
            lookup = {int(c): i for i, c in enumerate(labels.unique())}
            centre = centres[[lookup[int(y)] for y in labels]]
            atypical = 1 - torch.nn.functional.cosine_similarity(z, centre, dim=1)
    score, normalised = sslmem(align["f"], align["g"])
    order = torch.argsort(score, descending=True)
    table = [
        {
            "index": int(candidates[i]),
            "label": int(labels[i]),
            "sslmem": float(score[i]),
            "sslmem_normalised": float(normalised[i]),
            "align_f": float(align["f"][i]),
            "align_g": float(align["g"][i]),
            "atypicality": float(atypical[i]),
        }
        for i in order.tolist()
    ]
    top = max(1, len(score) // 10)
    metrics = {
        "memorization_mean": float(score.mean()),
        "memorization_top10pct": float(score[order[:top]].mean()),
        "memorization_candidates": len(score),
        "memorization_views": q,
        "memorization_atypicality_spearman": spearman(score, atypical),
    }
    return metrics, table


def write_table(path: Path, table: list[dict]) -> Path:
    import io

    from selfsup.runtime.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return atomic_write_text(path, buf.getvalue())
