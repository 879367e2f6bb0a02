"""Fault drill: break training runs the way a hostile or unlucky user would, and print what each fault cost.

    .venv/bin/python bench/fault_drill.py [--kills 10] [--seed 0] [--out bench/FAULTS.md]

Every case runs the real console scripts in subprocesses on the quickstart data (a 3-block CNN, 32 pairs a step,
10 steps an epoch, 4 epochs). A run that is interrupted is then resumed with ``resume=true`` and compared with an
uninterrupted run of the same config: "data lost" is "none" only when the resumed run's loss curve, validation rows
and final weights equal the uninterrupted run's bit for bit and metrics.csv holds every step exactly once.

Cases: SIGKILL at random moments (default checkpoint cadence: every epoch), SIGKILL right after a checkpoint with
metrics.csv at the logger's default flush cadence, SIGTERM during the first, a middle and the last step of an
epoch, Ctrl-C (SIGINT) mid-step, a non-finite loss (learning rate 1e30), a huge learning rate with BatchNorm (its
buffers go non-finite), a full disk (a small tmpfs: needs root and mount permission, skipped otherwise), two
trainings in one directory, a booby-trapped checkpoint and a checkpoint whose saved config would run code given to
every command that reads one, ``ckpt_path=`` into another run's directory, ``resume=true`` on a mistyped
directory, a resume that trains longer, a sweep whose second point is invalid, ``selfsup-eval out=<a file>``, a
read-only run directory, and a corrupt image under 2 loader workers (then the same command once it is fixed).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "recipes=quickstart",
    "data.subset=320",
    "data.batch_size=32",
    "data.num_workers=0",
    "+backbone.width=8",
    "+backbone.norm=none",
    "projector.batch_norm=false",
    "projector.hidden_dim=64",
    "callbacks.progress=null",
    "report_baseline=false",
    "trainer.max_epochs=4",
    "optim.warmup_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
]
FLUSH_EVERY_STEP = "logger.csv.flush_logs_every_n_steps=1"  # the drill watches metrics.csv to time its kills
TRUST_TESTS = "trusted_targets=[tests.*]"  # resuming a run that had the drill's signal callback in its config
TOTAL_STEPS = 40


def cli(module: str, *args: str, wait: bool = True, **kw):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", module, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, **kw)


def train(run_dir: Path, *extra: str, wait: bool = True, base=(*BASE, FLUSH_EVERY_STEP)):
    return cli("selfsup.train", *base, *extra, f"hydra.run.dir={run_dir}", wait=wait)


def files(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "train.log"}


def logged(run_dir: Path) -> dict:
    """{(step, key): value} of metrics.csv, and the list of steps with a training loss (with repeats)."""
    if not (run_dir / "metrics.csv").is_file():
        return {"rows": {}, "steps": []}
    with open(run_dir / "metrics.csv") as f:
        records = list(csv.DictReader(f))
    rows = {(int(r["step"]), k): float(v) for r in records for k, v in r.items() if v and k not in ("step", "epoch")}
    return {"rows": rows, "steps": [int(r["step"]) for r in records if r.get("train/loss")]}


def ckpt_step(run_dir: Path) -> int | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(path, weights_only=True)["global_step"] if path.is_file() else None


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def same_as(reference: Path, run_dir: Path) -> str:
    """ "none" when run_dir equals the reference bit for bit, else what differs."""
    a, b = logged(reference), logged(run_dir)
    if sorted(b["steps"]) != list(range(TOTAL_STEPS)):
        return f"steps logged {len(b['steps'])}, expected each of {TOTAL_STEPS} once"
    if a["rows"] != b["rows"]:
        return f"{sum(a['rows'].get(k) != v for k, v in b['rows'].items())} metric values differ"
    wa, wb = weights(reference), weights(run_dir)
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        return "final weights differ"
    return "none"


def last_line(proc) -> str:
    lines = (proc.stderr or "").strip().splitlines()
    return lines[-1] if lines else ""


# -- cases -----------------------------------------------------------------------------------------------------------


def kill_9(reference: Path, work: Path, rng: random.Random, n: int, seconds: float) -> list[tuple]:
    """SIGKILL at a moment drawn uniformly over the training time of the reference run (``seconds``: from its first
    logged step to its last), validation included."""
    rows = []
    for i in range(n):
        run_dir = work / f"kill{i}"
        proc = train(run_dir, wait=False)
        while not logged(run_dir)["steps"] and proc.poll() is None:  # started training
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at, saved = max(logged(run_dir)["steps"], default=-1) + 1, ckpt_step(run_dir)
        if at >= TOTAL_STEPS:
            rows.append((f"SIGKILL #{i + 1}: too late (run had finished)", "finished", 0, "none"))
            continue
        resumed = train(run_dir, "resume=true")
        if saved is None:  # killed before the first checkpoint: resume refuses, a new run starts over
            outcome = "resume refused (no checkpoint yet)" if resumed.returncode == 2 else f"exit {resumed.returncode}"
            shutil.rmtree(run_dir)
            train(run_dir)
            rows.append(
                (
                    f"SIGKILL at step {at} (before the first checkpoint)",
                    outcome + "; rerun",
                    at,
                    same_as(reference, run_dir),
                )
            )
            continue
        outcome = "resumed" if resumed.returncode == 0 else f"resume exit {resumed.returncode}: {last_line(resumed)}"
        rows.append((f"SIGKILL at step {at} (last.ckpt at {saved})", outcome, at - saved, same_as(reference, run_dir)))
    return rows


def sigterm(reference: Path, work: Path) -> list[tuple]:
    """SIGTERM (scontrol requeue, preemption) sent during a step by tests.runs.SignalAt."""
    rows = []
    for step, where in ((10, "first step of epoch 2"), (14, "mid-epoch"), (19, "last step of epoch 2")):
        run_dir = work / f"term{step}"
        proc = train(run_dir, "+callbacks.signal._target_=tests.runs.SignalAt", f"+callbacks.signal.step={step}")
        saved = ckpt_step(run_dir)
        resumed = train(run_dir, "resume=true", TRUST_TESTS)
        outcome = f"exit {proc.returncode}, then " + (
            "resumed" if not resumed.returncode else f"resume exit {resumed.returncode}"
        )
        rows.append(
            (f"SIGTERM during step {step} ({where})", outcome, step + 1 - (saved or 0), same_as(reference, run_dir))
        )
    return rows


def ctrl_c(reference: Path, work: Path) -> tuple:
    """Ctrl-C (SIGINT) during step 14: last.ckpt at the end of the step, exit 130, then resumed."""
    run_dir = work / "ctrlc"
    proc = train(
        run_dir,
        "+callbacks.signal._target_=tests.runs.SignalAt",
        "+callbacks.signal.step=14",
        "+callbacks.signal.signum=SIGINT",
    )
    saved = ckpt_step(run_dir)
    resumed = train(run_dir, "resume=true", TRUST_TESTS)
    outcome = f"exit {proc.returncode}, then " + (
        "resumed" if not resumed.returncode else f"resume exit {resumed.returncode}"
    )
    return ("Ctrl-C during step 14", outcome, 15 - (saved or 0), same_as(reference, run_dir))


def metrics_rows(reference: Path, work: Path) -> tuple:
    """SIGKILL right after a step checkpoint, with metrics.csv at the logger's default flush cadence (every 100
    steps): the rows up to the checkpoint must be on disk, and the resumed run continue them exactly."""
    run_dir = work / "rows"
    proc = train(run_dir, "callbacks.last.every_n_train_steps=7", wait=False, base=BASE)
    while (ckpt_step(run_dir) or 0) < 14 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved, steps = ckpt_step(run_dir), logged(run_dir)["steps"]
    kept = f"{len([s for s in steps if s < saved])} of {saved} rows before last.ckpt on disk"
    resumed = train(run_dir, "resume=true", base=BASE)
    outcome = f"{kept}; " + ("resumed" if not resumed.returncode else f"resume exit {resumed.returncode}")
    lost = "none" if sorted(steps)[:saved] == list(range(saved)) else "rows before the checkpoint"
    return (
        f"SIGKILL after last.ckpt at step {saved}, metrics flushed every 100 steps",
        outcome,
        "-",
        lost if lost != "none" else same_as(reference, run_dir),
    )


def non_finite_buffers(work: Path) -> tuple:
    """optim.lr=1e9 with BatchNorm and a checkpoint every step: BatchNorm's running_var goes Inf while the loss
    may stay finite; no checkpoint may hold it, and selfsup-eval may not score one that does."""
    run_dir = work / "bn"
    base = [a for a in BASE if a != "+backbone.norm=none"]
    proc = train(
        run_dir,
        "optim.lr=1e9",
        "optim.warmup_epochs=0",
        "callbacks.last.every_n_train_steps=1",
        "trainer.max_epochs=1",
        base=(*base, FLUSH_EVERY_STEP),
    )
    saved = ckpt_step(run_dir)
    bad = (
        []
        if saved is None
        else [k for k, v in weights(run_dir).items() if v.is_floating_point() and not torch.isfinite(v).all()]
    )
    outcome = f"exit {proc.returncode}; last.ckpt at step {saved}"
    return (
        "optim.lr=1e9 with BatchNorm (buffers go Inf)",
        outcome,
        "-",
        "none (every tensor of last.ckpt finite)" if not bad else f"last.ckpt holds Inf in {bad[:2]}",
    )


def config_injection(reference: Path, work: Path) -> tuple:
    """A pickle-free checkpoint whose saved backbone config runs a pickle (torch.load of io.BytesIO) or truncates a
    file (builtins.open), given to every command that reads a saved config."""
    import pickle

    marker, victim = work / "injected", work / "victim"
    victim.write_text("precious")

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    attacks = {
        "pickle": {
            "_target_": "torch.load",
            "weights_only": False,
            "f": {"_target_": "io.BytesIO", "initial_bytes": pickle.dumps(Trap())},
        },
        "open": {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
    }
    codes = []
    for name, attack in attacks.items():
        ckpt["selfsup"]["config"]["backbone"] = attack
        run_dir = work / f"inject-{name}"
        (run_dir / "checkpoints").mkdir(parents=True)
        evil = run_dir / "checkpoints" / "last.ckpt"
        torch.save(ckpt, evil)
        codes += [
            train(run_dir, "resume=true").returncode,
            train(work / f"inject-{name}-new", f"ckpt_path={evil}").returncode,
            train(work / f"inject-{name}-init", f"init_from={evil}").returncode,
            cli("selfsup.evaluate", f"checkpoint={evil}", f"out={work / 'inject-eval'}").returncode,
            cli("selfsup.export", f"checkpoint={evil}", f"out={work / 'inject.safetensors'}").returncode,
        ]
    ran = marker.exists() or victim.read_text() != "precious"
    return (
        "saved config naming torch.load / builtins.open: train resume, ckpt_path, init_from, eval, export",
        f"exit codes {codes}; code ran: {ran}",
        0,
        "none" if not ran else "CODE RAN",
    )


def wrong_directories(reference: Path, work: Path) -> list[tuple]:
    """ckpt_path= of one run into another run's directory; resume=true on a mistyped directory."""
    other = work / "other"
    train(other, "trainer.max_epochs=1")
    before = files(other)
    proc = train(other, f"ckpt_path={reference / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=5")
    typo = work / "refrence"
    resumed = train(typo, "resume=true")
    return [
        (
            "ckpt_path=<run A's last.ckpt> into run B's directory",
            f"exit {proc.returncode}: {last_line(proc)[22:110]}",
            0,
            "none (run B's files unchanged)" if files(other) == before else "RUN B CHANGED",
        ),
        (
            "resume=true on a mistyped directory",
            f"exit {resumed.returncode}: {last_line(resumed)[22:110]}",
            0,
            "none (no run started: Hydra's train.log only)"
            if sorted(p.name for p in typo.iterdir()) == ["train.log"]
            else f"a run started there: {sorted(p.name for p in typo.iterdir())}",
        ),
    ]


