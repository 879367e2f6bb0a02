"""The commands' shared one-line errors: path values quoted for Hydra, Hydra's parse errors, a run directory Hydra
cannot write."""

import logging
import shutil
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from selfsup.runtime import errors

SWEEP_POINT = "multirun/2026-12-05/19-07-45/objective.temperature=0.2,optim.lr=0.1"  # docs/runs.md: a sweep point


@pytest.mark.parametrize(
    "value",
    [SWEEP_POINT, "/runs/a=b/checkpoints/last.ckpt", "/x/[1]/#2 ~u", "/it's/a=b", "/a=b\\", "/x\\'=y", "/${now:%H}=1"],
)
def test_path_values_reach_hydra_as_the_path(value):
    parser = OverridesParser.create()
    for key in (
        "hydra.run.dir",
        "hydra.sweep.dir",
        "checkpoint",
        "ckpt_path",
        "init_from",
        "out",
        "features",
        "data.root",
        "+data.root",
    ):
        (arg,) = errors.quote_path_values([f"{key}={value}"])
        parsed = parser.parse_override(arg)
        assert parsed.value() == value and not parsed.is_sweep_override(), arg


def test_values_hydra_reads_as_they_are_stay():
    argv = [
        "out=null",
        "ckpt_path=last",
        "init_from=/runs/2026-12-05/19-07-45",
        "hydra.run.dir='/a=b'",
        "checkpoint=random",
        "objective.temperature=0.1,0.2",
        "-m",
        "recipes=cifar10/simclr",
        "--help",
    ]
    assert errors.quote_path_values(argv) == argv


def _main(module: str, monkeypatch, *args: str):
    """``<module>.main()`` in this process on ``args``; the root logger's handlers are given back afterwards (Hydra's
    job logging binds its handlers to this test's captured streams)."""
    import importlib

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main()
    return exit_info.value.code


def test_a_value_hydra_cannot_parse_names_the_override_and_how_to_quote(monkeypatch, capsys):
    assert _main("selfsup.reduce.cli", monkeypatch, "features=x.npy", "out=o", "tldr.encoder=a=b") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "selfsup-reduce: error: tldr.encoder=a=b: mismatched input '=' expecting <EOF>; expected key=value: quote a "
        """value holding '=', ',', brackets or spaces for Hydra, e.g. 'key="a=b"' in the shell"""
    ]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory that not even root can write in: immutable (chattr +i), else a read-only tmpfs; skipped where
    neither can be made here."""
    path = tmp_path / "read-only"
    path.mkdir()
    undo = None
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(path)]
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(path)], capture_output=True).returncode == 0:
        undo = ["umount", "-l", str(path)]
    else:
        pytest.skip("neither chattr +i nor a read-only tmpfs mount is possible here")
    try:
        try:
            (path / "probe").touch()
        except OSError:
            yield path
        else:
            pytest.skip(f"{path} stayed writable")
    finally:
        subprocess.run(undo, check=True)


def test_a_run_directory_hydra_cannot_write_is_one_line(read_only_dir, monkeypatch, capsys):
    """Hydra opens <run dir>/train.log (or creates the run dir) before selfsup's code runs: the error names the
    directory and the OS error, instead of "Unable to configure handler 'file'"."""
    cases = {
        read_only_dir: f"hydra.run.dir={read_only_dir}: cannot write train.log there ([Errno ",
        read_only_dir / "new" / "run": f"hydra.run.dir: cannot create {read_only_dir / 'new'} ([Errno ",
    }
    for run_dir, message in cases.items():
        assert _main("selfsup.train.cli", monkeypatch, f"hydra.run.dir={run_dir}") == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"selfsup-train: error: {message}"), line
        assert line.endswith("); expected a writable run directory"), line
