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
    [(dict(name="resnet_nope"), "backbone.name=resnet_nope: not a timm model"),
     (dict(name="torchvision/nope"), "not in torchvision.models"),
     (dict(name="vit_tiny_patch16_224", cifar_stem=True), "no ResNet-style conv1"),
     (dict(name="resnet18", width=8), "apply to small_cnn only")],
)  # fmt: skip
def test_bad_backbones_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(**kwargs)
