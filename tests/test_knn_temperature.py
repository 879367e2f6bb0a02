"""``knn_top1`` at small k is the InstDisc / DINO weighted vote, temperature included (issue 28).

Reference (float64, written here from facebookresearch/dino ``eval_knn.py::knn_classifier``)::

    similarity = test · trainᵀ (both L2-normalised);  distances, indices = similarity.topk(k)
    retrieval_one_hot[label of each neighbour] = 1;   distances_transform = (distances / T).exp_()
    probs = Σ_neighbours one_hot · distances_transform;  prediction = argmax probs

A case is built where the vote at k = 3 depends on the temperature: one neighbour of class 0 at cosine 1 and two of
class 1 at cosine 0.9. With T = 0.07, e^{1/T} = e^{0.1/T} e^{0.9/T} = 4.2 e^{0.9/T} outweighs 2 e^{0.9/T}, so class 0
wins; with the temperature dropped (weights e^{sim}: 2.72 vs 2 · 2.46) or with plain votes (1 vs 2), class 1 wins;
with T = 1 too.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.metrics import knn_top1


def reference_predictions(train, train_labels, test, k, temperature):
    """DINO's knn_classifier vote, float64, one query at a time."""
    train, test = F.normalize(train.double(), dim=1), F.normalize(test.double(), dim=1)
    num_classes = int(train_labels.max()) + 1
    preds = []
    for q in test:
        sims, idx = (train @ q).topk(k)
        votes = torch.zeros(num_classes, dtype=torch.float64)
        for s, i in zip(sims.tolist(), idx.tolist(), strict=True):
            votes[train_labels[i]] += math.exp(s / temperature)
        preds.append(int(votes.argmax()))
    return torch.tensor(preds)


def at_angle(*degrees):
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([rad.cos(), rad.sin()], dim=1)


THETA = math.degrees(math.acos(0.9))  # two class-1 neighbours at cosine 0.9 from the query
# bank: class 0 on the query's direction, class 1 at ±θ, class 2 far away (never among the 3 nearest)
BANK = at_angle(0.0, THETA, -THETA, 150.0, 180.0, 210.0)
BANK_LABELS = torch.tensor([0, 1, 1, 2, 2, 2])
QUERY = at_angle(0.0)


def test_constructed_case_is_what_the_docstring_says():
    # the premise: T changes the k = 3 answer, and dropping T (or weighting every vote 1) gives class 1
    assert reference_predictions(BANK, BANK_LABELS, QUERY, 3, 0.07).item() == 0
    assert reference_predictions(BANK, BANK_LABELS, QUERY, 3, 1.0).item() == 1
    assert math.exp(1.0) < 2 * math.exp(0.9)  # e^{sim} without /T: class 1
    assert math.exp(1 / 0.07) > 2 * math.exp(0.9 / 0.07)


@pytest.mark.parametrize(
    "k,temperature,label",
    [(1, 0.07, 0), (2, 0.07, 0), (3, 0.07, 0), (3, 1.0, 1), (3, 0.5, 1), (4, 0.07, 0), (5, 0.07, 0), (5, 1.0, 1)],
)
def test_temperature_decides_the_small_k_vote(k, temperature, label):
    assert reference_predictions(BANK, BANK_LABELS, QUERY, k, temperature).item() == label
    got = knn_top1(BANK.float(), BANK_LABELS, QUERY.float(), torch.tensor([label]), k=k, temperature=temperature)
    assert got == 1.0, f"k={k}, T={temperature}: expected class {label}"


def test_default_temperature_is_dinos():
    # the default T = 0.07 (DINO's --temperature) is what the k = 3 answer of class 0 needs
    assert knn_top1(BANK, BANK_LABELS, QUERY, torch.tensor([0]), k=3) == 1.0


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("temperature", [0.07, 0.3])
def test_random_features_match_reference_vote(k, temperature):
    g = torch.Generator().manual_seed(k)
    train = torch.randn(60, 6, generator=g, dtype=torch.float64)
    train_labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(40, 6, generator=g, dtype=torch.float64)
    expected = reference_predictions(train, train_labels, test, k, temperature)
    # labels = the reference's predictions: accuracy 1 iff every prediction agrees
    assert knn_top1(train, train_labels, test, expected, k=k, temperature=temperature) == 1.0
    # and against true-ish labels the accuracy is the reference's
    labels = torch.randint(0, 4, (40,), generator=g)
    want = float((expected == labels).double().mean())
    assert knn_top1(train.float(), train_labels, test.float(), labels, k=k, temperature=temperature) == want