def longer_resume(reference: Path, work: Path) -> tuple:
    """A finished run resumed with more epochs: the LR schedule is the one planned at the start, said in one line."""
    run_dir = work / "longer"
    shutil.copytree(reference, run_dir)
    proc = train(run_dir, "resume=true", "trainer.max_epochs=6")
    said = [line for line in (proc.stderr + proc.stdout).splitlines() if "schedule" in line.lower()]
    steps = logged(run_dir)["steps"]
    ok = proc.returncode == 0 and sorted(steps) == list(range(60))
    return (
        "finished run resumed with trainer.max_epochs 4 -> 6",
        f"exit {proc.returncode}: {(said[0] if said else 'no line about the schedule')[:110]}",
        0,
        "none (60 steps, each once)" if ok else f"{len(steps)} steps logged",
    )


def bad_sweep(work: Path) -> tuple:
    sweep = work / "sweep"
    proc = cli("selfsup.train", "-m", *BASE, "objective.temperature=0.2,0", f"hydra.sweep.dir={sweep}")
    started = sorted(p.name for p in sweep.glob("*") if p.is_dir()) if sweep.is_dir() else []
    return (
        "sweep objective.temperature=0.2,0",
        f"exit {proc.returncode}: {last_line(proc)[22:110]}",
        0,
        "none (no point trained)" if not started else f"trained {started}",
    )


