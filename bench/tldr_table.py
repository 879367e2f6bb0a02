"""TLDR vs PCA vs the full features: kNN top-1 and label retrieval of reduced vectors (bench/TLDR.md).

    python bench/tldr_table.py --features <selfsup-eval run dir | eval_cache/*.pt> [--dim 32] [--epochs 10] ...

Reads the train/test features (with labels) that ``selfsup-eval`` cached, then for each representation — the full
backbone features, PCA-d (centred; and PCA-d whitened), TLDR-d with a linear and an MLP encoder (fitted on train,
applied to test, through the same code as ``selfsup-reduce``) — reports, with train as the bank and test as queries:
weighted kNN top-1 (k=200 and 20, T=0.07, :func:`selfsup.metrics.knn_top1`), precision@10 and MAP@R
(:mod:`selfsup.neighbours`), all on cosine similarity. Prints a markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.metrics import knn_top1
from selfsup.neighbours import map_at_r, precision_at_k
from selfsup.reduce import TLDR, fit, knn_graph, load_features, transform


def pca(train: torch.Tensor, test: torch.Tensor, dim: int, whiten: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Project on the top-``dim`` principal axes of train (float64 covariance eigendecomposition)."""
    mean = train.double().mean(0)
    xc = train.double() - mean
    evals, evecs = torch.linalg.eigh(xc.T @ xc / (len(xc) - 1))  # ascending
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]  # (dim,), (D, dim)
    proj = evecs / evals.clamp(min=1e-12).sqrt() if whiten else evecs
    return (xc @ proj).float(), ((test.double() - mean) @ proj).float()


def scores(tr, ytr, te, yte) -> dict:
    t = time.perf_counter()
    out = {
        "knn_top1_k200": knn_top1(tr, ytr, te, yte, k=200, temperature=0.07),
        "knn_top1_k20": knn_top1(tr, ytr, te, yte, k=20, temperature=0.07),
        "precision_at_10": precision_at_k(tr, ytr, te, yte, k=10),
        "map_at_r": map_at_r(tr, ytr, te, yte),
    }
    out["eval_seconds"] = time.perf_counter() - t
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True, help="selfsup-eval run dir, or its eval_cache/<digest>.pt")
    p.add_argument("--key", default="backbone", choices=["backbone", "embedding"])
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--k", type=int, default=5, help="TLDR neighbours (official default 5)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--projector", default="mlp-2-2048")
    p.add_argument("--encoders", default="linear,mlp-1-512", help="comma-separated TLDR encoder strings")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 avoids contention on a shared CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path, splits = load_features(args.features, args.key)
    if "test" not in splits or splits["train"]["labels"] is None:
        raise SystemExit(f"--features {path}: expected a selfsup-eval cache with labelled train and test splits")
    tr, ytr = splits["train"]["features"], splits["train"]["labels"]
    te, yte = splits["test"]["features"], splits["test"]["labels"]
    print(f"features {path}: train {tuple(tr.shape)}, test {tuple(te.shape)}", flush=True)

    rows = [{"method": f"full ({tr.shape[1]}-d)", "fit_seconds": 0.0, **scores(tr, ytr, te, yte)}]
    for whiten in (False, True):
        t = time.perf_counter()
        a, b = pca(tr, te, args.dim, whiten)
        rows.append(
            {
                "method": f"PCA-{args.dim}" + (" whitened" if whiten else ""),
                "fit_seconds": time.perf_counter() - t,
                **scores(a, ytr, b, yte),
            }
        )
        print(rows[-1], flush=True)

    t = time.perf_counter()
    knn = knn_graph(tr, k=args.k, metric="cosine", device=args.device)
    knn_seconds = time.perf_counter() - t
    print(f"exact {args.k}-NN graph: {knn_seconds:.1f} s", flush=True)
    for spec in args.encoders.split(","):
        torch.manual_seed(0)
        model = TLDR(tr.shape[1], n_components=args.dim, encoder=spec, projector=args.projector)
        stats = fit(
            model,
            tr,
            knn,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_epochs=args.warmup_epochs,
            device=args.device,
            log_every=100,
        )
        a, b = transform(model.encoder, tr), transform(model.encoder, te)
        rows.append(
            {
                "method": f"TLDR-{args.dim} ({spec})",
                "fit_seconds": knn_seconds + stats["seconds"],
                "train": stats,
                **scores(a, ytr, b, yte),
            }
        )
        print(rows[-1], flush=True)

    print("\n| representation | kNN top-1 (k=200) | kNN top-1 (k=20) | precision@10 | MAP@R | fit (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {100 * r['knn_top1_k200']:.2f} | {100 * r['knn_top1_k20']:.2f} | "
            f"{100 * r['precision_at_10']:.2f} | {100 * r['map_at_r']:.2f} | {r['fit_seconds']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "features": str(path),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "knn_seconds": knn_seconds,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
