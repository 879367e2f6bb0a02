import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from selfsup.export import export, load_encoder, main
from selfsup.models import build_backbone
from tests.evaluate.test_evaluate import make_run
from tests.evaluate.test_jobs import with_target


def original_backbone(name: str, cifar_stem: bool = False, seed: int = 0):
    """The encoder ``make_run`` saved, rebuilt from its seed: a reference that goes through neither the checkpoint
    reader nor the exporter (comparing an export with the checkpoint it was read from could not catch a bug they
    share)."""
    torch.manual_seed(seed)
    return build_backbone(name, cifar_stem=cifar_stem, pretrained=False, in_chans=3).eval()


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_loads_the_export_with_no_missing_keys_and_same_features(tmp_path, name):
    run = make_run(tmp_path / "run", name=name)
    out = export(run, tmp_path / "encoder.safetensors")
    reference = timm.create_model(name, num_classes=0)
    assert set(load_file(str(out))) == set(reference.state_dict())  # exactly timm's key names
    assert reference.load_state_dict(load_file(str(out)), strict=True) is not None
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), num_classes=0)
    size = model.pretrained_cfg.get("input_size", (3, 32, 32))[-1] if name == "test_vit" else 24
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), original_backbone(name)(x))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["timm_name"] == name and meta["cifar_stem"] == "false"


def test_cifar_stem_export_reloads_with_load_encoder(tmp_path):
    run = make_run(tmp_path / "run", name="resnet18", cifar_stem=True)
    out = export(run / "checkpoints" / "last.ckpt", tmp_path / "enc.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(x), original_backbone("resnet18", cifar_stem=True)(x))


def test_a_vit_built_otherwise_than_timms_default_reloads_with_load_encoder(tmp_path):
    """I-JEPA's ViT (no class token, every token normalised, patch-mean features) at another size and depth: the
    metadata carries what timm needs to build it, and load_encoder gives the trained encoder's features."""
    vit = dict(img_size=16, patch_size=4, depth=2, global_pool="avg", class_token=False, fc_norm=False)
    run = make_run(tmp_path / "run", name="vit_tiny_patch16_224", **vit)
    out = export(run, tmp_path / "enc.safetensors")
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert {k: meta[k] for k in vit} == {k: str(v) for k, v in vit.items()}
    encoder = load_encoder(out)
    assert not encoder.has_class_token and len(encoder.blocks) == 2 and encoder.global_pool == "avg"
    torch.manual_seed(0)
    reference = build_backbone("vit_tiny_patch16_224", pretrained=False, **vit).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x))


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        export(tmp_path / "missing", tmp_path / "e.safetensors")
    (tmp_path / "foreign").mkdir()
    torch.save({"model": {}}, tmp_path / "foreign" / "x.ckpt")
    with pytest.raises(ValueError, match="not a selfsup checkpoint"):
        export(tmp_path / "foreign" / "x.ckpt", tmp_path / "e.safetensors")
    run = make_run(tmp_path / "run", name="small_cnn")
    with pytest.raises(ValueError, match="backbone.name=small_cnn is not a timm model"):
        export(run, tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match="out=.*safetensors"):
        export(make_run(tmp_path / "ok"), tmp_path / "e.pt")
    assert not list(tmp_path.glob("*.safetensors")) and not (tmp_path / "e.pt").exists()


def test_branch_target_exports_the_ema_teacher_and_a_run_without_one_is_a_one_line_error(tmp_path, capsys):
    run = with_target(make_run(tmp_path / "run", seed=0), make_run(tmp_path / "teacher", seed=1))
    main([f"checkpoint={run}", f"out={tmp_path / 'teacher.safetensors'}", "branch=target"])
    out = export(run, tmp_path / "student.safetensors")
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            load_encoder(tmp_path / "teacher.safetensors")(x), original_backbone("test_resnet", seed=1)(x)
        )
        assert torch.equal(load_encoder(out)(x), original_backbone("test_resnet", seed=0)(x))
    with safe_open(str(tmp_path / "teacher.safetensors"), "pt") as f:
        assert f.metadata()["branch"] == "target"
    plain = make_run(tmp_path / "plain")
    for branch, message in (("target", "holds no EMA target network"), ("teacher", "expected one of")):
        with pytest.raises(SystemExit) as e:
            main([f"checkpoint={plain}", f"out={tmp_path / 'x.safetensors'}", f"branch={branch}"])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    main([f"checkpoint={run}", f"out={tmp_path / 'cli.safetensors'}"])
    assert (tmp_path / "cli.safetensors").is_file()
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={run}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "selfsup-export: error: out not set: usage: selfsup-export checkpoint=<file.ckpt | run dir> "
        "out=<encoder.safetensors> [branch=online|target]"
    ]


def test_cli_takes_sweep_points_unquoted_or_quoted_as_for_hydra_and_names_its_output(tmp_path, caplog):
    """A sweep point's directory (``key=value,key=value``, docs/runs.md) as the other commands take it: as it is, or
    quoted for Hydra (``checkpoint='...'``)."""
    import logging

    run = make_run(tmp_path / "multirun" / "2026-12-05" / "19-07-45" / "objective.temperature=0.2,optim.lr=0.1")
    for i, checkpoint in enumerate((str(run), f"'{run}'", f'"{run / "checkpoints" / "last.ckpt"}"')):
        out = tmp_path / f"export,i={i}" / "encoder.safetensors"
        with caplog.at_level(logging.INFO, logger="selfsup.export"):
            main([f"checkpoint={checkpoint}", f"out='{out}'" if i else f"out={out}"])
        assert load_file(str(out)).keys() == original_backbone("test_resnet").state_dict().keys()
        assert f"wrote {out}" in caplog.text
