"""selfsup.runtime.compat: each shim over a private Lightning/Hydra API still finds what it relies on and gets the
behaviour it assumes; and no other module of selfsup uses a private Lightning/Hydra name."""

import ast
import importlib
import inspect
import logging
import sys
from pathlib import Path

import pytest

from selfsup.runtime import compat

PACKAGE = Path(compat.__file__).resolve().parents[1]


# -- Hydra ---------------------------------------------------------------------------------------------------------
def test_hydra_error_report_sees_what_hydra_main_runs(tmp_path, monkeypatch):
    """hydra.main runs the app (and its composition) under the patched run_and_report; Hydra's is back after."""
    import hydra
    import hydra._internal.utils as hydra_utils

    seen = []

    def report(func, original):
        seen.append(original)
        try:
            return func()
        except Exception as e:  # noqa: BLE001
            seen.append(e)
            raise SystemExit(2) from None

    @hydra.main(version_base="1.3", config_path=None)
    def app(cfg):
        seen.append(dict(cfg))

    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])
    hydra_args = [f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    original = hydra_utils.run_and_report
    monkeypatch.setattr(sys, "argv", ["app", "+a=1", *hydra_args])
    with compat.hydra_error_report(report):
        app()
    assert {"a": 1} in seen and original in seen
    monkeypatch.setattr(sys, "argv", ["app", "+a=1=2", *hydra_args])  # an override Hydra cannot parse
    with pytest.raises(SystemExit), compat.hydra_error_report(report):
        app()
    from hydra.errors import OverrideParseException

    assert isinstance(seen[-1], OverrideParseException)
    assert hydra_utils.run_and_report is original


def test_split_sweep_expands_like_the_basic_sweeper():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "c=3,4"])
    jobs = compat.split_sweep(parsed)
    assert sorted(map(sorted, jobs)) == sorted(sorted(["b=x", f"a={a}", f"c={c}"]) for a in (1, 2) for c in (3, 4))


# -- Lightning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env,rank",
    [({}, None), ({"RANK": "3"}, 3), ({"LOCAL_RANK": "1"}, 1), ({"SLURM_PROCID": "2"}, 2), ({"RANK": "0"}, 0)],
)
def test_env_rank_reads_the_launchers_environment(env, rank, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert compat.env_rank() == rank


def test_cluster_environment_is_the_one_lightnings_signal_handlers_read(monkeypatch):
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    monkeypatch.setenv("SLURM_NTASKS", "1")
    env = SLURMEnvironment(auto_requeue=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, plugins=[env], logger=False, enable_checkpointing=False)
    assert compat.cluster_environment(trainer) is env
    # LastCheckpoint turns auto_requeue off there: Lightning then registers no requeue handler of its own
    source = inspect.getsource(_SignalConnector.register_signal_handlers)
    assert "_accelerator_connector.cluster_environment" in source and "auto_requeue" in source


def test_sharded_checkpoint_settings_are_read_back():
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    assert compat.fsdp_state_dict_type(FSDPStrategy(state_dict_type="sharded")) == "sharded"
    assert compat.fsdp_state_dict_type(FSDPStrategy(state_dict_type="full")) == "full"
    assert compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=True)) is True
    assert compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False)) is False


def test_log_at_global_step_sets_the_step_metrics_are_logged_at():
    import lightning as L
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    loop = trainer.fit_loop.epoch_loop
    loop._batches_that_stepped = 5  # one ahead, as after a restore at an epoch's end
    compat.log_at_global_step(trainer)
    assert loop._batches_that_stepped == trainer.global_step == 0
    assert loop.on_save_checkpoint()["_batches_that_stepped"] == 0  # what a checkpoint saves
    assert "epoch_loop._batches_that_stepped" in inspect.getsource(_LoggerConnector.log_metrics)


