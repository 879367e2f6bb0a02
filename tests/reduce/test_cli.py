"""selfsup-reduce: inputs (npy / pt / safetensors / selfsup-eval cache), outputs (vectors + encoder), bad input."""

import inspect
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from selfsup.config import CONF_DIR, ROOT
from selfsup.reduce import TLDR, fit, knn_graph, load_encoder, load_features
from selfsup.reduce import cli as cli_module
from selfsup.reduce.cli import reduce

TINY = [
    "tldr.n_components=3",
    "tldr.projector=mlp-1-16",
    "knn.k=3",
    "train.epochs=2",
    "train.batch_size=16",
    "train.warmup_epochs=1",
    "train.log_every=0",
    "device=cpu",
]


def reduce_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("reduce", overrides=list(overrides))


def matrix(n=48, d=6, seed=0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_npy_in_vectors_and_encoder_out(tmp_path):
    x = matrix()
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "out"
    summary = reduce(reduce_cfg(f"features={tmp_path / 'x.npy'}", f"out={out}", *TINY))
    reduced = load_file(str(out / "reduced.safetensors"))
    assert set(reduced) == {"train"} and reduced["train"].shape == (48, 3) and reduced["train"].dtype == torch.float32
    encoder = load_encoder(out / "encoder.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), reduced["train"], rtol=1e-6, atol=1e-6)  # the encoder reproduces them
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["architecture"] == {"input_dim": 6, "n_components": 3, "encoder": "linear"}
    assert on_disk["train"]["steps"] == summary["train"]["steps"] == 2 * (48 // 16)
    assert on_disk["config"]["knn"]["k"] == 3


def test_threads_apply_to_the_reduction_only(tmp_path, monkeypatch):
    """torch's thread count is process-wide: a caller's (a test session's) count is back after the reduction."""
    np.save(tmp_path / "x.npy", matrix().numpy())
    seen = []
    real_fit = cli_module.fit
    monkeypatch.setattr(cli_module, "fit", lambda *a, **k: seen.append(torch.get_num_threads()) or real_fit(*a, **k))
    before = torch.get_num_threads()
    reduce(reduce_cfg(f"features={tmp_path / 'x.npy'}", f"out={tmp_path / 'out'}", "threads=1", *TINY))
    assert seen == [1] and torch.get_num_threads() == before


def test_the_same_seed_gives_the_same_vectors(tmp_path):
    np.save(tmp_path / "x.npy", matrix().numpy())
    for name in ("a", "b"):
        reduce(reduce_cfg(f"features={tmp_path / 'x.npy'}", f"out={tmp_path / name}", *TINY))
    a, b = (load_file(str(tmp_path / n / "reduced.safetensors"))["train"] for n in ("a", "b"))
    assert torch.equal(a, b)


def test_eval_cache_dir_gives_train_and_test_vectors_with_labels(tmp_path):
    tr, te = matrix(40, 5, 1), matrix(12, 5, 2)
    cache = {
        "key": {"any": 1},
        "train": {"backbone": tr, "embedding": tr[:, :2], "labels": torch.arange(40) % 3},
        "test": {"backbone": te, "embedding": te[:, :2], "labels": torch.arange(12) % 3},
    }
    (tmp_path / "run" / "eval_cache").mkdir(parents=True)
    torch.save(cache, tmp_path / "run" / "eval_cache" / "0123abcd.pt")
    out = tmp_path / "out"
    reduce(reduce_cfg(f"features={tmp_path / 'run'}", f"out={out}", *TINY, "tldr.encoder=mlp-1-8"))
    reduced = load_file(str(out / "reduced.safetensors"))
    assert reduced["train"].shape == (40, 3) and reduced["test"].shape == (12, 3)
    assert torch.equal(reduced["test_labels"], torch.arange(12) % 3)
    encoder = load_encoder(out / "encoder.safetensors")  # with BatchNorm: eval mode, running statistics
    with torch.no_grad():
        torch.testing.assert_close(encoder(te), reduced["test"], rtol=1e-6, atol=1e-6)
    _, splits = load_features(tmp_path / "run", key="embedding")
    assert splits["train"]["features"].shape == (40, 2)


def test_pt_and_safetensors_dicts_pick_a_key(tmp_path):
    x = matrix(20, 4)
    torch.save({"feats": x, "other": x[:, :1]}, tmp_path / "x.pt")
    save_file({"feats": x}, str(tmp_path / "x.safetensors"))
    assert torch.equal(load_features(tmp_path / "x.pt", key="feats")[1]["train"]["features"], x)
    assert torch.equal(load_features(tmp_path / "x.safetensors")[1]["train"]["features"], x)  # the only tensor
    with pytest.raises(ValueError, match=r"key=null: features=.*x.pt holds tensors \['feats', 'other'\]"):
        load_features(tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"key='nope'"):
        load_features(tmp_path / "x.safetensors", key="nope")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_bad_inputs_are_one_line_errors(tmp_path):
    np.save(tmp_path / "vec.npy", np.zeros(5, dtype=np.float32))
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5), dtype=np.float32))
    nan = np.random.default_rng(0).normal(size=(10, 3))
    nan[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "x.csv").write_text("1,2\n")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases = {
        "missing.npy": (FileNotFoundError, "no such file or directory"),
        "x.csv": (ValueError, "expected a .npy, .pt, .pth, .safetensors file"),
        "vec.npy": (ValueError, r"got shape \(5,\); expected a 2-D matrix"),
        "cube.npy": (ValueError, r"got shape \(3, 4, 5\); expected a 2-D matrix"),
        "nan.npy": (ValueError, "1 non-finite values .* first row 7; expected finite features"),
        "obj.npy": (ValueError, "refused: .*expected a numeric array"),
        "evil.pt": (ValueError, "refused: loading it would run code"),
        "junk.safetensors": (ValueError, "cannot be read as safetensors"),
    }
    for name, (error, message) in cases.items():
        with pytest.raises(error, match=rf"^features={tmp_path / name}.*{message}"):
            load_features(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="without eval_cache"):
        load_features(tmp_path)


