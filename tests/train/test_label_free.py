"""Label-free scores during training: α-ReQ and LiDAR at validation (of the encoder the checkpoint holds), and the
top covariance eigenvalues of the projections (stepwise learning) in metrics.csv."""

import pytest
import torch

from selfsup.data.views import generator_for
from selfsup.evaluate.features import Encoder, extract
from selfsup.metrics import alpha_req, covariance_eigenvalues, lidar
from selfsup.train import build, run
from tests.config_utils import compose_train
from tests.runs import TINY, rows, val_metrics

SMALL_LIDAR = ["label_free.lidar_images=40", "label_free.lidar_views=4"]


def test_validation_logs_alpha_req_and_lidar_of_the_checkpointed_encoder(tmp_path):
    cfg = compose_train([*TINY, "trainer.max_epochs=1", *SMALL_LIDAR], tmp_path)
    run(cfg)
    logged = val_metrics(tmp_path)
    datamodule, module, _ = build(cfg)
    module.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    encoder, width = Encoder(module.backbone, module.projector), module.backbone.num_features
    queries, _ = extract(encoder, datamodule.eval_datasets()[1])
    views = datamodule.lidar_dataset()
    assert len(views) == 40 * 4 and len(set(views.source.labels[views.rows].tolist())) == 10  # class by class
    both, _ = extract(encoder, views)
    expected = {
        "val/alpha_req": alpha_req(queries[:, width:])["alpha"],
        "val/alpha_req_backbone": alpha_req(queries[:, :width])["alpha"],
        "val/alpha_req_r2": alpha_req(queries[:, width:])["r2"],
        "val/lidar": lidar(both[:, width:].reshape(40, 4, -1)).item(),
        "val/lidar_backbone": lidar(both[:, :width].reshape(40, 4, -1)).item(),
    }
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-4)
    assert 1 <= logged["val/lidar"] <= 39


def test_lidar_views_are_the_first_training_view_drawn_per_image_and_view(tmp_path):
    datamodule, _, _ = build(compose_train([*TINY, *SMALL_LIDAR], tmp_path))
    views = datamodule.lidar_dataset()
    first_view = datamodule.views.views[0]
    row = views.rows[3]
    image = views.source.image(row)
    x, label = views[3 * 4 + 2]  # image 3, view 2
    assert torch.equal(x, first_view(image, generator_for(0, 2, row, 2))[0]) and label == views.source.labels[row]
    assert not torch.equal(x, views[3 * 4 + 1][0]) and torch.equal(x, views[3 * 4 + 2][0])  # per view, repeatable


def test_an_incomplete_lidar_set_logs_no_lidar(tmp_path):
    run(compose_train([*TINY, "trainer.max_epochs=1", *SMALL_LIDAR, "trainer.limit_val_batches=1"], tmp_path))
    logged = val_metrics(tmp_path)
    assert "val/lidar" not in logged and "val/alpha_req" in logged


@pytest.mark.parametrize(
    "override,key",
    [
        ("label_free.lidar_views=1", "label_free.lidar_views=1"),
        ("label_free.lidar_images=-3", "label_free.lidar_images=-3"),
        ("label_free.alpha_fit_range=[5,5]", "label_free.alpha_fit_range"),
        ("label_free.lidar_delta=0", "label_free.lidar_delta=0"),
    ],
)
def test_bad_label_free_settings_are_refused_in_one_line(override, key, tmp_path):
    with pytest.raises(ValueError, match=key) as info:
        build(compose_train([*TINY, override], tmp_path))
    assert "\n" not in str(info.value)


def test_lidar_images_below_two_turn_the_third_loader_off(tmp_path):
    datamodule, _, _ = build(compose_train([*TINY, "label_free.lidar_images=0"], tmp_path))
    assert datamodule.lidar is None and datamodule.lidar_dataset() is None


def test_top_eigenvalues_of_the_projections_are_logged_descending(tmp_path):
    cfg = compose_train(
        [
            *TINY,
            "trainer.max_steps=7",
            "callbacks.collapse.every_n_steps=3",
            "callbacks.collapse.eigenvalues=4",
            "trainer.limit_val_batches=0",
        ],
        tmp_path,
    )
    run(cfg)
    logged = rows(tmp_path)
    steps = sorted({s for s, k in logged if k == "train/eigval_1"})
    assert steps == [0, 3, 6]  # optimiser steps 1, 4, 7 at their rows
    for s in steps:
        values = [logged[(s, f"train/eigval_{k}")] for k in range(1, 5)]
        assert values == sorted(values, reverse=True) and values[-1] > 0
    assert not any(k == "train/eigval_5" for _, k in logged)


def test_covariance_eigenvalues_match_numpy():
    import numpy as np

    z = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.sort(np.linalg.eigvalsh(np.cov(z.numpy(), rowvar=False, bias=True)))[::-1]
    assert covariance_eigenvalues(z).numpy() == pytest.approx(expected, rel=1e-10)


def test_the_defaults_are_conf_train_yamls():
    """One owner: a config without label_free gets conf/train.yaml's values, key by key."""
    from omegaconf import OmegaConf

    from selfsup.config import CONF_DIR
    from selfsup.train.label_free import LabelFree

    written = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml").label_free)
    got = LabelFree.from_config(None)
    assert got == LabelFree(**written)
    assert LabelFree.from_config({"lidar_images": 0}).lidar is None
    with pytest.raises(ValueError, match=r"label_free: unexpected keys \['lidar_image'\]"):
        LabelFree.from_config({"lidar_image": 0})
