"""Few-shot episodes and clustering scores against independent references: scikit-learn's LogisticRegression on the
same fixed episodes, scikit-learn's NMI / ARI / KMeans, and rfs's confidence interval written out with scipy."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from selfsup.evaluate.protocols import ari, clustering, confidence_interval95, fewshot, fewshot_episodes, kmeans, nmi


def blobs(n_per_class=30, classes=6, dim=16, spread=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64) * 2
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), labels


def test_episodes_draw_distinct_classes_and_disjoint_support_and_queries():
    _, labels = blobs(n_per_class=20)
    ep = fewshot_episodes(labels, ways=4, shots=3, queries=5, episodes=50, seed=1)
    assert ep["support"].shape == (50, 12) and ep["query"].shape == (50, 20)
    for s, q in zip(ep["support"], ep["query"], strict=True):
        assert not set(s.tolist()) & set(q.tolist())
        ls, lq = labels[s].view(4, 3), labels[q].view(4, 5)
        assert (ls == ls[:, :1]).all() and (lq == ls[:, :1]).all()  # way i: one class, support and queries
        assert ls[:, 0].unique().numel() == 4
    again = fewshot_episodes(labels, ways=4, shots=3, queries=5, episodes=50, seed=1)
    assert torch.equal(again["support"], ep["support"]) and torch.equal(again["query"], ep["query"])
    assert not torch.equal(fewshot_episodes(labels, 4, 3, 5, 50, seed=2)["support"], ep["support"])


@pytest.mark.parametrize("shots,C", [(1, 1.0), (5, 1.0), (5, 0.1)])
def test_fewshot_equals_sklearn_logistic_regression_on_the_same_episodes(shots, C):
    x, labels = blobs(n_per_class=25, spread=3.0)  # overlapping classes: accuracies well below 1
    got = fewshot(x, labels, ways=5, shots=shots, queries=15, episodes=40, C=C, seed=3, chunk=16)
    ep = fewshot_episodes(labels, 5, shots, 15, 40, seed=3)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()  # rfs: L2-normalised features
    ref = []
    for s, q in zip(ep["support"], ep["query"], strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # multi_class="multinomial" is sklearn's default now
            clf = LogisticRegression(C=C, solver="lbfgs", max_iter=1000, tol=1e-10, random_state=0)
        clf.fit(xn[s], ep["support_labels"].numpy())
        ref.append((clf.predict(xn[q]) == ep["query_labels"].numpy()).mean())
    np.testing.assert_allclose(got["accuracies"].numpy(), ref, atol=1e-12)
    assert got["mean"] == pytest.approx(np.mean(ref), abs=1e-12)
    assert 0.3 < got["mean"] < 0.95  # a test that could tell a wrong classifier
    n = len(ref)
    assert got["ci95"] == pytest.approx(stats.sem(ref) * stats.t.ppf(0.975, n - 1), rel=1e-9)


def test_confidence_interval_matches_rfs_definition():
    acc = torch.tensor([0.5, 0.6, 0.7, 0.9, 0.4], dtype=torch.float64)
    assert confidence_interval95(acc) == pytest.approx(stats.sem(acc.numpy()) * stats.t._ppf(0.975, 4), rel=1e-12)


def test_fewshot_refuses_impossible_episodes_in_one_line():
    _, labels = blobs(n_per_class=10, classes=4)
    labels[0] = 3  # class 0 keeps 9 rows
    with pytest.raises(ValueError, match=r"eval.fewshot.shots=5 \+ eval.fewshot.queries=5: class 0 has only 9"):
        fewshot_episodes(labels, ways=3, shots=5, queries=5)
    with pytest.raises(ValueError, match=r"eval.fewshot.ways=5: the split has only 4 classes"):
        fewshot_episodes(labels, ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match="eval.fewshot.shots"):
        fewshot_episodes(labels, ways=2, shots=0, queries=1)


@pytest.mark.parametrize("seed", range(5))
def test_nmi_and_ari_equal_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 7, (300,), generator=g)
    b = torch.where(torch.rand(300, generator=g) < 0.6, a * 2 + 5, torch.randint(0, 9, (300,), generator=g))
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_nmi_and_ari_edge_cases_equal_sklearn():
    same, one, other = torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long), torch.tensor([3, 3, 7, 7])
    for a, b in [(same, other), (one, one), (same, one), (one, same), (torch.arange(4), same)]:
        assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12), (a, b)
        assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12), (a, b)


def test_kmeans_finds_sklearns_partition_and_inertia():
    x, labels = blobs(n_per_class=40, classes=5, spread=1.0, seed=4)
    assign, centres, inertia = kmeans(x, 5, n_init=10, seed=0)
    ref = KMeans(5, n_init=10, random_state=0).fit(x.numpy())
    assert adjusted_rand_score(ref.labels_, assign) == 1.0
    assert inertia == pytest.approx(ref.inertia_, rel=1e-9)
    assert centres.shape == (5, 16)
    # overlapping blobs: several local optima; the best of 10 starts is as good as scikit-learn's best of 10
    x, _ = blobs(n_per_class=40, classes=8, spread=3.0, seed=5)
    _, _, inertia = kmeans(x, 8, n_init=10, seed=0)
    assert inertia <= KMeans(8, n_init=10, random_state=0).fit(x.numpy()).inertia_ * 1.01


def test_kmeans_refills_an_empty_cluster():
    x = torch.tensor([[0.0], [0.0], [0.0], [10.0]], dtype=torch.float64)
    assign, _, inertia = kmeans(x, 2, n_init=1, seed=0)
    assert sorted(torch.bincount(assign, minlength=2).tolist()) == [1, 3] and inertia == 0.0


def test_clustering_scores_separated_classes_near_one_and_shuffled_labels_near_zero():
    x, labels = blobs(n_per_class=40, classes=5, spread=0.3, seed=6)
    good = clustering(x, labels, seed=0)
    assert good["nmi"] > 0.99 and good["ari"] > 0.99 and good["clusters"] == 5
    bad = clustering(x, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))], seed=0)
    assert abs(bad["ari"]) < 0.05 and bad["nmi"] < 0.1