def test_bad_options_fail_before_the_search(tmp_path):
    np.save(tmp_path / "x.npy", matrix(20, 3).numpy())
    base = [f"features={tmp_path / 'x.npy'}", f"out={tmp_path / 'o'}", *TINY]
    for override, message in {
        "knn.k=20": r"knn.k=20: expected an integer in \[1, 19\]",
        "knn.metric=hamming": "knn.metric='hamming'",
        "train.batch_size=21": r"train.batch_size=21: expected an integer in \[2, 20\]",
        "tldr.encoder=cnn": "tldr.encoder='cnn'",
        "tldr.projector=mlp-0-8": "tldr.projector='mlp-0-8'",
        "device=tpu": "device='tpu'",
        "threads=0": "threads=0: expected a positive integer or null",
    }.items():
        with pytest.raises(ValueError, match=message):
            key = override.split("=")[0]
            reduce(reduce_cfg(*[a for a in base if not a.startswith(key + "=")], override))
    assert not (tmp_path / "o").exists()


def test_reduce_yaml_states_the_signature_defaults():
    cfg = OmegaConf.to_container(reduce_cfg("features=x", "out=y"))
    sig = lambda f: {k: p.default for k, p in inspect.signature(f).parameters.items()}  # noqa: E731
    tldr, train = sig(TLDR.__init__), sig(fit)
    assert cfg["tldr"] == {k: tldr[k] for k in cfg["tldr"]}
    assert cfg["knn"] == {"k": sig(knn_graph)["k"], "metric": sig(knn_graph)["metric"], "chunk_size": None}
    assert cfg["train"] == {k: train[k] for k in cfg["train"]}
    # the official naver/tldr values (tldr/tldr.py): k=5, 32-d, linear encoder, mlp-2-2048, λ=3.9e-3, scale 1/32
    assert (cfg["knn"]["k"], cfg["tldr"]["n_components"], cfg["tldr"]["projector"]) == (5, 32, "mlp-2-2048")
    assert cfg["tldr"]["scale_loss"] == 1 / 32 and cfg["tldr"]["lambd"] == 3.9e-3
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"], cfg["train"]["lr"]) == (1024, 100, 0.2)


def test_main_prints_one_line_errors_and_exits_2(tmp_path, monkeypatch, capsys):
    from selfsup.reduce.cli import main

    bad = matrix().numpy()
    bad[3, 0] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    # Hydra's job logging binds a handler to this test's captured stdout: give the root logger back afterwards
    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])
    monkeypatch.setattr(sys, "argv", ["selfsup-reduce", f"features={tmp_path / 'bad.npy'}", f"out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"selfsup-reduce: error: features={tmp_path / 'bad.npy'}: 1 non-finite values (NaN/inf) in 1 rows, "
        "first row 3; expected finite features"
    ]
    assert not (tmp_path / "o").exists()


def test_sweep_point_paths_work_unquoted_and_the_outputs_are_named(tmp_path, monkeypatch, capsys):
    """A sweep writes directories named ``key=value,key=value`` (docs/runs.md): Hydra alone cannot read them."""
    from selfsup.reduce.cli import main

    folder = tmp_path / "multirun" / "2026-12-05" / "19-07-45" / "objective.temperature=0.2,optim.lr=0.1"
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", matrix().numpy())
    out = tmp_path / "tldr" / "n_components=3,k=3"
    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])  # as above
    monkeypatch.setattr(sys, "argv", ["selfsup-reduce", f"features={folder / 'x.npy'}", f"out={out}", *TINY])
    main()
    assert load_file(str(out / "reduced.safetensors"))["train"].shape == (48, 3)
    paths = ", ".join(str(out / name) for name in ("encoder.safetensors", "reduced.safetensors", "summary.json"))
    assert f"wrote {paths}" in capsys.readouterr().out


def test_out_that_is_a_file_is_refused_before_the_features_are_read(tmp_path):
    (tmp_path / "out.txt").write_text("mine\n")
    with pytest.raises(ValueError, match=rf"^out={tmp_path / 'out.txt'}: is a file; expected a directory"):
        reduce(reduce_cfg(f"features={tmp_path / 'missing.npy'}", f"out={tmp_path / 'out.txt'}", *TINY))
    assert (tmp_path / "out.txt").read_text() == "mine\n"


@pytest.mark.slow
def test_python_m_selfsup_reduce_runs(tmp_path):
    np.save(tmp_path / "x.npy", matrix().numpy())
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup.reduce", f"features={tmp_path / 'x.npy'}", f"out={tmp_path / 'out'}", *TINY],
        capture_output=True,
        text=True,
        env=dict(os.environ, HYDRA_FULL_ERROR="0"),
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_file(str(tmp_path / "out" / "reduced.safetensors"))["train"].shape == (48, 3)
