"""Rotation as an equivariant task (docs/rotation.md): the view op turns exactly the recorded square by the recorded
quarter turns (against numpy's rot90, the official codes' convention) and leaves every other pixel and every other
draw alone; the boxes follow LoRot's distributions; the objective's cross-entropy and labels (k, 4q + k) against a
float64 reference; bad settings refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.data.views import NUM_PARAMS, Slot, ViewAugment
from selfsup.objectives import RotationPrediction, RunFacts
from selfsup.objectives.rotation import rotation_labels
from tests.objectives.helpers import batch_of

S = 32


def draws(mode: str, n: int = 200):
    view = ViewAugment(S, rot90=mode)
    return view, [view.sample(torch.Generator().manual_seed(i), 40, 44) for i in range(n)]


@pytest.mark.parametrize("mode", ["image", "lorot_i", "lorot_e"])
def test_the_recorded_square_is_turned_and_nothing_else(mode):
    """apply(p) = apply(p with k = 0), with the square [y0, y0 + r) x [x0, x0 + r) replaced by np.rot90(square, k)
    (counter-clockwise, as RotNet's and LoRot's code turn images); the other parameters are the draws of the same
    view without rot90."""
    view, params = draws(mode, 40)
    plain = ViewAugment(S)
    img = torch.randint(0, 256, (3, 40, 44), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for i, p in enumerate(params):
        assert torch.equal(p[: Slot.ROT_K], plain.sample(torch.Generator().manual_seed(i), 40, 44)[: Slot.ROT_K])
        k = int(p[Slot.ROT_K])
        x0, y0, r = (round(float(v) * S) for v in p[Slot.ROT_X0 : Slot.ROT_SIZE + 1])
        unturned = p.clone()
        unturned[Slot.ROT_K] = 0
        base = view.apply(img, unturned).numpy()
        expected = base.copy()
        expected[:, y0 : y0 + r, x0 : x0 + r] = np.rot90(base[:, y0 : y0 + r, x0 : x0 + r], k, axes=(1, 2))
        np.testing.assert_array_equal(view.apply(img, p).numpy(), expected)
    assert {int(p[Slot.ROT_K]) for p in params} == {0, 1, 2, 3}


def test_boxes_follow_each_variant():
    _, image = draws("image")
    assert all(p[Slot.ROT_X0 : Slot.ROT_SIZE + 1].tolist() == [0, 0, 1] for p in image)
    _, local = draws("lorot_i", 400)
    boxes = [tuple(round(float(v) * S) for v in p[Slot.ROT_X0 : Slot.ROT_SIZE + 1]) for p in local]
    sizes = {r for _, _, r in boxes}
    assert sizes == set(range(2, S // 2 + 1))  # r uniform in {2, ..., W // 2}
    assert all(0 <= x0 <= S - r - 1 and 0 <= y0 <= S - r - 1 for x0, y0, r in boxes)  # rand_bbox's corner range
    _, quadrants = draws("lorot_e")
    corners = {(round(float(p[Slot.ROT_X0]) * S), round(float(p[Slot.ROT_Y0]) * S)) for p in quadrants}
    assert corners == {(0, 0), (16, 0), (0, 16), (16, 16)}
    labels = rotation_labels(torch.stack(quadrants), quadrant=True)
    for p, y in zip(quadrants, labels.tolist()):
        x0, y0 = round(float(p[Slot.ROT_X0]) * S), round(float(p[Slot.ROT_Y0]) * S)
        assert y == 4 * (2 * (y0 == 16) + (x0 == 16)) + int(p[Slot.ROT_K])
    assert set(labels.tolist()) == set(range(16))


def reference(feats, weight, bias, labels):
    """mean_b −log softmax(W f_b + b)[y_b], float64."""
    logits = feats @ weight.T + bias
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(labels)), labels]).mean()


@pytest.mark.parametrize("quadrant", [False, True])
def test_loss_against_a_float64_reference(quadrant):
    g = torch.Generator().manual_seed(3)
    objective = RotationPrediction(quadrant=quadrant)
    objective.attach(RunFacts(embedding_dim=4, feature_dim=6))
    objective.double()
    assert objective.head.out_features == (16 if quadrant else 4)
    _, params = draws("lorot_e", 18)
    views = [torch.stack(params[:9]).double(), torch.stack(params[9:]).double()]
    feats = [torch.randn(9, 6, generator=g, dtype=torch.float64) for _ in views]
    loss = objective.forward_views(batch_of([torch.zeros(9, 4)] * 2, feats=feats, params=views))
    w, b = objective.head.weight, objective.head.bias
    expected = sum(reference(f, w, b, rotation_labels(p, quadrant)) for f, p in zip(feats, views)) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    loss.backward()
    assert objective.head.weight.grad.abs().sum() > 0
    top1 = objective.terms()["rotation_top1"]
    preds = [(f @ w.T + b).argmax(1) == rotation_labels(p, quadrant) for f, p in zip(feats, views)]
    assert float(top1) == pytest.approx(float(torch.cat(preds).double().mean()))


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"views.rot90='quarter': expected one of \['none', 'image'"):
        ViewAugment(S, rot90="quarter")
    with pytest.raises(ValueError, match=r"views.rot90=lorot_i: views.size=4 is too small"):
        ViewAugment(4, rot90="lorot_i")
    with pytest.raises(ValueError, match=r"objective.views='local': expected 'global' or 'all'"):
        RotationPrediction(views="local")
    objective = RotationPrediction(in_dim=6)
    plain = torch.zeros(5, NUM_PARAMS)
    with pytest.raises(ValueError, match=r"view 0 records no rotated square: set views.views.<its name>.rot90"):
        objective.forward_views(batch_of([torch.zeros(5, 4)] * 2, feats=[torch.zeros(5, 6)] * 2, params=[plain] * 2))
    with pytest.raises(ValueError, match=r"objective.in_dim=6: the backbone's features are 8 wide"):
        objective.attach(RunFacts(embedding_dim=4, feature_dim=8))
    from selfsup.data.gpu_views import as_gpu_view

    with pytest.raises(ValueError, match=r"views.rot90=image: the device path does not rotate squares"):
        as_gpu_view(ViewAugment(S, rot90="image"))