def eval_out_is_a_file(reference: Path, work: Path) -> tuple:
    out = work / "results.txt"
    out.write_text("keep me")
    proc = cli("selfsup.evaluate", f"checkpoint={reference}", f"out={out}")
    return (
        "selfsup-eval out=<an existing file>",
        f"exit {proc.returncode}: {last_line(proc)[21:110]}",
        0,
        "none (file unchanged)" if out.read_text() == "keep me" else "FILE CHANGED",
    )


def read_only_dir(work: Path) -> tuple:
    mount = work / "ro"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        return ("read-only run directory", "skipped: cannot mount a tmpfs here", "-", "-")
    try:
        proc = train(mount)
        return ("read-only run directory", f"exit {proc.returncode}: {last_line(proc)[22:110]}", 0, "none")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def non_finite(work: Path) -> tuple:
    run_dir = work / "nan"
    proc = train(run_dir, "optim.lr=1e30", "optim.warmup_epochs=0", "callbacks.last.every_n_train_steps=1")
    saved = ckpt_step(run_dir)
    finite = saved is not None and all(
        torch.isfinite(v).all() for v in weights(run_dir).values() if v.is_floating_point()
    )
    at = max(logged(run_dir)["steps"], default=-1) + 1
    outcome = f"exit {proc.returncode}: {last_line(proc)[:90]}"
    return (
        "NaN loss (optim.lr=1e30)",
        outcome,
        at - (saved or 0),
        "none (last.ckpt finite)" if finite or saved is None else "last.ckpt holds NaN",
    )


