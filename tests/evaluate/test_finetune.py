"""Fine-tuning (MAE's protocol): every parameter's LR at every step against a hand-computed layer-decay schedule,
weight decay where MAE puts it, the encoder passed in left untouched, and a random-init CNN fine-tuned on digits
reaching a stated accuracy."""

import math

import pytest
import timm
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from selfsup.evaluate.finetune import check_settings, finetune, lr_at, param_groups


def tiny_vit(depth=3):
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=8, patch_size=4, depth=depth, embed_dim=16, num_heads=2, num_classes=0
    )


def hand_layer(name: str, depth: int) -> int:
    """BEiT / MAE layer ids written out for a ViT of ``depth`` blocks: embeddings 0, block i → i + 1, rest depth + 1."""
    for prefix in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        if name == prefix:
            return 0
    for i in range(depth):
        if name.startswith(f"blocks.{i}."):
            return i + 1
    assert name.startswith(("norm.", "head.", "fc_norm.")), name
    return depth + 1


def test_vit_groups_decay_the_lr_layer_by_layer_and_exempt_what_mae_exempts():
    encoder, head = tiny_vit(), nn.Linear(16, 5)
    groups = param_groups(encoder, head, weight_decay=0.05, layer_decay=0.75)
    seen = {}
    for g in groups:
        for name in g["names"]:
            seen[name] = (g["lr_scale"], g["weight_decay"])
    expected_names = [n for n, _ in encoder.named_parameters()] + ["head.weight", "head.bias"]
    assert sorted(seen) == sorted(expected_names)
    shapes = dict(encoder.named_parameters()) | {"head.weight": head.weight, "head.bias": head.bias}
    for name, (scale, wd) in seen.items():
        assert scale == pytest.approx(0.75 ** (4 - hand_layer(name, 3)), rel=1e-12), name
        exempt = shapes[name].ndim == 1 or name in ("cls_token", "pos_embed")
        assert wd == (0.0 if exempt else 0.05), name
    assert seen["head.weight"][0] == 1.0 and seen["blocks.0.attn.qkv.weight"][0] == pytest.approx(0.75**3)


def test_a_cnn_trains_every_layer_at_the_full_lr():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    groups = param_groups(encoder, nn.Linear(4, 2), weight_decay=0.05, layer_decay=0.5)
    assert {g["lr_scale"] for g in groups} == {1.0}
    assert sum(len(g["params"]) for g in groups) == 6


def test_every_parameter_follows_the_hand_computed_schedule(monkeypatch):
    """3 epochs of 4 steps (16 images, batch 4), warm-up 1 epoch, blr 1e-3 → lr 1.5625e-5 × batch/256."""
    encoder = tiny_vit(depth=2)
    encoder.num_features = 16
    images = [(torch.randn(3, 8, 8), i % 3) for i in range(16)]
    recorded = []

    def record(opt, args, kwargs):
        recorded.append({n: g["lr"] for g in opt.param_groups for n in g["names"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        finetune(encoder, images, images[:6], 3, epochs=3, warmup_epochs=1, batch_size=4, blr=1e-3, min_lr=1e-6)
    finally:
        handle.remove()
    assert len(recorded) == 12
    peak = 1e-3 * 4 / 256
    for step, lrs in enumerate(recorded):
        epoch = step / 4
        if epoch < 1:
            base = peak * epoch
        else:
            base = 1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / 2))
        for name, lr in lrs.items():
            assert lr == pytest.approx(base * 0.75 ** (3 - hand_layer(name, 2)), rel=1e-12, abs=1e-18), (step, name)
    assert lr_at(0.5, 1.0, 0.0, 1, 3) == 0.5 and lr_at(2.0, 1.0, 0.0, 1, 3) == pytest.approx(0.5)


def test_the_encoder_passed_in_is_not_changed():
    encoder = tiny_vit(depth=1)
    encoder.num_features = 16
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = [(torch.randn(3, 8, 8), i % 2) for i in range(8)]
    result = finetune(encoder, images, images, 2, epochs=1, warmup_epochs=0, batch_size=4)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert 0 <= result["top1"] <= 1 and math.isfinite(result["train_loss"])


def test_bad_settings_are_refused_in_one_line():
    good = dict(epochs=2, warmup_epochs=1, batch_size=8, blr=1e-3, min_lr=0.0, weight_decay=0.05, layer_decay=0.75)
    check_settings(**good, smoothing=0.1)
    for key, value, message in (
        ("layer_decay", 1.5, r"eval.finetune.layer_decay=1.5: expected"),
        ("warmup_epochs", 2, r"eval.finetune.warmup_epochs=2: expected a number in \[0, 2\)"),
        ("epochs", 0, "eval.finetune.epochs=0"),
        ("blr", -1.0, "eval.finetune.blr=-1.0"),
    ):
        with pytest.raises(ValueError, match=message):
            check_settings(**(good | {key: value}), smoothing=0.1)


@pytest.mark.slow
def test_a_random_init_cnn_fine_tuned_on_digits_reaches_70_percent():
    """The quickstart's small CNN at random init, 10 epochs on the 1,437 training digits (16 px, crops of 35–100%
    of the area, blr 4e-3): 76.1% on the 360 held-out digits here (chance: 10%)."""
    from hydra.utils import instantiate

    from selfsup.evaluate.probes import AugmentedImages
    from selfsup.models import build_backbone
    from tests.evaluate.test_evaluate import DIGITS

    train, test = instantiate(DIGITS).eval_datasets()
    torch.manual_seed(0)
    encoder = build_backbone("small_cnn", pretrained=False, in_chans=3)
    result = finetune(encoder, AugmentedImages(train, (0.35, 1.0)), test, 10, epochs=10, blr=4e-3)
    assert result["top1"] >= 0.70, result
