import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from selfsup import metrics
from selfsup.metrics import knn_top1, linear_probe, linear_probe_sgd, rankme, stratified_split


def rankme_numpy(z: np.ndarray, eps: float = 1e-7) -> float:
    """The paper's definition written directly on numpy's SVD (float64)."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def orthonormal(n, k, g):
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


# --- rankme -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(16, 16), (40, 16), (16, 40)])
def test_rankme_identity_is_full_rank(n, d):
    r = rankme(torch.eye(n, d))
    assert r.dtype == torch.float64 and r.ndim == 0
    assert r.item() == pytest.approx(min(n, d), rel=1e-4)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_rankme_rank_k_with_equal_singular_values_is_k(k):
    g = torch.Generator().manual_seed(k)
    z = orthonormal(50, k, g) @ orthonormal(20, k, g).T * 3.0  # (50, 20), k singular values equal to 3
    assert rankme(z).item() == pytest.approx(k, rel=1e-4)


def test_rankme_random_rank_k_is_at_most_k():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 5, generator=g) @ torch.randn(5, 64, generator=g)
    assert 3.0 < rankme(z).item() <= 5.0 + 1e-3


@pytest.mark.parametrize("n,d", [(64, 32), (32, 64), (5, 5)])
def test_rankme_equals_numpy_svd(n, d):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    assert rankme(z).item() == pytest.approx(rankme_numpy(z.numpy()), rel=1e-10)
    assert rankme(z, eps=1e-3).item() == pytest.approx(rankme_numpy(z.numpy(), eps=1e-3), rel=1e-10)


def test_rankme_float32_with_huge_condition_number_is_finite():
    g = torch.Generator().manual_seed(0)
    sigma = torch.logspace(0, -30, 32, dtype=torch.float64)  # condition number 1e30
    z = (orthonormal(256, 32, g) * sigma @ orthonormal(32, 32, g).T).float()
    r = rankme(z)
    assert torch.isfinite(r) and 1.0 <= r.item() <= 32
    assert r.item() == pytest.approx(rankme_numpy(z.numpy()), rel=1e-6)


def test_rankme_scale_and_permutation_invariant_and_zero_matrix():
    z = torch.randn(30, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rankme(1e6 * z[torch.randperm(30)]).item() == pytest.approx(rankme(z).item(), rel=1e-9)
    assert rankme(torch.zeros(8, 4)).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(0, 4), torch.full((3, 3), float("nan"))])
def test_rankme_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="rankme z"):
        rankme(bad)


# --- knn_top1 -----------------------------------------------------------------------------------------------------


def knn_numpy(xtr, ytr, xte, yte, k, t):
    """Query by query: cosine similarities, k largest, exp(sim/T) summed per class, argmax."""
    xtr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    xte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    k = min(k, len(xtr))
    correct = 0
    for q, y in zip(xte, yte, strict=True):
        sim = xtr @ q
        nn = np.argsort(-sim)[:k]
        votes = np.zeros(ytr.max() + 1)
        np.add.at(votes, ytr[nn], np.exp(sim[nn] / t))
        correct += int(votes.argmax() == y)
    return correct / len(yte)


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.07), (20, 0.5), (500, 0.07)])
def test_knn_matches_numpy_and_sklearn(k, t):
    g = np.random.default_rng(k)
    centers = g.normal(size=(4, 8))
    ytr, yte = g.integers(0, 4, 300), g.integers(0, 4, 100)
    xtr = centers[ytr] + 1.5 * g.normal(size=(300, 8))
    xte = centers[yte] + 1.5 * g.normal(size=(100, 8))
    ours = knn_top1(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), k=k, temperature=t)
    assert ours == pytest.approx(knn_numpy(xtr, ytr, xte, yte, k, t), abs=1e-12)
    sk = KNeighborsClassifier(
        n_neighbors=min(k, 300), metric="cosine", algorithm="brute", weights=lambda dist: np.exp((1 - dist) / t)
    ).fit(xtr, ytr)
    assert ours == pytest.approx(sk.score(xte, yte), abs=1e-12)
    assert 0.0 < ours <= 1.0


def test_knn_chunking_does_not_change_the_result(monkeypatch):
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(200, 16, generator=g), torch.randn(77, 16, generator=g)
    ytr, yte = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (77,), generator=g)
    whole = knn_top1(xtr, ytr, xte, yte, k=10)
    monkeypatch.setattr(metrics, "_KNN_BLOCK_ELEMENTS", 200 * 3)  # chunks of 3 test rows
    assert knn_top1(xtr, ytr, xte, yte, k=10) == whole


def test_knn_float32_float64_agree_and_scale_invariant():
    g = torch.Generator().manual_seed(2)
    xtr = torch.randn(100, 6, generator=g, dtype=torch.float64)
    xte = torch.randn(40, 6, generator=g, dtype=torch.float64)
    ytr, yte = torch.randint(0, 3, (100,), generator=g), torch.randint(0, 3, (40,), generator=g)
    ref = knn_top1(xtr, ytr, xte, yte, k=7)
    assert knn_top1(5 * xtr.float(), ytr, 0.1 * xte.float(), yte, k=7) == ref


def test_knn_rejects_unlabeled_and_mismatched():
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="test_labels.*-1"):
        knn_top1(x, y, x, torch.full((10,), -1))
    with pytest.raises(ValueError, match="dim"):
        knn_top1(x, y, torch.randn(10, 5), y)
    with pytest.raises(ValueError, match="temperature"):
        knn_top1(x, y, x, y, temperature=0)


# --- linear probe -------------------------------------------------------------------------------------------------


def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = torch.arange(10).repeat_interleave(torch.arange(1, 11) * 10)  # class c has 10(c+1) rows
    keep, held = stratified_split(y, 0.2, seed=3)
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(len(y)))
    assert torch.equal(torch.bincount(y[held], minlength=10), (torch.arange(1, 11) * 2))
    k2, h2 = stratified_split(y, 0.2, seed=3)
    assert torch.equal(keep, k2) and torch.equal(held, h2)
    assert not torch.equal(held, stratified_split(y, 0.2, seed=4)[1])
    _, held1 = stratified_split(torch.tensor([0, 1, 1]), 0.5)
    assert held1.tolist() in ([1], [2])  # a singleton class stays in train


def test_linear_probe_separable_problem_is_perfect():
    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.randn(3, 5, generator=g)
    ytr, yte = torch.arange(3).repeat(40), torch.arange(3).repeat(10)
    xtr = centers[ytr] + torch.randn(120, 5, generator=g)
    xte = centers[yte] + torch.randn(30, 5, generator=g)
    out = linear_probe(xtr, ytr, xte, yte)
    skl = LogisticRegression(max_iter=1000).fit(xtr.numpy(), ytr.numpy()).score(xte.numpy(), yte.numpy())
    assert out["top1"] == skl == 1.0
    assert out["val_top1"] == 1.0 and out["l2"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_linear_probe_matches_sklearn_logistic_regression_on_digits(digits, l2):
    xtr, xte, ytr, yte = digits
    scaler = StandardScaler().fit(xtr)
    sk = LogisticRegression(C=1 / (l2 * len(xtr)), max_iter=5000, tol=1e-8)  # same objective: l2 = 1/(C N)
    sk.fit(scaler.transform(xtr), ytr)
    sk_pred = sk.predict(scaler.transform(xte))
    out = linear_probe(
        torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), l2_grid=[l2], val_fraction=0.0
    )
    assert math.isnan(out["val_top1"]) and out["l2"] == l2
    assert out["top1"] == pytest.approx((sk_pred == yte).mean(), abs=2.5 / len(yte))


def test_linear_probe_sweep_on_digits(digits):
    xtr, xte, ytr, yte = (torch.tensor(a) for a in digits)
    out = linear_probe(xtr, ytr, xte, yte)
    assert out["top1"] > 0.94 and out["val_top1"] > 0.9
    assert {"0.01", "0.001"} <= set(out["val_top1_by_l2"]) <= {"1e-06", "1e-05", "0.0001", "0.001", "0.01"}
    assert out["val_top1"] == max(out["val_top1_by_l2"].values())
    assert 0 <= out["top1"] <= 1 and out["iterations"] > 0


def test_linear_probe_rejects_bad_options(digits):
    xtr, xte, ytr, yte = (torch.tensor(a) for a in digits)
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(xtr, ytr, xte, yte, val_fraction=0.0)
    with pytest.raises(ValueError, match="l2_grid"):
        linear_probe(xtr, ytr, xte, yte, l2_grid=[-1.0])
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe(xtr, ytr[:-1], xte, yte)


def test_linear_probe_sgd_on_digits(digits):
    xtr, xte, ytr, yte = (torch.tensor(a) for a in digits)
    out = linear_probe_sgd(xtr, ytr, xte, yte, epochs=10)
    assert out["top1"] > 0.9


# --- alpha_req ----------------------------------------------------------------------------------------------------


def alpha_req_numpy(z: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """Reference written from the definition: numpy's biased covariance, eigvalsh, weighted least squares in
    log-log with weights 1/k, scikit-learn's R² — independent of the torch code path."""
    from sklearn.metrics import r2_score

    lam = np.sort(np.linalg.eigvalsh(np.cov(np.asarray(z, np.float64), rowvar=False, bias=True)))[::-1]
    k = np.arange(first, last + 1, dtype=np.float64)
    y = np.log(lam[first - 1 : last])
    x = np.stack([-np.log(k), np.ones_like(k)], axis=1)
    w = 1 / k
    coef = np.linalg.solve(x.T @ (x * w[:, None]), x.T @ (w * y))
    return float(coef[0]), float(r2_score(y, x @ coef))