def test_wandb_run_started_does_not_start_one(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert compat.wandb_run_started(logger) is False
    assert compat.wandb_run_started(logger) is False  # reading it started nothing
    logger._experiment = object()
    assert compat.wandb_run_started(logger) is True


def test_full_weights_launcher_overrides_hooks_the_spawn_launcher_calls():
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput

    assert issubclass(compat.FullWeightsLauncher, _MultiProcessingLauncher)
    assert _WorkerOutput._fields == ("best_model_path", "weights_path", "trainer_state", "trainer_results", "extra")
    wrapping = inspect.getsource(_MultiProcessingLauncher._wrapping_function)
    assert "self._collect_rank_zero_results(trainer, results)" in wrapping and "return_queue.put" in wrapping
    params = list(inspect.signature(_MultiProcessingLauncher._collect_rank_zero_results).parameters)
    assert params == ["self", "trainer", "results"]
    assert "start_method" in inspect.signature(_MultiProcessingLauncher.__init__).parameters
    # spawn pickles the launcher's bound method: the class is found by its module and name
    assert importlib.import_module(compat.FullWeightsLauncher.__module__).FullWeightsLauncher is (
        compat.FullWeightsLauncher
    )


def _instance(cls):
    import tempfile

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if cls is FSDPStrategy:
        return FSDPStrategy()
    if cls is DeepSpeedStrategy:
        return None  # needs deepspeed: checked on the class
    if cls is ExperimentWriter:
        return ExperimentWriter(tempfile.mkdtemp())
    if cls is CSVLogger:
        return CSVLogger(tempfile.mkdtemp())
    raise AssertionError(cls)


@pytest.mark.parametrize("hook", sorted(compat.SUBCLASS_HOOKS), ids=lambda h: f"{h[0].rsplit('.', 1)[1]}.{h[1]}")
def test_the_private_hooks_subclasses_override_still_exist(hook):
    path, name = hook
    module, cls_name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), cls_name)
    obj = _instance(cls)
    assert hasattr(cls, name) or (obj is not None and hasattr(obj, name)), f"{path}.{name} is gone"
    user = importlib.import_module(compat.SUBCLASS_HOOKS[hook])
    assert name in inspect.getsource(user), f"{compat.SUBCLASS_HOOKS[hook]} no longer uses {name}: drop it here"


# -- nothing else uses a private Lightning/Hydra name --------------------------------------------------------------
def _private_uses(path: Path) -> list[str]:
    """``import``s of a private Lightning/Hydra module or name, and reads of a private attribute of anything but
    ``self``/``cls``/``super()`` in ``path``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("lightning", "hydra"):
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(p.startswith("_") for p in parts):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("lightning", "hydra") and any(p.startswith("_") for p in a.name.split(".")):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} import {a.name}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("_"):
            # (__dunder__ and Hydra's config keys, cfg.x._target_, are no private API)
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            if node.attr == "_exit" and isinstance(owner, ast.Name) and owner.id == "os":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} os._exit")
                continue
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    return found


def test_no_private_lightning_or_hydra_use_outside_compat():
    found = [use for path in sorted(PACKAGE.rglob("*.py")) if path.name != "compat.py" for use in _private_uses(path)]
    # Lightning's or Hydra's: move it into selfsup.runtime.compat, with a test here; selfsup's own: make it public
    assert found == []


def test_runtime_imports_no_command_package():
    """runtime/ is below the commands: it imports nothing of train/, evaluate/, export/ or reduce/ (a command hands
    runtime what it needs, e.g. selfsup.runtime.sweep.checking_parts)."""
    found = []
    for path in (PACKAGE / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[:2] in (["selfsup", p] for p in ("train", "evaluate", "export", "reduce")):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert found == []


def test_vit_pos_embed_is_the_step_forward_features_takes_after_patch_embed():
    """timm's ``_pos_embed`` between ``patch_embed`` and the blocks: the ViT's own forward, rebuilt around the shim,
    gives the same bits, at its own size and at another (dynamic_img_size: the resampled embedding)."""
    import torch

    from selfsup.models import build_backbone
    from selfsup.runtime.compat import vit_pos_embed

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4, dynamic_img_size=True, depth=1).eval()
    for side in (16, 8):
        x = torch.randn(2, 3, side, side)
        h = vit.norm_pre(vit.patch_drop(vit_pos_embed(vit, vit.patch_embed(x))))
        assert torch.equal(vit.norm(vit.blocks(h)), vit.forward_features(x))
        assert h.shape == (2, 1 + (side // 4) ** 2, 192)


def test_launcher_start_method_reads_the_multiprocessing_launcher():
    import lightning as L

    for strategy, expected in (("ddp_fork", "fork"), ("ddp_spawn", "spawn"), ("ddp", None), ("auto", None)):
        trainer = L.Trainer(accelerator="cpu", devices=2 if strategy != "auto" else 1, strategy=strategy, logger=False)
        assert compat.launcher_start_method(trainer.strategy) == expected, strategy
