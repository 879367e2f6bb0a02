"""TLDR pieces against float64 references: exact kNN, positives, the scaled Barlow Twins loss, networks, training."""

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.metrics import knn_top1
from selfsup.neighbours import precision_at_k
from selfsup.objectives import BarlowTwinsLoss
from selfsup.reduce import TLDR, fit, knn_graph, sample_positives, transform
from selfsup.reduce.tldr import build_encoder, build_projector


def reference_scores(x: np.ndarray, metric: str) -> np.ndarray:
    """(N, N) float64 similarity (larger = nearer), brute force, one pair at a time for the Euclidean case."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        return u @ u.T
    if metric == "inner_product":
        return x @ x.T
    n = x.shape[0]
    d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    return -d


def reference_knn(x, k, metric) -> np.ndarray:
    s = reference_scores(x, metric)
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "inner_product", "euclidean"])
def test_knn_graph_equals_float64_brute_force(metric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 9, dtype=torch.float64, generator=g) * torch.rand(70, 1, dtype=torch.float64, generator=g)
    got = knn_graph(x, k=6, metric=metric, chunk_size=16)
    assert got.dtype == torch.long and got.shape == (70, 6)
    np.testing.assert_array_equal(got.numpy(), reference_knn(x.numpy(), 6, metric))


def test_knn_graph_is_invariant_to_chunking():
    x = torch.randn(101, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = knn_graph(x, k=4, metric="euclidean", chunk_size=1000)
    for chunk in (1, 7, 100, None):
        assert torch.equal(knn_graph(x, k=4, metric="euclidean", chunk_size=chunk), full)


def test_knn_graph_float32_neighbours_are_as_near_as_the_reference():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    got = knn_graph(x, k=5, metric="euclidean", chunk_size=33)
    s = reference_scores(x.numpy(), "euclidean")
    np.fill_diagonal(s, -np.inf)
    best = -np.sort(-s, axis=1)[:, :5]  # the reference's k largest scores, per row
    got_scores = np.take_along_axis(s, got.numpy(), axis=1)
    np.testing.assert_allclose(got_scores, best, rtol=1e-5, atol=1e-4)
    assert (got != torch.arange(200)[:, None]).all()


def test_duplicates_exclude_the_row_itself_not_its_copy():
    base = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = torch.cat([base, base])  # row i and row i + 20 are equal
    got = knn_graph(x, k=1, metric="cosine")
    np.testing.assert_array_equal(got[:, 0].numpy(), np.r_[np.arange(20, 40), np.arange(20)])


def test_positives_are_uniform_among_the_k_nearest():
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    knn = knn_graph(x, k=4)
    index = torch.arange(40).repeat(500)  # 20,000 draws, 500 per row
    pos = sample_positives(knn, index, torch.Generator().manual_seed(0))
    slot = (knn[index] == pos[:, None]).int().argmax(1)
    assert (knn[index] == pos[:, None]).any(1).all()  # every positive is one of the row's k neighbours
    counts = torch.bincount(slot, minlength=4).double()
    chi2 = ((counts - 5000) ** 2 / 5000).sum().item()
    assert chi2 < 16.27  # chi-square, 3 dof, p = 0.001


def official_loss_float64(z1, z2, scale, lambd):
    """naver/tldr tldr/loss.py after TLDR_Module.bn (BatchNorm1d(affine=False), training mode), in float64 loops."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = [[sum(a[r, i].item() * b[r, j].item() for r in range(n)) / n for j in range(d)] for i in range(d)]
    on = sum((c[i][i] - 1) ** 2 for i in range(d)) * scale
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) * scale
    return on + lambd * off


def test_loss_is_the_official_scaled_barlow_twins_in_float64():
    torch.manual_seed(0)
    model = TLDR(7, n_components=3, encoder="mlp-1-8", projector="mlp-1-6", lambd=0.02, scale_loss=0.25).double()
    x, x_pos = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    z1, z2 = model.projector(model.encoder(x)), model.projector(model.encoder(x_pos))
    expected = official_loss_float64(z1.detach(), z2.detach(), 0.25, 0.02)
    assert model.loss(x, x_pos).item() == pytest.approx(expected, rel=1e-10)
    # the same value as the repo's BarlowTwinsLoss times the scale (no second copy of the loss)
    assert model.loss(x, x_pos).item() == pytest.approx(0.25 * BarlowTwinsLoss(lambd=0.02)(z1, z2).item(), rel=1e-12)


