"""``selfsup-subset``: SAS, the training images that contribute most to contrastive learning (docs/subsets.md).

Joshi & Mirzasoleiman 2023, "Data-Efficient Contrastive Self-supervised Learning: Most Beneficial Examples for
Supervised Learning Contribute the Least" (ICML; BigML-CS-UCLA/sas-data-efficient-contrastive-learning,
``sas-pip/sas/subset_dataset.py``). A proxy encoder embeds the training split. The split is cut into (approximate)
latent classes. Within each class of n_c images, s_ij is the cosine similarity of the L2-normalised proxy features,
with values below ``threshold`` set to 0 (the diagonal included). The images are ranked and the first
⌊fraction · n_c⌋ of each class are kept:

- ``order=official`` ranks by the row sum Σ_j s_ij, ties to the higher index. This is what the released
  ``SubsetSelectionObjective`` computes: its ``add`` zeroes the chosen image's row, so the redundancy term
  ``Σ_{j∈S} s_ji`` of ``inc`` is always 0 and the lazy greedy is a sort.
- ``order=greedy`` runs the greedy as ``inc`` is written with the matrix left unchanged: the gain of i given the
  chosen set S is Σ_j s_ij − Σ_{j∈S} s_ji, the image of largest gain is chosen next (ties to the higher index).

``method=random`` keeps a seeded random ⌊fraction · n_c⌋ of each class instead (the paper's balanced random subset,
``RandomSubsetDataset.get_random_balanced_indices``). ``pool=`` (an index file) selects among those rows of the
training split only. The result is an index file of training-split rows for ``data.subset_file=``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

USAGE = (
    "usage: selfsup-subset checkpoint=<proxy run dir | .ckpt> out=<index file> [fraction=0.8] [method=sas|random] "
    "[order=official|greedy] [partition=labels|kmeans] [classes=N] [threshold=0] [seed=0] [device=cpu] [root=<data>] "
    "[pool=<index file>]"
)
ARGS = {
    "checkpoint": str,
    "out": str,
    "fraction": float,
    "method": str,
    "order": str,
    "partition": str,
    "classes": int,
    "threshold": float,
    "seed": int,
    "device": str,
    "root": str,
    "pool": str,
}
CHOICES = {"method": ("sas", "random"), "order": ("official", "greedy"), "partition": ("labels", "kmeans")}
BLOCK = 4096  # rows of the similarity matrix held at once


def thresholded(z: torch.Tensor, rows: torch.Tensor, threshold: float) -> torch.Tensor:
    """s[rows, :] of L2-normalised features ``z`` (float64), values below ``threshold`` set to 0."""
    s = z[rows] @ z.T
    return s * (s >= threshold)


def rank(z: torch.Tensor, threshold: float = 0.0, order: str = "official") -> np.ndarray:
    """Positions 0..n-1 of one latent class's features (n, F), most beneficial first (module docstring)."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    n = len(z)
    rowsum = torch.cat(
        [thresholded(z, torch.arange(i, min(i + BLOCK, n)), threshold).sum(1) for i in range(0, n, BLOCK)]
    )
    if order == "official":  # max-heap of (gain, index): the larger gain, then the larger index
        return np.lexsort((-np.arange(n), -rowsum.numpy()))
    gain, chosen = rowsum.clone(), torch.zeros(n, dtype=torch.bool)
    picked = []
    for _ in range(n):
        masked = torch.where(chosen, torch.tensor(-torch.inf, dtype=gain.dtype), gain)
        best = int(n - 1 - torch.argmax(masked.flip(0)))  # argmax, ties to the higher index
        picked.append(best)
        chosen[best] = True
        gain -= thresholded(z, torch.tensor([best]), threshold)[0]  # s_best,i leaves the gain of every i
    return np.asarray(picked)


def partition_of(features: torch.Tensor, labels: torch.Tensor, how: str, classes: int | None, seed: int) -> np.ndarray:
    """A latent class per image: the labels, or k-means (k = ``classes``, else the number of labels) on the
    L2-normalised features (the official ``kmeans_approx`` clusters the proxy's features too)."""
    if how == "labels":
        return labels.numpy()
    from sklearn.cluster import KMeans

    k = classes or len(labels.unique())
    if not 1 <= k <= len(features):
        raise ValueError(f"classes={k}: expected 1 to {len(features)} clusters (the training split's size)")
    z = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(z)


