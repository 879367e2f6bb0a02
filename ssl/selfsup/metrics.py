"""Label-free and labelled quality measures of frozen representations — pure torch.

- :func:`rankme` — effective rank of an embedding matrix (Garrido et al. 2023, arXiv:2210.02885).
- :func:`alpha_req` — power-law decay α of the feature covariance's eigenspectrum, with the fit's R² (Agrawal et al.
  2022, α-ReQ, NeurIPS; the fit of arnab39/reptrix ``alpha.py``).
- :func:`lidar` — effective rank of the LDA matrix between augmented views of the same images (Thilak et al. 2023,
  LiDAR, arXiv:2312.04000).
- :func:`covariance_eigenvalues` — the eigenvalues those spectra (and the stepwise-learning logs) are made of.
- :func:`knn_top1` — weighted k-NN vote on cosine similarities (Wu et al. 2018 InstDisc, arXiv:1805.01978;
  the protocol of facebookresearch/dino ``eval_knn.py::knn_classifier``).
- :func:`linear_probe` — multinomial logistic regression on cached features, full batch with L-BFGS and an L2 sweep
  chosen on a stratified validation split carved from train (the "fast" protocol).
- :func:`linear_probe_sgd` — the same classifier trained the standard way (mini-batch SGD, momentum, cosine schedule),
  for comparison with it and with papers' protocol on cached features.
- :func:`train_head_sgd` — that SGD loop itself, also run on augmented images by ``selfsup.evaluate.probes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from selfsup import checks

# Largest similarity block (test rows × bank rows) materialised at once by knn_top1: 2^24 floats = 64 MiB.
_KNN_BLOCK_ELEMENTS = 1 << 24


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: got {shape}, expected a 2-D tensor (N, D)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}, expected N >= 1 rows and D >= 1 columns")


def _check_labels(name: str, y, n: int) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: got shape {tuple(y.shape)}, expected ({n},) to match the features")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name}: got dtype {y.dtype}, expected integer class indices")
    y = y.long()
    if n and int(y.min()) < 0:
        raise ValueError(
            f"{name}: got label {int(y.min())}, expected class indices >= 0 (unlabeled data has no accuracy)"
        )
    return y


def rankme(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RankMe: ``exp(-Σ_k p_k log p_k)``, ``p_k = σ_k / ‖σ‖₁ + eps``, σ the singular values of raw (N, D) z.

    No centring, as in the paper (Garrido et al. 2023, arXiv:2210.02885, Eq. 1). The singular values are the square
    roots of the eigenvalues of the Gram matrix of the smaller side, computed in float64 (eigenvalues below zero from
    round-off are clamped to 0), so a float32 input with a huge condition number stays finite. Ranges over
    [1, min(N, D)] up to the eps terms; an all-zero matrix gives ≈ 1.

    Args:
        z: (N, D) embeddings, any float dtype and device.
        eps: added to every p_k so that log(0) never occurs (the paper's ε).

    Returns:
        0-dim float64 tensor on z's device.
    """
    return effective_rank(singular_values(z, "rankme z"), eps)  # σ: (min(N, D),)


def singular_values(z: torch.Tensor, name: str = "z") -> torch.Tensor:
    """Singular values of the raw (N, D) matrix z, descending, float64: sqrt of the eigenvalues of the Gram matrix
    of the smaller side (round-off negatives clamped to 0)."""
    _check_matrix(name, z)
    z = z.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError(f"{name}: contains NaN or Inf, expected finite embeddings")
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T  # (min(N, D), min(N, D))
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def covariance_eigenvalues(z: torch.Tensor, name: str = "z") -> torch.Tensor:
    """Eigenvalues of the (biased, 1/N) covariance of the rows of z, descending, float64: the squared singular
    values of the centred matrix over N. There are min(N, D) of them (at most N - 1 non-zero)."""
    _check_matrix(name, z)
    centred = z.detach().to(torch.float64)
    centred = centred - centred.mean(0)
    return singular_values(centred, name).square() / z.shape[0]


def effective_rank(values: torch.Tensor, eps: float) -> torch.Tensor:
    """``exp(-Σ_k p_k log p_k)`` with ``p_k = v_k / ‖v‖₁ + eps`` over non-negative values (RankMe's and LiDAR's
    entropy of a spectrum)."""
    p = values / values.sum().clamp_min(torch.finfo(values.dtype).tiny) + eps
    return torch.exp(-(p * p.log()).sum())


