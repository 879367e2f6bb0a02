"""A config read back from disk is data, not code: every ``_target_`` in it must be one that conf/ or recipes/ names
(or that the command line trusts), at any depth, and it holds no interpolation — checked before anything is built."""

import pickle
import random

import pytest
import torch
from omegaconf import OmegaConf

from selfsup.config import RECIPES_DIR, UnsafeConfigError, allowed_targets, check_saved_config
from selfsup.runtime import checkpoint as ckpt_io
from selfsup.train import run
from tests.config_utils import compose_train
from tests.runs import TINY
from tests.runtime.test_checkpoint import Trap, cli


def test_the_allowlist_is_what_the_config_groups_name():
    targets = allowed_targets()
    assert {
        "selfsup.models.build_backbone",
        "selfsup.objectives.InfoNCELoss",
        "lightning.pytorch.Trainer",
        "selfsup.train.memory.KeyQueue",
        "selfsup.runtime.autosave.LastCheckpoint",
    } <= targets
    assert not targets & {"builtins.open", "torch.load", "io.BytesIO", "os.system", "builtins.eval", "exec"}
    assert all(t.split(".")[0] in ("selfsup", "lightning", "torch") for t in targets), sorted(targets)


@pytest.mark.parametrize(
    "recipe", sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
)
def test_every_recipe_as_saved_passes(recipe, tmp_path):
    cfg = OmegaConf.to_container(compose_train([f"recipes={recipe}"], tmp_path), resolve=True)
    check_saved_config(cfg, "checkpoint=x.ckpt")  # what a checkpoint holds: the resolved config


def pickle_that_touches(marker) -> bytes:
    return pickle.dumps(Trap(marker))


def attacks(marker, victim) -> dict:
    """The two saved-backbone attacks of issue 27: a pickle run through torch.load, a file truncated by open."""
    return {
        "torch.load": {
            "_target_": "torch.load",
            "weights_only": False,
            "f": {"_target_": "io.BytesIO", "initial_bytes": pickle_that_touches(marker)},
        },
        "builtins.open": {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
    }


def test_refused_in_one_line_naming_the_key_and_the_target(tmp_path):
    attack = attacks(tmp_path / "ran", tmp_path / "victim")
    with pytest.raises(
        UnsafeConfigError,
        match=r"^checkpoint=a.ckpt: refused: backbone._target_='torch.load' is not "
        r"a constructor .* pass trusted_targets=\[torch.load\]",
    ):
        check_saved_config({"seed": 0, "backbone": attack["torch.load"]}, "checkpoint=a.ckpt")
    # nested: a harmless outer target whose argument is the attack, inside _args_ and inside a list of terms
    nested = {
        "_target_": "selfsup.objectives.CompositeObjective",
        "terms": [{"_target_": "selfsup.objectives.InfoNCELoss", "_args_": [attack["builtins.open"]]}],
    }
    with pytest.raises(UnsafeConfigError, match=r"objective.terms\[0\]._args_\[0\]._target_='builtins.open'"):
        check_saved_config({"objective": nested}, "checkpoint=a.ckpt")
    with pytest.raises(UnsafeConfigError, match=r"data.root='\$\{oc.env:HOME\}' is an interpolation"):
        check_saved_config({"data": {"root": "${oc.env:HOME}"}}, "checkpoint=a.ckpt")
    check_saved_config({"backbone": {"_target_": "mypkg.MyNet"}}, "checkpoint=a.ckpt", trusted=["mypkg.MyNet"])
    check_saved_config({"backbone": {"_target_": "mypkg.nets.MyNet"}}, "checkpoint=a.ckpt", trusted=["mypkg.*"])
    with pytest.raises(UnsafeConfigError, match="'mypkgevil.X'"):
        check_saved_config({"backbone": {"_target_": "mypkgevil.X"}}, "checkpoint=a.ckpt", trusted=["mypkg.*"])


def test_a_fuzz_of_nested_targets_is_refused_wherever_it_hides():
    rng = random.Random(0)
    allowed = sorted(allowed_targets())
    for _ in range(300):
        bad = rng.choice(
            [
                "builtins.open",
                "os.system",
                "torch.load",
                "subprocess.run",
                "builtins.exec",
                "pathlib.Path.unlink",
                "hydra.utils.get_method",
                "selfsup.models.build_backbon",
            ]
        )
        node: object = {"_target_": bad, "_args_": ["x"]}
        for _ in range(rng.randint(0, 6)):  # wrap it in harmless layers
            kind = rng.choice(["dict", "list", "args", "partial"])
            if kind == "dict":
                node = {"k": node, "other": 1}
            elif kind == "list":
                node = [0, node]
            elif kind == "args":
                node = {"_target_": rng.choice(allowed), "_args_": [node]}
            else:
                node = {"_target_": rng.choice(allowed), "_partial_": True, "inner": node}
        with pytest.raises(UnsafeConfigError, match=f"_target_='{bad}'"):
            check_saved_config({"backbone": node}, "checkpoint=f.ckpt")


def hostile_checkpoint(path, tmp_path, attack: dict):
    """A pickle-free selfsup checkpoint of a runnable tiny config whose saved backbone is ``attack``."""
    config = OmegaConf.to_container(compose_train(TINY, tmp_path / "orig"), resolve=True)
    config["backbone"] = attack
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {"backbone.w": torch.zeros(2)},
            "selfsup": {"config": config, "global_batch": 32},
            "global_step": 3,
            "epoch": 0,
        },
        path,
    )
    return path


