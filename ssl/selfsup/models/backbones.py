"""Encoders: any timm model, any torchvision classifier (``torchvision/<name>``), or the tiny CNN of the quickstart.

Every builder returns an ``nn.Module`` mapping (B, C, H, W) to features (B, F) with the feature width in
``num_features``. timm is the registry; we add no registry of our own.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from selfsup import checks

TORCHVISION_PREFIX = "torchvision/"


def replace_cifar_stem(model: nn.Module, name: str, in_chans: int) -> None:
    """Replace a ResNet-style 7x7/2 ``conv1`` + ``maxpool`` with a 3x3/1 conv and no pooling (32 px inputs)."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        raise ValueError(
            f"backbone.cifar_stem=true: backbone.name={name} has no ResNet-style conv1 + maxpool stem to replace"
        )
    model.conv1 = nn.Conv2d(in_chans, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def build_backbone(
    name: str,
    cifar_stem: bool = False,
    pretrained: bool = False,
    in_chans: int = 3,
    width: int | None = None,
    norm: str | None = None,
    img_size: int | None = None,
    patch_size: int | None = None,
    dynamic_img_size: bool | None = None,
    global_pool: str | None = None,
    depth: int | None = None,
    class_token: bool | None = None,
    fc_norm: bool | None = None,
) -> nn.Module:
    """Build an encoder without classification head.

    Args:
        name: a timm model name (``timm.list_models()``), ``torchvision/<name>`` for torchvision.models, or
            ``small_cnn`` for :class:`SmallCNN`.
        cifar_stem: swap in a 3x3 stride-1 first conv and drop the max-pool (ResNets on 32 px images);
            ``small_cnn`` already has such a stem.
        pretrained: load the library's pretrained weights (needs internet on first use).
        in_chans: input channels.
        width, norm: ``small_cnn`` only (defaults 32 and ``"batch"``).
        img_size, patch_size, dynamic_img_size: timm vision transformers: the input size the position embedding is
            made for, the patch size (4 for 32 px CIFAR images), and interpolating the position embedding for
            other input sizes (multi-crop's local views).
        global_pool: timm models: what the features are — for ViTs ``"token"`` (the class token) or ``"avg"`` (the
            mean of the patch tokens); each masked recipe declares the one its paper evaluates (docs/tokens.md).
        depth: timm vision transformers: the number of blocks (a shallower ViT of the same width: CPU budgets).
        class_token, fc_norm: timm vision transformers: whether the ViT has a class token, and whether its final
            LayerNorm normalises the pooled features only (timm's default with ``global_pool="avg"``) instead of
            every output token. I-JEPA's ViT has no class token and normalises every token (docs/tokens.md).
    """
    if name == "small_cnn":
        if pretrained:
            raise ValueError("backbone.pretrained=true: small_cnn has no pretrained weights")
        return SmallCNN(width=width or 32, norm=norm or "batch", in_chans=in_chans)
    if width is not None or norm is not None:
        raise ValueError(f"backbone.width/backbone.norm apply to small_cnn only, not backbone.name={name}")
    vit = {
        k: v
        for k, v in dict(
            img_size=img_size,
            patch_size=patch_size,
            dynamic_img_size=dynamic_img_size,
            global_pool=global_pool,
            depth=depth,
            class_token=class_token,
            fc_norm=fc_norm,
        ).items()
        if v is not None
    }
    for key in ("dynamic_img_size", "class_token", "fc_norm"):
        if key in vit:
            checks.one_of(f"backbone.{key}", vit[key], (True, False))
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        tv_name = name[len(TORCHVISION_PREFIX) :]
        if tv_name not in torchvision.models.list_models():
            raise ValueError(f"backbone.name={name}: {tv_name!r} is not in torchvision.models.list_models()")
        if in_chans != 3:
            raise ValueError(f"backbone.in_chans={in_chans}: torchvision backbones take 3 channels")
        if vit:
            raise ValueError(f"backbone.{'/'.join(vit)}: timm models only, not backbone.name={name}")
        model = torchvision.models.get_model(tv_name, weights="DEFAULT" if pretrained else None)
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
                break
        if cifar_stem:
            replace_cifar_stem(model, name, in_chans)
        model.eval()
        side = getattr(model, "image_size", 64)  # torchvision's ViTs take their own size only
        with torch.no_grad():
            model.num_features = model(torch.zeros(2, 3, side, side)).flatten(1).shape[1]
        return model.train()
    if not timm.is_model(name):
        raise ValueError(f"backbone.name={name}: not a timm model (see timm.list_models()) nor torchvision/<name>")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **vit)
    except TypeError as e:  # a model whose constructor has no such argument
        raise ValueError(f"backbone.name={name}: does not take {sorted(vit)} ({e})") from None
    if cifar_stem:
        replace_cifar_stem(model, name, in_chans)
    return model


def check_input_sizes(backbone: nn.Module, sizes: dict[str, int]) -> None:
    """Refuse input sizes a timm vision transformer cannot take, in one line naming the config key: a size that its
    patch size does not divide, or, without ``dynamic_img_size``, another size than the one it is built for.
    ``sizes``: config key → side length (e.g. ``{"views.views.v1.size": 32}``); other backbones take any size."""
    patch_embed = getattr(backbone, "patch_embed", None)  # timm's ViTs: the only backbones with a patch size
    if patch_embed is None or not hasattr(patch_embed, "patch_size"):
        return
    patch = int(patch_embed.patch_size[0])
    dynamic = bool(getattr(backbone, "dynamic_img_size", False))
    fixed = getattr(patch_embed, "img_size", None)
    for key, size in sizes.items():
        if size % patch:
            raise ValueError(f"{key}={size}: not a multiple of the ViT's patch size {patch} (backbone.patch_size)")
        if not dynamic and fixed is not None and size != int(fixed[0]):
            raise ValueError(
                f"{key}={size}: the ViT is built for {int(fixed[0])} px; set backbone.dynamic_img_size=true "
                "(multi-crop) or backbone.img_size"
            )


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (stride 1, 2, 2) and global average pooling — the quickstart encoder.

    Args:
        width: channels of the first block (doubled by each following block).
        norm: ``"batch"``, ``"group"`` (8 groups) or ``"none"`` (a BatchNorm-free encoder for exact multi-process
            tests: SyncBatchNorm is CUDA-only).
        in_chans: input channels.
    """

    NORMS = ("batch", "group", "none")

    def __init__(self, width: int = 32, norm: str = "batch", in_chans: int = 3):
        super().__init__()
        if norm not in self.NORMS:
            raise ValueError(f"backbone.norm={norm!r}: expected one of {self.NORMS}")
        layers, c_in = [], in_chans
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif norm == "group":
                layers.append(nn.GroupNorm(8, c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.num_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 4 * width)