def alpha_req(z: torch.Tensor, fit_range: Sequence[int] = (6, 100), rel_floor: float | None = None) -> dict:
    """α-ReQ: the decay exponent α of a power law λ_k ∝ k^(-α) fitted to the eigenspectrum of the covariance of z.

    Agrawal et al. 2022 ("α-ReQ: Assessing Representation Quality in Self-Supervised Learning by measuring
    Eigenspectrum Decay", NeurIPS), with the fit of their group's reference code (arnab39/reptrix ``alpha.py``,
    after Stringer et al. 2019): λ_k are the eigenvalues of the centred covariance, k their 1-based ranks; over the
    ranks k in ``fit_range`` (inclusive), weighted least squares of ``log λ_k = -α log k + c`` with weights 1/k.
    ``r2`` is the unweighted coefficient of determination of that line against log λ_k on the same ranks (reptrix
    scores R² on a longer range; the fitted range is the one that means something for α). The range is clipped to
    the eigenvalues above ``rel_floor · λ_1``: with N < D rows the covariance has at most N - 1 non-zero ones, and
    below about 1000 × z's machine epsilon × λ_1 (1.2e-4 for float32) eigenvalues are round-off — they moved α from
    11.2 to 11.7 between a 1- and a 2-process evaluation of the same float32 embeddings.
    The paper finds linear-probe accuracy best near α ≈ 1: a slower decay (α < 1) spreads variance over noisy
    directions, a faster one (α > 1) collapses the representation onto few.

    Args:
        z: (N, D) features, N >= 2, any float dtype and device.
        fit_range: (first, last) 1-based eigenvalue ranks fitted (reptrix: 6 to 100, the tail past the first few).
        rel_floor: eigenvalues below this fraction of the largest count as zero (None: 1000 × the machine epsilon
            of z's dtype).

    Returns:
        ``{"alpha", "r2", "intercept", "first", "last"}`` (floats, the ranks actually fitted); alpha, r2 and
        intercept are NaN when fewer than 3 ranks remain (a representation of rank < ``first + 2``).
    """
    first, last = (int(v) for v in fit_range)
    if not 1 <= first < last:
        raise ValueError(f"alpha_req fit_range={list(fit_range)}: expected 1-based ranks 1 <= first < last")
    if z.ndim == 2 and z.shape[0] < 2:
        raise ValueError(f"alpha_req z: got {z.shape[0]} row, expected N >= 2 rows (a covariance)")
    lam = covariance_eigenvalues(z, "alpha_req z").cpu()
    if rel_floor is None:
        rel_floor = 1e3 * torch.finfo(z.dtype if z.is_floating_point() else torch.float32).eps
    positive = int((lam > rel_floor * lam[0]).sum()) if lam[0] > 0 else 0
    last = min(last, positive)
    nan = float("nan")
    if last - first + 1 < 3:
        return {"alpha": nan, "r2": nan, "intercept": nan, "first": first, "last": last}
    k = torch.arange(first, last + 1, dtype=torch.float64)
    y = lam[first - 1 : last].log()
    x = torch.stack([-k.log(), torch.ones_like(k)], dim=1)  # (K, 2): slope α, intercept c
    w = 1 / k
    alpha, intercept = torch.linalg.solve(x.T @ (x * w[:, None]), x.T @ (w * y)).tolist()
    fit = x @ torch.tensor([alpha, intercept], dtype=torch.float64)
    r2 = 1 - float(((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-300))
    return {"alpha": alpha, "r2": r2, "intercept": intercept, "first": first, "last": last}


def lidar(z_views: torch.Tensor, delta: float = 1e-4, eps: float = 1e-8) -> torch.Tensor:
    """LiDAR: effective rank of the LDA matrix whose classes are the augmented views of each image.

    Thilak et al. 2023 (arXiv:2312.04000, §3), for n images (surrogate classes) × q views with embeddings z_ij:
    μ_i = mean_j z_ij, μ = mean_i μ_i; between-class Σ_b = 1/n Σ_i (μ_i − μ)(μ_i − μ)ᵀ; within-class
    Σ_w = 1/(nq) Σ_ij (z_ij − μ_i)(z_ij − μ_i)ᵀ + δ·I; Σ_LiDAR = Σ_w^{-1/2} Σ_b Σ_w^{-1/2}; and with its
    eigenvalues λ, ``exp(-Σ_k p_k log p_k)``, ``p_k = λ_k / ‖λ‖₁ + ε`` (RankMe's entropy). δ = 1e-4 and ε = 1e-8 as
    stable-pretraining's ``callbacks/lidar.py`` (galilai-group/stable-pretraining), which divides by n − 1 and
    n(q − 1) instead; those constant factors only rescale the spectrum against δ. Computed in float64; Σ_w^{-1/2}
    from its eigendecomposition (reptrix's ``lidar.py`` calls ``torch.matrix_power(Σ_w, -0.5)``, which takes integer
    powers only). Ranges over [1, min(n − 1, D)] up to the ε terms.

    Args:
        z_views: (n, q, D) embeddings: q augmented views of each of n images, n >= 2, q >= 2.
        delta: δ > 0 added to the within-class covariance's diagonal (makes it invertible).
        eps: ε added to every p_k.

    Returns:
        0-dim float64 tensor on z_views' device.
    """
    if not isinstance(z_views, torch.Tensor) or z_views.ndim != 3:
        shape = tuple(z_views.shape) if isinstance(z_views, torch.Tensor) else type(z_views).__name__
        raise ValueError(f"lidar z_views: got {shape}, expected a 3-D tensor (n images, q views, D)")
    n, q, d = z_views.shape
    if n < 2 or q < 2 or d < 1:
        raise ValueError(f"lidar z_views: got shape {(n, q, d)}, expected n >= 2 images, q >= 2 views and D >= 1")
    checks.number("lidar delta", delta, above=0)
    z = z_views.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError("lidar z_views: contains NaN or Inf, expected finite embeddings")
    class_means = z.mean(dim=1)  # (n, D)
    between = class_means - class_means.mean(dim=0)
    sigma_b = between.T @ between / n  # (D, D)
    within = (z - class_means[:, None]).reshape(n * q, d)
    sigma_w = within.T @ within / (n * q) + delta * torch.eye(d, dtype=z.dtype, device=z.device)
    w_eig, w_vec = torch.linalg.eigh(sigma_w)
    w_inv_sqrt = (w_vec * w_eig.clamp_min(torch.finfo(z.dtype).tiny).rsqrt()) @ w_vec.T
    m = w_inv_sqrt @ sigma_b @ w_inv_sqrt
    lam = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    return effective_rank(lam, eps)


@torch.no_grad()
def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.07,
) -> float:
    """Weighted k-NN top-1 accuracy (InstDisc, arXiv:1805.01978; DINO ``eval_knn.py::knn_classifier``).

    Features are L2-normalised; each test row takes its k most cosine-similar train rows and class c scores
    ``Σ_{neighbours of class c} exp(sim / temperature)``; the prediction is the highest score. Test rows are processed
    in chunks so that only a (chunk, N_train) similarity block exists at once (50k × 10k fits in ~64 MiB).

    Args:
        train_feats: (N, D) bank features. train_labels: (N,) class indices >= 0.
        test_feats: (M, D) query features. test_labels: (M,) class indices >= 0.
        k: neighbours per query; clipped to N.
        temperature: τ > 0 of the exp(sim/τ) vote weight.

    Returns:
        top-1 accuracy in [0, 1].
    """
    train_labels, test_labels, num_classes = _prepare_probe_inputs(
        "knn_top1", train_feats, train_labels, test_feats, test_labels
    )
    checks.integer("knn_top1 k", k, minimum=1)
    checks.number("knn_top1 temperature", temperature, above=0)
    device = train_feats.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    dtype = torch.float64 if train_feats.dtype == torch.float64 else torch.float32
    bank = F.normalize(train_feats.to(dtype), dim=1)  # (N, D)
    n_bank, k = bank.shape[0], min(k, bank.shape[0])
    chunk = max(1, _KNN_BLOCK_ELEMENTS // n_bank)
    correct = 0
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].to(device=device, dtype=dtype), dim=1)  # (B, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (B, k)
        votes = torch.zeros(q.shape[0], num_classes, dtype=dtype, device=device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())  # (B, C)
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk]).sum())
    return correct / test_feats.shape[0]


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of row indices: (keep, held_out), held_out ≈ fraction of every class.

    A class with a single sample stays entirely in ``keep``; any class with more keeps at least one sample there.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction={fraction}: expected 0 <= value < 1")
    labels = torch.as_tensor(labels).cpu()
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(rows.numel(), generator=g)]
        n_held = min(round(fraction * rows.numel()), rows.numel() - 1)
        held.append(rows[:n_held])
        keep.append(rows[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def _fit_logreg(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int, tol: float, init=None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean CE(x W + b, y) + l2/2 ‖W‖² (bias unpenalised), full-batch L-BFGS; returns W, b, iterations."""
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype) if init is None else init[0].clone()
    b = torch.zeros(num_classes, dtype=x.dtype) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tol,
        tolerance_change=1e-7,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, x, w), y) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), opt.state[w]["n_iter"]


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.addmm(b, x, w).argmax(dim=1) == y).double().mean()) if y.numel() else float("nan")


def _prepare_probe_inputs(name, train_feats, train_labels, test_feats, test_labels):
    _check_matrix(f"{name} train_feats", train_feats)
    _check_matrix(f"{name} test_feats", test_feats)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"{name} test_feats: got dim {test_feats.shape[1]}, expected train_feats' dim {train_feats.shape[1]}"
        )
    y_train = _check_labels(f"{name} train_labels", train_labels, train_feats.shape[0]).cpu()
    y_test = _check_labels(f"{name} test_labels", test_labels, test_feats.shape[0]).cpu()
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return y_train, y_test, num_classes


@torch.no_grad()
def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    l2_grid: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.1,
    standardize: bool = True,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    extra_test: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Fast linear probe: full-batch multinomial logistic regression on frozen features with L-BFGS.

    Objective: ``mean_i CE(W x_i + b, y_i) + l2/2 ‖W‖²_F`` (bias unpenalised) — scikit-learn's
    ``LogisticRegression(C)`` with ``l2 = 1 / (C · N)``. Features are standardised with the fitting rows' mean and
    std. The l2 values of ``l2_grid`` are fitted on train minus a stratified, seeded validation split, largest first,
    each warm-starting the next; the path stops once two consecutive values score below the best validation
    accuracy (smaller l2 only overfits more, and costs the most iterations). The l2 with the best validation accuracy
    (ties → the larger l2) is refitted on all train rows, warm-started from its validation fit, and scored on test.
    Runs in float32 on the CPU.

    Args:
        train_feats, train_labels: (N, D) features and (N,) class indices >= 0.
        test_feats, test_labels: (M, D) features and (M,) class indices >= 0.
        l2_grid: L2 strengths to try; with a single value and val_fraction=0 no validation split is carved.
        val_fraction: share of every train class held out to choose l2.
        standardize: z-score features with the fitting rows' statistics.
        max_iter: L-BFGS iterations per fit (each costs ~1.2 passes over the features).
        tol: L-BFGS first-order optimality tolerance (max |grad|).
        seed: seed of the validation split.
        extra_test: more held-out sets ``{name: (features, labels)}`` scored by the same fitted classifier (e.g. the
            test split under corruptions).

    Returns:
        ``{"top1", "val_top1", "l2", "val_top1_by_l2", "train_top1", "iterations", "seconds"}`` and, with
        ``extra_test``, ``"extra_top1": {name: accuracy}``; accuracies in [0, 1] (``val_top1`` is NaN when no
        validation split was carved).
    """
    t0 = time.perf_counter()
    y_train, y_test, num_classes = _prepare_probe_inputs(
        "linear_probe", train_feats, train_labels, test_feats, test_labels
    )
    grid = sorted({float(v) for v in l2_grid}, reverse=True)
    if not grid or any(not (v >= 0 and math.isfinite(v)) for v in grid):
        raise ValueError(f"linear_probe l2_grid={list(l2_grid)}: expected a non-empty list of finite values >= 0")
    if len(grid) > 1 and val_fraction <= 0:
        raise ValueError(f"linear_probe val_fraction={val_fraction}: expected > 0 to choose among l2_grid={grid}")
    checks.integer("linear_probe max_iter", max_iter, minimum=1)
    x_train = train_feats.detach().to("cpu", torch.float32)
    x_test = test_feats.detach().to("cpu", torch.float32)

    def standardise(fit_rows: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
        if not standardize:
            return [fit_rows, *others]
        mean, std = fit_rows.mean(0), fit_rows.std(0, correction=0)
        std = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), std, torch.ones_like(std))  # constant columns
        return [(t - mean) / std for t in (fit_rows, *others)]

    val_by_l2: dict[float, float] = {}
    iterations = 0
    best = grid[0]
    fit_idx, val_idx = stratified_split(y_train, val_fraction, seed)
    if val_idx.numel():
        x_fit, x_val = standardise(x_train[fit_idx], x_train[val_idx])
        solutions, worse, init = {}, 0, None
        with torch.enable_grad():
            for l2 in grid:  # descending: each fit starts from the previous, larger l2's solution
                w, b, n_iter = _fit_logreg(x_fit, y_train[fit_idx], num_classes, l2, max_iter, tol, init)
                init = solutions[l2] = (w, b)
                iterations += n_iter
                val_by_l2[l2] = _accuracy(x_val, y_train[val_idx], w, b)
                worse = worse + 1 if val_by_l2[l2] < max(val_by_l2.values()) else 0
                if worse == 2:
                    break
        best = max(val_by_l2, key=lambda v: val_by_l2[v])  # max() keeps the first, i.e. the largest l2 on ties
        init = solutions[best]
    else:
        init = None
    extra = dict(extra_test or {})
    x_all, x_te, *x_extra = standardise(
        x_train, x_test, *(x.detach().to("cpu", torch.float32) for x, _ in extra.values())
    )
    with torch.enable_grad():
        w, b, n_iter = _fit_logreg(x_all, y_train, num_classes, best, max_iter, tol, init)
    more = {}
    if extra:
        labels = [torch.as_tensor(y).long().cpu() for _, y in extra.values()]
        more["extra_top1"] = {k: _accuracy(x, y, w, b) for k, x, y in zip(extra, x_extra, labels, strict=True)}
    return more | {
        "top1": _accuracy(x_te, y_test, w, b),
        "val_top1": val_by_l2.get(best, float("nan")),
        "l2": best,
        "val_top1_by_l2": {f"{v:g}": acc for v, acc in val_by_l2.items()},
        "train_top1": _accuracy(x_all, y_train, w, b),
        "iterations": iterations + n_iter,
        "seconds": time.perf_counter() - t0,
    }


def linear_probe_sgd(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int = 0,
) -> dict:
    """Standard-protocol linear probe on frozen features: mini-batch SGD with momentum and a cosine schedule.

    The schedule of the usual SSL linear evaluation (e.g. facebookresearch/barlowtwins ``evaluate.py``: SGD, momentum
    0.9, cosine decay, 100 epochs) without augmentation, since the features are cached. Features are standardised with
    train statistics (SimCLR's BatchNorm without affine before the linear layer) or, with ``standardize=False``,
    L2-normalised; the linear layer starts from zero.

    Args:
        train_feats, train_labels, test_feats, test_labels: as in :func:`linear_probe`.
        epochs, batch_size, lr, momentum, weight_decay: SGD settings (lr scaled by batch_size / 256).
        standardize: z-score with train statistics (else L2-normalise).
        seed: shuffling seed.

    Returns:
        ``{"top1", "train_top1", "seconds"}``.
    """
    t0 = time.perf_counter()
    y_train, y_test, num_classes = _prepare_probe_inputs(
        "linear_probe_sgd", train_feats, train_labels, test_feats, test_labels
    )
    checks.integer("linear_probe_sgd epochs", epochs, minimum=1)
    checks.integer("linear_probe_sgd batch_size", batch_size, minimum=1)
    x_train = train_feats.detach().to("cpu", torch.float32)
    x_test = test_feats.detach().to("cpu", torch.float32)
    if standardize:
        mean, std = x_train.mean(0), x_train.std(0, correction=0).clamp_min(1e-8)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    else:
        x_train, x_test = F.normalize(x_train, dim=1), F.normalize(x_test, dim=1)
    head = torch.nn.Linear(x_train.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    g = torch.Generator().manual_seed(seed)

    def batches():  # one epoch: a seeded permutation of the rows
        for rows in torch.randperm(x_train.shape[0], generator=g).split(batch_size):
            yield x_train[rows], y_train[rows]

    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    train_head_sgd(head, batches, epochs, steps_per_epoch, batch_size, lr, momentum, weight_decay)
    with torch.no_grad():
        w, b = head.weight.T, head.bias
        return {
            "top1": _accuracy(x_test, y_test, w, b),
            "train_top1": _accuracy(x_train, y_train, w, b),
            "seconds": time.perf_counter() - t0,
        }


def train_head_sgd(
    head: torch.nn.Module,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """The SGD protocol's loop: cross-entropy of ``head`` trained by SGD with momentum at ``lr × batch_size / 256``,
    decayed on a cosine to 0 over ``epochs × steps_per_epoch`` steps (stepped once per batch).

    Args:
        head: the classifier (its parameters are the only ones updated).
        batches: called once per epoch; yields (inputs (B, F), class indices (B,)) already on the head's device.
        epochs, steps_per_epoch: the schedule's length.
        batch_size, lr, momentum, weight_decay: SGD settings.
        on_epoch: called after every epoch with (epoch index, the epoch's last loss).
    """
    opt = torch.optim.SGD(head.parameters(), lr=lr * batch_size / 256, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for epoch in range(epochs):
        for x, y in batches():
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, loss.item())