def with_spectrum(lam: torch.Tensor, n: int, g) -> torch.Tensor:
    """(n, D) rows whose biased covariance has exactly the eigenvalues lam (centred orthonormal columns)."""
    d = lam.numel()
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = torch.linalg.qr(u - u.mean(0))[0]  # orthonormal columns, each summing to 0 (centred)
    return math.sqrt(n) * u * lam.sqrt() @ orthonormal(d, d, g).T


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_an_exact_power_law(alpha):
    g = torch.Generator().manual_seed(0)
    lam = torch.arange(1, 129, dtype=torch.float64) ** -alpha
    out = metrics.alpha_req(with_spectrum(lam, 400, g))
    assert out["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert out["r2"] == pytest.approx(1.0, abs=1e-9)
    assert (out["first"], out["last"]) == (6, 100)


def test_alpha_req_equals_the_numpy_reference_on_real_features(digits):
    x_train = torch.from_numpy(digits[0]) @ torch.randn(64, 120, generator=torch.Generator().manual_seed(1))
    out = metrics.alpha_req(x_train, fit_range=(3, 40))
    alpha, r2 = alpha_req_numpy(x_train.numpy(), 3, 40)
    assert out["alpha"] == pytest.approx(alpha, rel=1e-6) and out["r2"] == pytest.approx(r2, rel=1e-6)
    assert out["alpha"] == pytest.approx(metrics.alpha_req(x_train.double(), fit_range=(3, 40))["alpha"], rel=1e-6)


def test_alpha_req_clips_to_the_non_zero_spectrum_and_is_nan_for_a_collapse():
    g = torch.Generator().manual_seed(0)
    few_rows = torch.randn(30, 64, generator=g, dtype=torch.float64)  # covariance rank 29
    assert metrics.alpha_req(few_rows)["last"] == 29
    rank_two = torch.randn(200, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 64, generator=g).double()
    out = metrics.alpha_req(rank_two)
    assert math.isnan(out["alpha"]) and math.isnan(out["r2"]) and out["last"] == 2


@pytest.mark.parametrize(
    "z,kw,match",
    [
        (torch.randn(1, 8), {}, "N >= 2"),
        (torch.randn(8), {}, "2-D"),
        (torch.randn(20, 8), {"fit_range": (5, 5)}, "fit_range"),
        (torch.randn(20, 8), {"fit_range": (0, 5)}, "fit_range"),
        (torch.full((20, 8), float("nan")), {}, "NaN"),
    ],
)
def test_alpha_req_rejects_bad_input(z, kw, match):
    with pytest.raises(ValueError, match=match):
        metrics.alpha_req(z, **kw)


# --- lidar --------------------------------------------------------------------------------------------------------


def lidar_numpy(z: np.ndarray, delta: float, eps: float) -> float:
    """LiDAR written from the paper's sums with numpy/scipy (float64): loops over classes, scipy's sqrtm."""
    from scipy.linalg import sqrtm

    z = np.asarray(z, np.float64)
    n, q, d = z.shape
    mu_i = z.mean(axis=1)
    mu = mu_i.mean(axis=0)
    sb = sum(np.outer(m - mu, m - mu) for m in mu_i) / n
    sw = sum(np.outer(z[i, j] - mu_i[i], z[i, j] - mu_i[i]) for i in range(n) for j in range(q)) / (n * q)
    sw = sw + delta * np.eye(d)
    w = np.linalg.inv(np.real(sqrtm(sw)))
    lam = np.clip(np.linalg.eigvalsh(w @ sb @ w), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def views_of(n, q, d, g, spread=1.0, noise=0.3):
    centres = spread * torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    return centres + noise * torch.randn(n, q, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n,q,d", [(20, 5, 8), (10, 3, 32), (50, 2, 16)])
def test_lidar_equals_the_numpy_reference(n, q, d):
    z = views_of(n, q, d, torch.Generator().manual_seed(n + d))
    assert metrics.lidar(z).item() == pytest.approx(lidar_numpy(z.numpy(), 1e-4, 1e-8), rel=1e-8)
    assert metrics.lidar(z, delta=0.5).item() == pytest.approx(lidar_numpy(z.numpy(), 0.5, 1e-8), rel=1e-8)
    assert metrics.lidar(z.float()).item() == pytest.approx(metrics.lidar(z).item(), rel=1e-4)


def test_lidar_counts_the_directions_that_separate_images_not_those_that_vary_within_them():
    g = torch.Generator().manual_seed(0)
    n, q = 200, 8
    centres = torch.zeros(n, 1, 16, dtype=torch.float64)
    centres[..., :3] = torch.randn(n, 1, 3, generator=g, dtype=torch.float64)  # images differ in 3 directions
    z = centres + 0.1 * torch.randn(n, q, 16, generator=g, dtype=torch.float64)
    assert 2.5 < metrics.lidar(z).item() < 3.5
    # RankMe sees 16 directions of variance once views vary a lot within each image along the other 13
    z[..., 3:] += 3 * torch.randn(n, q, 13, generator=g, dtype=torch.float64)
    assert metrics.rankme(z.reshape(n * q, 16)).item() > 12
    assert 2.5 < metrics.lidar(z).item() < 3.5


def test_lidar_is_invariant_to_an_invertible_linear_map():
    g = torch.Generator().manual_seed(1)
    z = views_of(40, 6, 12, g)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64) + 3 * torch.eye(12, dtype=torch.float64)
    assert metrics.lidar(z @ a, delta=1e-12).item() == pytest.approx(metrics.lidar(z, delta=1e-12).item(), rel=1e-6)


@pytest.mark.parametrize(
    "z,kw,match",
    [
        (torch.randn(10, 8), {}, "3-D"),
        (torch.randn(1, 4, 8), {}, "n >= 2"),
        (torch.randn(5, 1, 8), {}, "q >= 2"),
        (torch.randn(5, 2, 8), {"delta": 0.0}, "delta"),
        (torch.full((5, 2, 8), float("inf")), {}, "NaN or Inf"),
    ],
)
def test_lidar_rejects_bad_input(z, kw, match):
    with pytest.raises(ValueError, match=match):
        metrics.lidar(z, **kw)
