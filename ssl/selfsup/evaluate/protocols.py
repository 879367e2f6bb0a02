"""Evaluation protocols that run on cached frozen features, beyond the kNN vote and the linear probe
(docs/evaluation.md, "Protocols").

- :func:`fewshot`: N-way K-shot episodes drawn from one split (seeded), a logistic regression fitted on each
  episode's support features, accuracy on its queries; mean and 95% confidence interval over the episodes. The
  protocol of Tian et al. 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?"
  (WangYueFt/rfs ``eval/meta_eval.py::meta_test`` and ``dataset/cifar.py::MetaCIFAR100.__getitem__``): features
  L2-normalised, scikit-learn's ``LogisticRegression(C=1.0, lbfgs, multinomial)``, 5 ways, 15 queries per class
  drawn from the class's rows that are not support, 600 episodes, interval ``t_{0.975, n−1} · s / √n``.
  The objective here is the same (``C · Σ_i CE_i + ½‖W‖²``, bias unpenalised), minimised for all episodes at
  once with L-BFGS in float64. Unlike rfs, the support is not augmented (``n_aug_support_samples``): features are
  cached, one per image.
- :func:`kmeans`, :func:`nmi`, :func:`ari`, :func:`clustering`: k-means (k-means++ seeding, Lloyd iterations,
  the best of ``n_init`` starts by inertia, as scikit-learn's ``KMeans``) on L2-normalised features, scored
  against the labels with normalised mutual information (arithmetic mean of the entropies, scikit-learn's default)
  and the adjusted Rand index (Hubert & Arabie 1985).

Retrieval (precision@k, MAP@R) lives in :mod:`selfsup.neighbours`, shared with ``selfsup-reduce``'s benchmark.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup import checks

# ----------------------------------------------------------------------------------------------------- few-shot


def check_fewshot(labels, ways: int, shots: int, queries: int, episodes: int = 2) -> list[torch.Tensor]:
    """One-line errors for episodes the split cannot give; returns each class's rows (sorted class order)."""
    labels = checks.labels("fewshot labels", labels, torch.as_tensor(labels).shape[0])
    checks.integer("eval.fewshot.shots", shots, minimum=1)
    checks.integer("eval.fewshot.queries", queries, minimum=1)
    checks.integer("eval.fewshot.episodes", episodes, minimum=2)
    classes = labels.unique()
    checks.integer("eval.fewshot.ways", ways, minimum=2)
    if ways > len(classes):
        raise ValueError(f"eval.fewshot.ways={ways}: the split has only {len(classes)} classes")
    rows = [(labels == c).nonzero().squeeze(1) for c in classes.tolist()]
    smallest = min(range(len(rows)), key=lambda i: rows[i].numel())
    if rows[smallest].numel() < shots + queries:
        raise ValueError(
            f"eval.fewshot.shots={shots} + eval.fewshot.queries={queries}: class {int(classes[smallest])} has only "
            f"{rows[smallest].numel()} rows in the split (each class needs shots + queries)"
        )
    return rows


