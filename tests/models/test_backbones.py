import pytest
import torch

from selfsup.models import SmallCNN, build_backbone, mlp


def test_timm_backbone_with_cifar_stem():
    model = build_backbone("resnet18", cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.num_features) == (2, 512)


def test_torchvision_backbone_and_small_cnn():
    model = build_backbone("torchvision/resnet18", cifar_stem=True)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, model.num_features) == (2, 512)
    cnn = build_backbone("small_cnn", width=8, norm="none")
    assert isinstance(cnn, SmallCNN) and cnn(torch.zeros(2, 3, 16, 16)).shape == (2, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.modules())


def test_mlp_shapes():
    head = mlp(in_dim=32, hidden_dim=16, out_dim=8, num_layers=3, last_batch_norm=True)
    assert head(torch.zeros(4, 32)).shape == (4, 8)
    assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="resnet_nope"), "backbone.name=resnet_nope: not a timm model"),
        (dict(name="torchvision/nope"), "not in torchvision.models"),
        (dict(name="vit_tiny_patch16_224", cifar_stem=True), "no ResNet-style conv1"),
        (dict(name="resnet18", width=8), "apply to small_cnn only"),
        (
            dict(name="vit_tiny_patch16_224", class_token="maybe"),
            r"^backbone.class_token='maybe': expected one of True",
        ),
    ],
)
def test_bad_backbones_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(**kwargs)


def test_vision_transformers_take_small_and_multi_crop_inputs():
    """timm's ViT-Ti with 4 px patches at 32 px (an 8x8 grid) interpolates its position embedding for 16 px local
    crops; torchvision's ViT builds (its feature width probed at its own 224 px)."""
    vit = build_backbone("vit_tiny_patch16_224", img_size=32, patch_size=4, dynamic_img_size=True)
    assert vit.patch_embed.patch_size == (4, 4) and vit.pos_embed.shape[1] == 1 + 8 * 8
    for side in (32, 16):
        assert vit(torch.zeros(2, 3, side, side)).shape == (2, vit.num_features) == (2, 192)
    assert build_backbone("torchvision/vit_b_16").num_features == 768
    with pytest.raises(ValueError, match=r"^backbone.patch_size: timm models only"):
        build_backbone("torchvision/resnet18", patch_size=4)
    with pytest.raises(ValueError, match=r"^backbone.class_token/fc_norm: timm models only"):
        build_backbone("torchvision/vit_b_16", class_token=False, fc_norm=False)


def test_dino_head_normalises_and_fixes_the_last_layer_norm():
    from selfsup.models import dino_head

    head = dino_head(in_dim=16, out_dim=10, hidden_dim=32, bottleneck_dim=8, num_layers=3)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.equal(g, torch.ones_like(g))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10))  # every output row: norm 1
    assert head(torch.randn(4, 16)).shape == (4, 10)
    free = dino_head(in_dim=16, out_dim=10, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_zero_or_negative_head_widths_fail_when_the_run_is_built(tmp_path):
    """``projector.out_dim=0`` used to train (torch builds a 0-wide Linear) and fail after training, in RankMe."""
    from selfsup.train import build
    from tests.config_utils import compose_train
    from tests.runs import TINY

    for bad in ("projector.out_dim=0", "projector.hidden_dim=-4", "projector.num_layers=0"):
        with pytest.raises(ValueError, match=f"{bad}: expected a positive integer"):
            build(compose_train(TINY + [bad], tmp_path))