def full_disk(work: Path) -> tuple:
    mount = work / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=280k", "tmpfs", str(mount)], capture_output=True).returncode:
        return ("full disk (280 kB tmpfs)", "skipped: cannot mount a tmpfs here", "-", "-")
    try:
        run_dir = mount / "run"
        proc = train(run_dir, "callbacks.last.every_n_train_steps=3", "callbacks.best=null")
        saved = ckpt_step(run_dir)
        left = sorted(os.listdir(run_dir / "checkpoints"))
        at = max(logged(run_dir)["steps"], default=-1) + 1
        data = "none (last.ckpt intact, no temporary left)" if saved and left == ["last.ckpt"] else f"left {left}"
        return ("full disk (280 kB tmpfs)", f"exit {proc.returncode}: {last_line(proc)[:90]}", at - (saved or 0), data)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def two_runs(work: Path) -> tuple:
    """A second `selfsup-train resume=true` into the directory of a live (long) run."""
    run_dir = work / "twice"
    first = train(run_dir, "trainer.max_epochs=30", wait=False)
    while ckpt_step(run_dir) is None and first.poll() is None:
        time.sleep(0.05)
    second = train(run_dir, "resume=true")
    first.wait()
    steps = logged(run_dir)["steps"]
    intact = first.returncode == 0 and sorted(steps) == list(range(300))
    outcome = f"second: exit {second.returncode}: {last_line(second)[22:90]}; first: exit {first.returncode}"
    return (
        "two trainings in one run dir",
        outcome,
        0,
        "none (first run's metrics intact)" if intact else f"first run: {len(steps)} logged steps",
    )