def test_network_strings_build_the_official_layouts():
    enc = build_encoder(10, 4, "linear")
    assert len(enc) == 1 and enc[0].bias is not None and enc[0].weight.shape == (4, 10)
    proj = build_projector(4, "mlp-2-2048")
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(2048, 4), (2048, 2048), (2048, 2048)]
    assert all(m.bias is None for m in linears) and sum(isinstance(m, nn.ReLU) for m in proj) == 2
    enc = build_encoder(10, 4, "linear-1-6")
    assert [type(m) for m in enc] == [nn.Linear, nn.BatchNorm1d, nn.Linear]
    enc = build_encoder(10, 4, "mlp-2-6")
    assert [type(m) for m in enc] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert build_projector(4, None) is None


@pytest.mark.parametrize("spec", ["mlp", "conv-1-8", "mlp-2", "linear-1-0", "MLP-1-8"])
def test_bad_network_strings(spec):
    with pytest.raises(ValueError, match=r"tldr.encoder="):
        build_encoder(10, 4, spec)


def test_bad_arguments():
    x = torch.randn(10, 3)
    for k in (0, 10, 11):
        with pytest.raises(ValueError, match=rf"knn.k={k}: expected an integer in \[1, 9\]"):
            knn_graph(x, k=k)
    with pytest.raises(ValueError, match="knn.metric='l1'"):
        knn_graph(x, k=2, metric="l1")
    with pytest.raises(ValueError, match="knn.chunk_size=0"):
        knn_graph(x, k=2, chunk_size=0)
    with pytest.raises(ValueError, match="tldr.n_components=0"):
        TLDR(3, n_components=0)
    with pytest.raises(ValueError, match="train.batch_size=11"):
        fit(TLDR(3, 2, projector=None), x, knn_graph(x, 2), batch_size=11)


def blobs(n_per: int, classes: int, dim: int, seed: int):
    """Gaussian clusters in a random 4-d subspace of R^dim plus isotropic noise in every direction."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, 4, generator=g))[0]  # (dim, 4)
    centres = torch.randn(classes, 4, generator=g) * 4
    labels = torch.arange(classes).repeat_interleave(n_per)
    x = (centres[labels] + torch.randn(len(labels), 4, generator=g)) @ basis.T
    return x + 0.8 * torch.randn(len(labels), dim, generator=g), labels


@pytest.fixture
def one_thread():
    """Tiny matrices: threads only contend on a shared CPU. The count is process-wide — later tests' float
    reductions, and so their bit-for-bit comparisons with subprocess runs, depend on it — so it is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_fit_learns_a_neighbourhood_preserving_map(one_thread):
    x, y = blobs(150, 4, 32, seed=0)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    x, y = x[perm], y[perm]
    xtr, ytr, xt, yt = x[:450], y[:450], x[450:], y[450:]
    knn = knn_graph(xtr, k=5)
    torch.manual_seed(0)
    model = TLDR(32, n_components=4, projector="mlp-1-64")
    z0, zt0 = transform(model.encoder, xtr), transform(model.encoder, xt)  # the random initial projection
    stats = fit(model, xtr, knn, epochs=100, batch_size=90, lr=0.5, warmup_epochs=2, log_every=0)
    assert stats["steps"] == 500 and stats["last_epoch_loss"] < 0.5 * stats["first_loss"]
    z, zt = transform(model.encoder, xtr), transform(model.encoder, xt)
    assert z.shape == (450, 4) and torch.isfinite(z).all()
    # the 4-d TLDR space separates the classes far better than its random start, close to the 32-d input
    acc0, acc = knn_top1(z0, ytr, zt0, yt, k=10), knn_top1(z, ytr, zt, yt, k=10)
    acc_in = knn_top1(xtr, ytr, xt, yt, k=10)
    assert acc > 0.88 and acc > acc0 + 0.1 and acc > acc_in - 0.08, (acc0, acc, acc_in)
    assert precision_at_k(z, ytr, zt, yt, k=10) > precision_at_k(z0, ytr, zt0, yt, k=10) + 0.1
