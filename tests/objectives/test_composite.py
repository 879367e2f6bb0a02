import pathlib
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup.data.views import NUM_PARAMS, RELATIVE_NAMES, relative_transform
from selfsup.objectives import (
    CAREEquivarianceLoss,
    CompositeObjective,
    InfoNCELoss,
    LDRegLoss,
    SIELoss,
    VICRegLoss,
    ViewBatch,
    call_objective,
)
from selfsup.train.callbacks import ObjectiveSchedule
from tests.objectives.helpers import batch_of, randn

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "objective"


def test_care_config_is_infonce_plus_weighted_care():
    # the chunk count comes from the views config it runs with (views=care: views.shared_chunks=16)
    views, care = OmegaConf.load(CONF.parent / "views" / "care.yaml"), OmegaConf.load(CONF / "care.yaml")
    objective = instantiate(OmegaConf.create({"views": views, "objective": care}).objective)
    assert isinstance(objective, CompositeObjective) and objective.num_views == 4
    z = [randn(32, 6, seed=i) for i in range(4)]
    total = objective.forward_views(batch_of(z))
    nce, care = InfoNCELoss(0.5)(z[0], z[1]), CAREEquivarianceLoss(16)(z[2], z[3])
    torch.testing.assert_close(total, nce + 0.03 * care)
    assert set(objective.last_terms) == {"info_nce", "care"}
    torch.testing.assert_close(objective.last_terms["info_nce"], nce)
    torch.testing.assert_close(objective.last_terms["care"], care)
    assert not objective.last_terms["care"].requires_grad
    with pytest.raises(ValueError, match="forward_views"):
        objective(z[0], z[1])
    with pytest.raises(ValueError, match="4 views"):
        objective.forward_views(batch_of(z[:3]))


def test_gradients_flow_to_each_view_with_its_weight():
    objective = CompositeObjective(
        {"a": {"loss": VICRegLoss(), "weight": 0.5, "views": [0, 1]}, "b": {"loss": VICRegLoss(), "views": [1, 2]}}
    )
    z = [randn(6, 4, seed=i).requires_grad_() for i in range(3)]
    objective.forward_views(batch_of(z)).backward()
    ref = [x.detach().clone().requires_grad_() for x in z]
    (0.5 * VICRegLoss()(ref[0], ref[1]) + VICRegLoss()(ref[1], ref[2])).backward()
    for x, r in zip(z, ref, strict=True):
        torch.testing.assert_close(x.grad, r.grad)


def test_a_schedule_sets_a_terms_weight_and_refuses_a_negative_one_before_training():
    """``<term>.weight`` is schedulable (e.g. DINOv2's KoLeo term ramped down): ``ObjectiveSchedule`` sets it at each
    epoch's start, linearly from ``start`` to ``end``."""
    objective = CompositeObjective(
        {"a": {"loss": VICRegLoss(), "views": [0, 1]}, "b": {"loss": VICRegLoss(), "weight": 0.1, "views": [1, 2]}}
    )
    assert objective.schedulable == ("a.weight", "b.weight")
    module, z = SimpleNamespace(objective=objective), [randn(6, 4, seed=i) for i in range(3)]
    schedule = ObjectiveSchedule("b.weight", start=0.1, end=0.0, warmup_epochs=3)
    schedule.setup(None, module, "fit")
    for epoch, weight in enumerate([0.1, 0.05, 0.0, 0.0]):
        schedule.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        expected = VICRegLoss()(z[0], z[1]) + weight * VICRegLoss()(z[1], z[2])
        torch.testing.assert_close(objective.forward_views(batch_of(z)), expected)
    with pytest.raises(ValueError, match=r"^objective.terms.b.weight=-0.5"):
        ObjectiveSchedule("b.weight", start=0.1, end=-0.5, warmup_epochs=3).setup(None, module, "fit")
    with pytest.raises(ValueError, match=r"has no attribute 'c.weight' to schedule"):
        ObjectiveSchedule("c.weight", start=0.1, end=0.0).setup(None, module, "fit")


def test_extras_are_routed_per_term():
    torch.manual_seed(0)
    sie = SIELoss(2, 2, len(RELATIVE_NAMES)).double()
    ldreg = LDRegLoss(0.5, 0.1, 4)
    objective = CompositeObjective(
        {"sie": {"loss": sie, "weight": 1.0, "views": [0, 2]}, "ld": {"loss": ldreg, "weight": 2.0, "views": [1, 0]}}
    )
    z = [randn(6, 4, seed=i) for i in range(3)]
    feats = [randn(6, 5, seed=10 + i) for i in range(3)]
    params = [randn(6, NUM_PARAMS, seed=20 + i).abs() + 0.5 for i in range(3)]  # positive jitter factors
    calls = []

    class Recording(ViewBatch):
        def transform(self, i, j):
            calls.append((i, j))
            return super().transform(i, j)

    total = objective.forward_views(batch_of(z, feats, params, cls=Recording))
    # the batch carries the recorded params of every view: transform = their relative transform
    expected = sie(z[0], z[2], relative_transform(params[0], params[2])) + 2.0 * ldreg(z[1], z[0], feats[1], feats[0])
    torch.testing.assert_close(total, expected)
    assert calls == [(0, 2)]  # only the term whose forward takes a transform


def test_two_view_forward():
    objective = CompositeObjective({"nce": {"loss": InfoNCELoss(0.3), "weight": 2.0}})
    z_a, z_b = randn(5, 4), randn(5, 4, seed=1)
    torch.testing.assert_close(objective(z_a, z_b), 2.0 * InfoNCELoss(0.3)(z_a, z_b))
    torch.testing.assert_close(call_objective(objective, z_a, z_b, transform=randn(5, 2)), objective(z_a, z_b))


def test_call_objective_passes_only_accepted_extras():
    z_a, z_b, f = randn(6, 4), randn(6, 4, seed=1), randn(6, 3, seed=2)
    torch.testing.assert_close(call_objective(InfoNCELoss(), z_a, z_b, f, f, randn(6, 2)), InfoNCELoss()(z_a, z_b))
    torch.testing.assert_close(call_objective(LDRegLoss(k=4), z_a, z_b, f, 2 * f), LDRegLoss(k=4)(z_a, z_b, f, 2 * f))
    with pytest.raises(ValueError, match="feats_a"):
        call_objective(LDRegLoss(), z_a, z_b)
    with pytest.raises(ValueError, match="transform"):
        call_objective(SIELoss(2, 2, 3), z_a.float(), z_b.float())


@pytest.mark.parametrize(
    "terms,match",
    [
        ({}, "at least one term"),
        ({"x": {"loss": "InfoNCELoss"}}, "terms.x.loss"),
        ({"x": {"loss": InfoNCELoss(), "weight": -1.0}}, "terms.x.weight"),
        ({"x": {"loss": InfoNCELoss(), "views": [0]}}, "terms.x.views"),
        ({"x": {"loss": InfoNCELoss(), "views": [1, 1]}}, "terms.x.views"),
        ({"x": {"loss": InfoNCELoss(), "views": [0, -1]}}, "terms.x.views"),
        ({"x": {"loss": InfoNCELoss(), "wieght": 1.0}}, "unexpected keys"),
    ],
)
def test_bad_terms_refused(terms, match):
    with pytest.raises(ValueError, match=match):
        CompositeObjective(terms)
