"""``selfsup-export checkpoint=<file.ckpt | run dir> out=<encoder.safetensors>``: the trained encoder for timm.

Writes the backbone's weights under timm's own key names (our backbones *are* timm models built with
``num_classes=0``), so that ::

    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="encoder.safetensors"), num_classes=0)

rebuilds the encoder. The safetensors metadata records ``timm_name``, ``in_chans``, ``cifar_stem``,
``num_features`` and, for vision transformers built otherwise than timm's default, ``img_size``, ``patch_size``,
``dynamic_img_size``, ``depth``, ``global_pool`` (the recipe's evaluation features), ``class_token`` and ``fc_norm``
(pass them to ``timm.create_model`` too, or use :func:`load_encoder`). A backbone trained with
``cifar_stem=true`` has a 3x3 first conv that plain timm does not build: use :func:`load_encoder`, which swaps the
stem before loading.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors.torch import save
from torch import nn

import selfsup
from selfsup.models.backbones import TORCHVISION_PREFIX, replace_cifar_stem
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.runtime.errors import key_values, run_command
from selfsup.runtime.files import atomic_write

log = logging.getLogger(__name__)

USAGE = "usage: selfsup-export checkpoint=<file.ckpt | run dir> out=<encoder.safetensors> [branch=online|target]"
# timm.create_model's own arguments of a vision transformer, as build_backbone takes them, and how to read them back
VIT_ARGS = {
    "img_size": int,
    "patch_size": int,
    "dynamic_img_size": lambda v: v == "True",
    "depth": int,
    "global_pool": str,
    "class_token": lambda v: v == "True",
    "fc_norm": lambda v: v == "True",
}


def timm_name(backbone_cfg: dict, key: str = "checkpoint") -> str:
    """The timm model name of a saved backbone config; ValueError for backbones timm cannot build."""
    import timm

    target, name = backbone_cfg.get("_target_", ""), backbone_cfg.get("name")
    if not str(target).endswith("build_backbone") or not isinstance(name, str):
        raise ValueError(f"{key}: backbone {target or backbone_cfg} is not built by selfsup.models.build_backbone")
    if name.startswith(TORCHVISION_PREFIX) or not timm.is_model(name):
        raise ValueError(
            f"{key}: backbone.name={name} is not a timm model; selfsup-export writes timm weights "
            "(train with a timm backbone, e.g. backbone=resnet18)"
        )
    return name


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, branch: str = "online") -> Path:
    """Write the backbone of ``checkpoint`` to ``out`` (safetensors, timm key names); returns the output path.
    ``branch="target"``: its EMA target's backbone (DINO's teacher) in place of the trained one."""
    ckpt = ckpt_io.load(checkpoint, "checkpoint")
    config = ckpt["selfsup"].get("config") or {}
    backbone_cfg = config.get("backbone") or {}
    name = timm_name(backbone_cfg, f"checkpoint={checkpoint}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"out={out}: expected a file name ending in .safetensors")
    prefix = ckpt_io.branch_prefix(ckpt, branch, checkpoint)
    backbone = ckpt_io.backbone_from(ckpt, checkpoint, prefix + "backbone.")  # strict: exactly the backbone's weights
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    metadata = {
        "format": "pt",
        "timm_name": name,
        "in_chans": str(backbone_cfg.get("in_chans", 3)),
        "cifar_stem": str(bool(backbone_cfg.get("cifar_stem", False))).lower(),
        "num_features": str(backbone.num_features),
        "selfsup_version": selfsup.__version__,
        "branch": branch,
        # vision transformers built otherwise than timm's default (timm.create_model's own arguments)
        **{k: str(backbone_cfg[k]) for k in VIT_ARGS if backbone_cfg.get(k) is not None},
    }
    atomic_write(out, lambda f: f.write(save(state, metadata=metadata)))  # the usual file mode, not 0600
    if metadata["cifar_stem"] == "true":
        log.warning("%s has a CIFAR stem (3x3 conv1, no max-pool): load it with selfsup.export.load_encoder", out)
    return out


def load_encoder(path: str | os.PathLike) -> nn.Module:
    """Rebuild an exported encoder with timm (CIFAR stem restored when the metadata says so), in eval mode."""
    import timm

    path = Path(path)
    meta = ckpt_io.safetensors_metadata(path, "timm_name", "selfsup-export")
    in_chans = int(meta.get("in_chans", 3))
    vit = {k: read(meta[k]) for k, read in VIT_ARGS.items() if k in meta}
    model = timm.create_model(meta["timm_name"], num_classes=0, in_chans=in_chans, **vit)
    if meta.get("cifar_stem") == "true":
        replace_cifar_stem(model, meta["timm_name"], in_chans)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model.eval()


def parse_args(argv: list[str]) -> dict[str, str]:
    """``checkpoint=``, ``out=`` and ``branch=`` (``selfsup.runtime.errors.key_values``: a sweep point's directory as
    it is, or quoted for Hydra)."""
    kinds = {"checkpoint": str, "out": str, "branch": str}
    choices = {"branch": ckpt_io.BRANCHES}
    return key_values(argv, kinds, USAGE, ("checkpoint", "out"), {"branch": "online"}, choices)


def main(argv: list[str] | None = None) -> None:
    run_command("selfsup-export", USAGE, argv, lambda a: log.info("wrote %s", export(**parse_args(a))))


if __name__ == "__main__":
    main()