def fewshot_episodes(
    labels, ways: int = 5, shots: int = 1, queries: int = 15, episodes: int = 600, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Row indices of seeded N-way K-shot episodes: ``support`` (E, ways·shots) and ``query`` (E, ways·queries),
    with episode-local labels ``support_labels`` / ``query_labels`` in 0..ways−1 (the class's draw order).

    Each episode draws ``ways`` distinct classes, then per class ``shots`` support rows and ``queries`` other rows,
    uniformly without replacement. Every class must hold ``shots + queries`` rows (one-line error otherwise)."""
    rows = check_fewshot(labels, ways, shots, queries, episodes)
    g = torch.Generator().manual_seed(int(seed))
    support, query = [], []
    for _ in range(episodes):
        picked = torch.randperm(len(rows), generator=g)[:ways].tolist()
        s, q = [], []
        for c in picked:
            r = rows[c][torch.randperm(rows[c].numel(), generator=g)[: shots + queries]]
            s.append(r[:shots])
            q.append(r[shots:])
        support.append(torch.cat(s))
        query.append(torch.cat(q))
    way = torch.arange(ways)
    return {
        "support": torch.stack(support),
        "query": torch.stack(query),
        "support_labels": way.repeat_interleave(shots),
        "query_labels": way.repeat_interleave(queries),
    }


def fit_episodes(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression of every episode at once: minimise, per episode e,
    ``C · Σ_i CE(x_ei W_e + b_e, y_i) + ½‖W_e‖²`` (scikit-learn's objective; bias unpenalised). The episodes'
    objectives are independent, so one L-BFGS on their sum reaches every episode's minimum.

    Args:
        x: (E, n, D) support features. y: (n,) labels in 0..num_classes−1, the same for every episode.

    Returns:
        W (E, D, num_classes), b (E, num_classes).
    """
    x = x.double()
    e, _, d = x.shape
    w = torch.zeros(e, d, num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(e, num_classes, dtype=torch.float64, requires_grad=True)
    target = y.expand(e, -1).reshape(-1)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=tol, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        logits = torch.baddbmm(b[:, None], x, w)  # (E, n, C)
        loss = C * F.cross_entropy(logits.reshape(-1, num_classes), target, reduction="sum") + 0.5 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def confidence_interval95(values: torch.Tensor) -> float:
    """Half-width of the 95% confidence interval of the mean: ``t_{0.975, n−1} · s / √n`` (rfs
    ``mean_confidence_interval``: scipy's standard error with ddof 1)."""
    from scipy.stats import t

    n = values.numel()
    return float(t.ppf(0.975, n - 1) * values.double().std(unbiased=True) / math.sqrt(n))


@torch.no_grad()
def fewshot(
    features: torch.Tensor,
    labels,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
    chunk: int = 100,
) -> dict:
    """Few-shot accuracy of frozen features (module docstring): ``{"mean", "ci95", "accuracies" (E,)}``, accuracies
    in [0, 1]. Episodes are fitted ``chunk`` at a time."""
    checks.number("eval.fewshot.C", C, above=0)
    labels = checks.labels("fewshot labels", labels, features.shape[0])
    ep = fewshot_episodes(labels, ways, shots, queries, episodes, seed)
    x = F.normalize(features.detach().cpu().double(), dim=1)  # (N, D), rfs ``normalize``
    accuracies = []
    for start in range(0, episodes, chunk):
        support, query = ep["support"][start : start + chunk], ep["query"][start : start + chunk]
        with torch.enable_grad():
            w, b = fit_episodes(x[support], ep["support_labels"], ways, C, max_iter)
        predicted = torch.baddbmm(b[:, None], x[query], w).argmax(-1)  # (E, ways·queries)
        accuracies.append((predicted == ep["query_labels"]).double().mean(1))
    accuracies = torch.cat(accuracies)
    return {"mean": float(accuracies.mean()), "ci95": confidence_interval95(accuracies), "accuracies": accuracies}


# --------------------------------------------------------------------------------------------------- clustering


def _sq_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] - 2 * x @ centres.T + centres.square().sum(1)).clamp_(min=0)  # (N, k)


def _kmeans_pp(x: torch.Tensor, x_sq: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn ∝ squared distance to the nearest."""
    centres = [x[torch.randint(x.shape[0], (1,), generator=g)].squeeze(0)]
    nearest = _sq_distances(x, centres[0][None], x_sq).squeeze(1)
    for _ in range(1, k):
        if nearest.sum() <= 0:  # fewer distinct points than k: any row
            i = torch.randint(x.shape[0], (1,), generator=g)
        else:
            i = torch.multinomial(nearest, 1, generator=g)
        centres.append(x[i].squeeze(0))
        nearest = torch.minimum(nearest, _sq_distances(x, centres[-1][None], x_sq).squeeze(1))
    return torch.stack(centres)


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means from ``n_init`` k-means++ starts; returns the best start's (assignments (N,), centres (k, D),
    inertia). A start stops when the centres move less than ``tol`` × the mean feature variance (scikit-learn's
    tolerance) in squared distance; an emptied cluster takes the row farthest from its centre."""
    checks.integer("eval.clustering.clusters", k, minimum=1, maximum=x.shape[0])
    checks.integer("eval.clustering.n_init", n_init, minimum=1)
    checks.integer("eval.clustering.max_iter", max_iter, minimum=1)
    x = x.double() if x.dtype == torch.float64 else x.float()
    x_sq = x.square().sum(1)
    threshold = tol * float(x.var(0, unbiased=False).mean())
    g = torch.Generator().manual_seed(int(seed))
    best = None
    for _ in range(n_init):
        centres = _kmeans_pp(x, x_sq, k, g)
        for _ in range(max_iter):
            dist = _sq_distances(x, centres, x_sq)
            assign = dist.argmin(1)
            counts = torch.bincount(assign, minlength=k)
            new = torch.zeros_like(centres).index_add_(0, assign, x) / counts.clamp(min=1)[:, None].to(x.dtype)
            own = dist.gather(1, assign[:, None]).squeeze(1)
            for c in (counts == 0).nonzero().flatten().tolist():
                far = own.argmax()
                new[c], own[far] = x[far], -1.0
            shift = float((new - centres).square().sum())
            centres = new
            if shift <= threshold:
                break
        dist = _sq_distances(x, centres, x_sq)
        inertia, assign = dist.min(1)
        inertia = float(inertia.sum())
        if best is None or inertia < best[2]:
            best = (assign, centres, inertia)
    return best


def _contingency(a, b) -> torch.Tensor:
    a = checks.labels("clustering labels_true", a, torch.as_tensor(a).shape[0])
    b = checks.labels("clustering labels_pred", b, a.shape[0])
    _, ai = a.unique(return_inverse=True)
    _, bi = b.unique(return_inverse=True)
    table = torch.zeros(int(ai.max()) + 1, int(bi.max()) + 1, dtype=torch.float64)
    return table.index_put_((ai, bi), torch.ones(len(ai), dtype=torch.float64), accumulate=True)


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information, ``I(a; b) / mean(H(a), H(b))`` (1.0 when both are one cluster)."""
    table = _contingency(labels_true, labels_pred)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    rows, cols = table.sum(1, keepdim=True), table.sum(0, keepdim=True)
    nz = table > 0
    mi = float((table[nz] / n * (table[nz] * n / (rows * cols)[nz]).log()).sum())
    denom = 0.5 * (_entropy(rows.flatten()) + _entropy(cols.flatten()))
    return max(mi, 0.0) / denom if denom > 0 else 0.0


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index: (index − expected) / (max − expected) over pairs (1.0 for identical partitions)."""
    table = _contingency(labels_true, labels_pred)
    n = table.sum()
    pairs = lambda c: float((c * (c - 1) / 2).sum())  # noqa: E731
    index, a, b = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = a * b / float(n * (n - 1) / 2) if n > 1 else 0.0
    top = 0.5 * (a + b)
    return 1.0 if top == expected else (index - expected) / (top - expected)


def clustering(features: torch.Tensor, labels, clusters: int | None = None, **kmeans_args) -> dict:
    """k-means on L2-normalised ``features`` with ``clusters`` (default: the number of classes) centres, scored
    against ``labels``: ``{"nmi", "ari", "clusters", "inertia"}``."""
    labels = checks.labels("clustering labels", labels, features.shape[0])
    k = int(labels.unique().numel()) if clusters is None else clusters
    assign, _, inertia = kmeans(F.normalize(features.detach().cpu().float(), dim=1), k, **kmeans_args)
    return {"nmi": nmi(labels, assign), "ari": ari(labels, assign), "clusters": k, "inertia": inertia}
