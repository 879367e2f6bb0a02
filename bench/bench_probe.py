"""Fast linear probe (full-batch L-BFGS + L2 sweep) vs the SGD protocol, on cached or synthetic features.

    .venv/bin/python bench/bench_probe.py                         # synthetic CIFAR-10-sized: 50k/10k x 512, 10 classes
    .venv/bin/python bench/bench_probe.py --features <run>/eval_cache/<key>.pt   # features cached by selfsup-eval
    .venv/bin/python bench/bench_probe.py --sgd-epochs 0          # fast probe only

Prints one table: protocol, seconds, test top-1, chosen L2. The SGD protocol here runs on frozen cached features
(no augmentation, so it is the cheapest form of it); with augmentation every epoch also re-encodes the images.
"""

from __future__ import annotations

import argparse
import time

import torch

from selfsup.metrics import knn_top1, linear_probe, linear_probe_sgd


def synthetic(n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """ReLU features of class centres seen through one shared random mixing, ~CIFAR-like difficulty for a probe."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.12 * torch.randn(classes, dim, generator=g)
    mixing = torch.randn(dim, dim, generator=g) / dim**0.5

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return torch.relu(centres[y] + torch.randn(n, dim, generator=g) @ mixing), y

    return (*draw(n_train), *draw(n_test))


def load_cached(path: str, which: str):
    cache = torch.load(path, map_location="cpu", weights_only=True)
    tr, te = cache["train"], cache["test"]
    return tr[which], tr["labels"], te[which], te["labels"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", help="feature cache written by selfsup-eval (default: synthetic features)")
    p.add_argument("--which", default="backbone", choices=("backbone", "embedding"), help="feature set of the cache")
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--sgd-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.features:
        xtr, ytr, xte, yte = load_cached(args.features, args.which)
        source = f"{args.features} [{args.which}]"
    else:
        xtr, ytr, xte, yte = synthetic(args.n_train, args.n_test, args.dim, args.classes)
        source = "synthetic"
    print(f"features: {source}  train {tuple(xtr.shape)}  test {tuple(xte.shape)}  threads {torch.get_num_threads()}")

    rows = []
    t = time.perf_counter()
    fast = linear_probe(xtr, ytr, xte, yte)
    rows.append(("fast: L-BFGS, 5-value L2 sweep + refit", time.perf_counter() - t, fast["top1"], f"{fast['l2']:g}"))
    if args.sgd_epochs > 0:
        t = time.perf_counter()
        sgd = linear_probe_sgd(xtr, ytr, xte, yte, epochs=args.sgd_epochs)
        name = f"SGD protocol: {args.sgd_epochs} epochs, bs 256, cosine"
        rows.append((name, time.perf_counter() - t, sgd["top1"], "0"))
    t = time.perf_counter()
    knn = knn_top1(xtr, ytr, xte, yte, k=200)
    rows.append(("kNN k=200 T=0.07 (reference)", time.perf_counter() - t, knn, "—"))

    print(f"{'protocol':<44} {'seconds':>8} {'top-1':>7} {'L2':>7}")
    for name, sec, acc, l2 in rows:
        print(f"{name:<44} {sec:8.1f} {acc:7.4f} {l2:>7}")
    if args.sgd_epochs > 0:
        print(f"time SGD / fast = {rows[1][1] / rows[0][1]:.2f}, top-1 fast - SGD = {rows[0][2] - rows[1][2]:+.4f}")


if __name__ == "__main__":
    main()