def malicious(work: Path) -> tuple:
    marker = work / "trap-fired"
    evil = work / "evil.ckpt"
    code = (
        f"import torch, pathlib\nclass T:\n    def __reduce__(self): return (pathlib.Path.touch, "
        f"(pathlib.Path({str(marker)!r}),))\ntorch.save({{'state_dict': {{}}, 'selfsup': {{'config': {{}}}}, "
        f"'x': T()}}, {str(evil)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    codes = [
        cli("selfsup.train", f"ckpt_path={evil}", f"hydra.run.dir={work / 'evil-run'}").returncode,
        cli("selfsup.evaluate", f"checkpoint={evil}").returncode,
        cli("selfsup.export", f"checkpoint={evil}", f"out={work / 'e.safetensors'}").returncode,
    ]
    fired = marker.exists()
    return (
        "booby-trapped .ckpt to train/eval/export",
        f"exit codes {codes}; trap fired: {fired}",
        0,
        "none" if not fired else "CODE RAN",
    )


def corrupt_image(work: Path) -> tuple:
    import numpy as np
    from PIL import Image

    root = work / "images"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.jpg")
    (root / "train" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    command = [
        "data=imagefolder",
        f"data.root={root}",
        "data.batch_size=13",
        "data.image_size=16",
        "data.num_workers=2",
        "backbone=small_cnn",
        "trainer.max_epochs=1",
        "callbacks.progress=null",
        f"hydra.run.dir={work / 'img-run'}",
    ]
    proc = cli("selfsup.train", *command)
    named = "broken.jpg" in last_line(proc)
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(root / "train" / "b" / "broken.jpg", format="JPEG")
    again = cli("selfsup.train", *command)  # the same command, once the file is fixed
    return (
        "corrupt image, 2 loader workers; then the same command",
        f"exit {proc.returncode}, file named: {named}; rerun exit {again.returncode}",
        "-",
        "none",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the table as markdown here")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="selfsup-faults-") as tmp:
        work = Path(tmp)
        reference = work / "reference"
        proc = train(reference, wait=False)
        while not logged(reference)["steps"] and proc.poll() is None:
            time.sleep(0.02)
        started = time.monotonic()
        while len(logged(reference)["steps"]) < TOTAL_STEPS and proc.poll() is None:
            time.sleep(0.02)
        seconds = time.monotonic() - started  # from its first logged step to its last
        if proc.wait():
            raise SystemExit("the uninterrupted reference run failed")
        rows = kill_9(reference, work, random.Random(args.seed), args.kills, seconds)
        rows += [metrics_rows(reference, work)]
        rows += sigterm(reference, work)
        rows += [
            ctrl_c(reference, work),
            non_finite(work),
            non_finite_buffers(work),
            full_disk(work),
            two_runs(work),
            malicious(work),
            config_injection(reference, work),
        ]
        rows += wrong_directories(reference, work)
        rows += [
            longer_resume(reference, work),
            bad_sweep(work),
            eval_out_is_a_file(reference, work),
            read_only_dir(work),
            corrupt_image(work),
        ]
    header = ("case", "outcome", "steps lost", "data lost")
    table = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    table += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    text = "\n".join(table)
    print(text)
    print(f"\n{len(rows)} cases in {time.time() - t0:.0f} s")
    if args.out is not None:
        args.out.write_text(
            f"# Fault drill\n\n`{' '.join(['.venv/bin/python', 'bench/fault_drill.py', *sys.argv[1:]])}` on "
            f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs). Quickstart data, 10 steps an epoch, 4 epochs; the "
            'default checkpoint cadence (every epoch). "data lost: none" = the resumed run equals an uninterrupted '
            f"one bit for bit (losses, validation rows, weights).\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
