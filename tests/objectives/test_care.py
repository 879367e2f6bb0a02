import pytest
import torch

from selfsup.objectives import CAREEquivarianceLoss
from tests.objectives.helpers import assert_matches, randn


def care_loop(z_a, z_b, num_chunks):
    """From Sharut/CARE cifar10_cifar100_stl10/utils.py (equivariance_loss): per chunk of N // num_chunks rows,
    2 · mean over rows of the squared norm of the off-diagonal Gram difference; mean over chunks. Entry by entry."""
    a = torch.nn.functional.normalize(z_a, dim=1)
    b = torch.nn.functional.normalize(z_b, dim=1)
    size = a.shape[0] // num_chunks
    total = 0
    for c in range(num_chunks):
        rows = range(c * size, (c + 1) * size)
        chunk = sum((a[i] @ a[j] - b[i] @ b[j]) ** 2 for i in rows for j in rows if i != j)
        total = total + 2 * chunk / size
    return total / num_chunks


@pytest.mark.parametrize(
    "n,d,k,seed",
    [(2, 3, 1, 0), (8, 4, 4, 1), (12, 6, 3, 2), (16, 5, 8, 3), (11, 4, 3, 4), (19, 3, 4, 5)],  # last two: leftovers
)
def test_loss_and_grad_match_official_formula(n, d, k, seed):
    z_a, z_b = randn(n, d, seed=seed), randn(n, d, seed=seed + 100)
    assert_matches(CAREEquivarianceLoss(k), lambda a, b: care_loop(a, b, k), z_a, z_b)


def test_edge_cases():
    z = randn(8, 5, seed=7)
    near = z + 1e-7 * randn(8, 5, seed=8)
    assert_matches(CAREEquivarianceLoss(2), lambda a, b: care_loop(a, b, 2), z, near)
    big = randn(8, 5, seed=9, scale=1e6)
    assert_matches(CAREEquivarianceLoss(2), lambda a, b: care_loop(a, b, 2), big, z)


def test_leftover_rows_are_ignored():
    z_a, z_b = randn(11, 4, seed=10), randn(11, 4, seed=11)  # 3 chunks of 3 rows, 2 leftover rows
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss = CAREEquivarianceLoss(3)(a, b)
    loss.backward()
    assert torch.all(a.grad[9:] == 0) and torch.all(b.grad[9:] == 0)
    changed = torch.cat([z_a[:9], randn(2, 4, seed=12)])
    torch.testing.assert_close(CAREEquivarianceLoss(3)(changed, z_b), loss.detach())


def test_orthogonal_maps_and_permutations_within_chunks():
    z_a = randn(12, 6, seed=20)
    q, _ = torch.linalg.qr(randn(6, 6, seed=21))
    loss = CAREEquivarianceLoss(3)
    # the same orthogonal map applied to a whole chunk of view a gives view b: zero loss
    assert loss(z_a, 2.5 * z_a @ q) < 1e-24
    z_b = randn(12, 6, seed=22)
    ref = loss(z_a, z_b)
    torch.testing.assert_close(loss(z_a @ q, z_b), ref)  # invariant under an orthogonal map of either view
    torch.testing.assert_close(loss(z_a, z_b * randn(12, 1, seed=23).abs()), ref)  # row scaling: normalised
    perm = torch.cat([torch.randperm(4, generator=torch.Generator().manual_seed(c)) + 4 * c for c in range(3)])
    torch.testing.assert_close(loss(z_a[perm], z_b[perm]), ref)  # order inside each chunk
    torch.testing.assert_close(loss(z_b, z_a), ref)


def test_batch_too_small_for_the_chunks_refused():
    with pytest.raises(ValueError, match="at least 2 rows per chunk"):
        CAREEquivarianceLoss(8)(randn(15, 4), randn(15, 4, seed=1))


@pytest.mark.parametrize("num_chunks", [0, -2, 2.5, True])
def test_bad_hyperparameters_refused(num_chunks):
    with pytest.raises(ValueError, match="objective.num_chunks="):
        CAREEquivarianceLoss(num_chunks)