def test_load_and_run_info_check_before_anything_is_built(tmp_path):
    marker, victim = tmp_path / "ran", tmp_path / "victim"
    victim.write_text("precious")
    for name, attack in attacks(marker, victim).items():
        path = hostile_checkpoint(tmp_path / f"{name}.ckpt", tmp_path, attack)
        for read in (ckpt_io.load, ckpt_io.run_info):
            with pytest.raises(UnsafeConfigError, match=f"backbone._target_='{name}'"):
                read(path)
    assert not marker.exists() and victim.read_text() == "precious"


def test_load_refuses_non_finite_weights_and_buffers(tmp_path):
    for name, value in (("backbone.bn.running_var", float("inf")), ("backbone.conv.weight", float("nan"))):
        path = tmp_path / "diverged.ckpt"
        torch.save(
            {"state_dict": {"backbone.a": torch.ones(2), name: torch.tensor([1.0, value])}, "selfsup": {"config": {}}},
            path,
        )
        with pytest.raises(ValueError, match=f"diverged.ckpt: refused: 1 weights or buffers hold NaN/Inf \\({name}\\)"):
            ckpt_io.load(path)


@pytest.mark.slow
def test_no_command_instantiates_a_hostile_saved_config(tmp_path):
    """selfsup-eval, selfsup-export, selfsup-subset and selfsup-train resume=true (console scripts), ckpt_path= and
    init_from= (the same ``run``, in-process) each refuse the checkpoint in one line naming the key and the target;
    the pickle never runs and the victim file keeps its content."""
    marker, victim = tmp_path / "ran", tmp_path / "victim"
    victim.write_text("precious")
    hostile = attacks(marker, victim)
    file = hostile_checkpoint(tmp_path / "evil.ckpt", tmp_path, hostile["torch.load"])
    opener = hostile_checkpoint(tmp_path / "open.ckpt", tmp_path, hostile["builtins.open"])
    run_dir = tmp_path / "run"
    hostile_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path, hostile["torch.load"])
    commands = {
        "eval": ("torch.load", "selfsup.evaluate", f"checkpoint={file}"),
        "export": ("builtins.open", "selfsup.export", f"checkpoint={opener}", f"out={tmp_path / 'e.safetensors'}"),
        "train resume": ("torch.load", "selfsup.train", "resume=true", f"hydra.run.dir={run_dir}"),
        "subset": ("torch.load", "selfsup.subsets", f"checkpoint={file}", f"out={tmp_path / 'sas.txt'}"),
    }
    for name, (target, *args) in commands.items():
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and last.startswith("selfsup-"), (name, proc.stderr[-2000:])
        assert f"refused: backbone._target_='{target}' is not a constructor" in last, (name, last)
    for key, path, target in (("ckpt_path", opener, "builtins.open"), ("init_from", file, "torch.load")):
        with pytest.raises(UnsafeConfigError, match=f"^{key}=.*refused: backbone._target_='{target}'"):
            run(compose_train(TINY + [f"{key}={path}"], tmp_path / key))
        assert not (tmp_path / key / "checkpoints").exists()
    assert not marker.exists() and victim.read_text() == "precious"
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "sas.txt").exists()


def test_a_user_trusts_their_own_constructor(tmp_path):
    """``trusted_targets`` on the command line admits a constructor; the checkpoint cannot trust itself."""
    config = {
        "backbone": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
        "trusted_targets": ["torch.nn.Linear"],
    }
    path = tmp_path / "own.ckpt"
    torch.save({"state_dict": {}, "selfsup": {"config": config}}, path)
    with pytest.raises(UnsafeConfigError, match="torch.nn.Linear"):
        ckpt_io.load(path)
    assert ckpt_io.load(path, trusted=["torch.nn.Linear"])["selfsup"]["config"] == config