def select(
    features: torch.Tensor,
    parts: np.ndarray,
    fraction: float,
    method: str = "sas",
    order: str = "official",
    threshold: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of the kept images: ⌊fraction · n_c⌋ of each latent class c, by SAS or at random."""
    rng = np.random.default_rng(seed)
    kept = []
    for c in np.unique(parts):
        members = np.flatnonzero(parts == c)
        k = int(fraction * len(members))
        if method == "random":
            kept.append(rng.permutation(members)[:k])
        else:
            kept.append(members[rank(features[torch.from_numpy(members)], threshold, order)[:k]])
    return np.sort(np.concatenate(kept))


def parse_args(argv: list[str]) -> dict:
    from selfsup.runtime.errors import key_values

    defaults = {"fraction": 0.8, "method": "sas", "order": "official", "partition": "labels", "classes": None}
    defaults |= {"threshold": 0.0, "seed": 0, "device": "cpu", "root": None, "pool": None}
    args = key_values(argv, ARGS, USAGE, required=("checkpoint", "out"), defaults=defaults, choices=CHOICES)
    if not 0 < args["fraction"] <= 1:
        raise ValueError(f"fraction={args['fraction']}: expected the kept share of each class, in (0, 1]")
    if not -1 <= args["threshold"] <= 1:
        raise ValueError(f"threshold={args['threshold']}: expected a cosine similarity in [-1, 1]")
    return args


def subset_from(args: dict) -> tuple[Path, dict]:
    """Embed the proxy checkpoint's training split, select, write ``out`` atomically; (out, summary)."""
    from hydra.utils import instantiate

    from selfsup.data.datamodules import read_indices
    from selfsup.data.datasets import EvalDataset
    from selfsup.data.sources import Subset
    from selfsup.devices import device_of
    from selfsup.evaluate.features import extract
    from selfsup.evaluate.jobs import checkpoint_job
    from selfsup.runtime import checkpoint as ckpt_io
    from selfsup.runtime.files import atomic_write_text

    out = Path(args["out"])
    if out.is_dir():
        raise ValueError(f"out={out}: is a directory; expected the index file to write")
    path = ckpt_io.resolve(Path(args["checkpoint"]).expanduser(), "checkpoint")
    job = checkpoint_job(path, "proxy", out.parent)
    data = dict(job.train_config.get("data") or {})
    if not data:
        raise ValueError(f"checkpoint={path}: the saved training config has no data config to select from")
    data |= {"subset": None, "subset_file": None, "num_workers": 0}
    if args["root"]:
        data["root"] = args["root"]
    dm = instantiate(data, views=None, _convert_="all")
    train = dm.splits[0]
    pool = read_indices(args["pool"], len(train), "pool") if args["pool"] else np.arange(len(train))
    source = Subset(train, pool) if args["pool"] else train
    dataset = EvalDataset(source, dm.image_size, dm.mean, dm.std, dm.crop_fraction)
    features, labels = extract(job.backbone, dataset, device=device_of(args["device"], "device"))
    parts = partition_of(features, labels, args["partition"], args["classes"], args["seed"])
    chosen = select(features, parts, args["fraction"], args["method"], args["order"], args["threshold"], args["seed"])
    kept = pool[chosen]
    summary = {k: args[k] for k in ("method", "order", "partition", "fraction", "threshold", "seed")}
    summary |= {"checkpoint": str(path), "kept": len(kept), "of": len(pool), "latent_classes": len(np.unique(parts))}
    header = f"# selfsup-subset {json.dumps(summary)}\n"
    atomic_write_text(out, header + "\n".join(map(str, kept.tolist())) + "\n")
    return out, summary


def main(argv: list[str] | None = None) -> None:
    from selfsup.runtime.errors import run_command

    done = run_command("selfsup-subset", USAGE, argv, lambda a: subset_from(parse_args(a)))
    if done is not None:
        out, summary = done
        print(f"wrote {out}: {summary['kept']} of {summary['of']} training images ({summary['method']})")


if __name__ == "__main__":
    main()
