"""Ours vs lightly's loss, step by step, from the same initial weights — the heads' too: tells a difference in a
method's implementation from an unlucky initial draw of its heads.

    .venv/bin/python bench/peer_losses.py [--method vicreg] [--seeds 0,1] [--steps 50]   # clipped, as the tables run
    .venv/bin/python bench/peer_losses.py --override trainer.gradient_clip_val=null   # unclipped

``bench/peer_table.py`` starts both sides from the same backbone, but each side draws its own heads. Here, per seed,
three runs train on the same batches of ``bench/peer_table.py``'s CIFAR-10 setting (the recipe at
``bench/cifar_table.py``'s budget), with its optimiser and schedule, in a plain loop:

- ``ours``: our module's training step (``step_outputs`` → ``objective.forward_views``), which gives the losses
  ``selfsup-train`` logs for the same run;
- ``lightly, our heads``: lightly's model (``peer_table.LIGHTLY``) with its projection (and prediction) head loaded
  from our heads' initial weights, layer by layer;
- ``lightly``: lightly's model with its own heads' draws, as in ``bench/peer_table.py``.

Methods whose two sides agree layer for layer and loss for loss (``tests/bench/test_peer_losses.py``), without a
momentum branch or memory: SimSiam and VICReg. (lightly's SimCLR head ends in a BatchNorm layer where ours does not,
and its Barlow Twins loss takes λ = 0.005 against our recipe's 0.0051.) Prints, and writes to ``--out``, a markdown
table: the loss at the first step, at the end of the warm-up, the largest after the first 10 steps (a spike) and the
last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import peer_table  # noqa: E402
from tests.config_utils import compose_train  # noqa: E402

METHODS = ("simsiam", "vicreg")
RUNS = ("ours", "lightly, our heads", "lightly")


def copy_head(ours: nn.Module, theirs: nn.Module, name: str) -> None:
    """Load our head's weights into lightly's: the same layers in the same order, tensor by tensor."""
    src, dst = ours.state_dict(), theirs.state_dict()
    shapes = [tuple(t.shape) for t in src.values()], [tuple(t.shape) for t in dst.values()]
    if shapes[0] != shapes[1]:
        raise SystemExit(f"{name}: our head's tensors {shapes[0]} do not match lightly's {shapes[1]}")
    theirs.load_state_dict({k: v.clone() for k, v in zip(dst, src.values())})


def losses(method: str, seed: int, steps: int, run: str, run_root: Path, overrides=()) -> tuple[list[float], int]:
    """The first ``steps`` losses of one run (``overrides`` on top of the setting), and its warm-up steps."""
    run_dir = run_root / f"{method}_seed{seed}"
    cfg = compose_train([*peer_table.setting(method, "cifar10", 5, seed, run_dir), *overrides], run_dir)
    model, datamodule, module = peer_table.lightly_model(cfg, method)
    if run == "lightly, our heads":
        copy_head(module.projector, model.projection, "projector")
        if model.prediction is not None:
            copy_head(module.predictor, model.prediction, "predictor")
    if run == "ours":
        params = module.online_parameters()
        module.train()
    else:
        params = list(model.parameters())
        model.train()
    plan = datamodule.batch_plan()
    opt, sched = module.optim.build(params, [], plan.global_batch, plan.total_steps, plan.steps_per_epoch)
    warmup = int(round(cfg.optim.warmup_epochs * plan.steps_per_epoch))
    loader, out, epoch = datamodule.train_dataloader(), [], 0
    while len(out) < steps:
        loader.load_state_dict({"epoch": epoch, "batches_done": 0})
        for batch in loader:
            if run == "ours":
                loss = module.objective.forward_views(module.step_outputs(batch))
            else:
                loss = model(batch["views"], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            peer_table.clip_gradients(params, cfg.trainer)  # ours: the online parameters, as the module clips them
            opt.step()
            sched.step()
            out.append(loss.item())
            if len(out) == steps:
                break
        epoch += 1
    return out, warmup


# the loss falls from its start in the first steps: a spike is the largest loss after them
SETTLE = 10


def row(seed: int, run: str, values: list[float], warmup: int) -> str:
    after = values[SETTLE:] or values[-1:]
    peak = max(range(len(after)), key=after.__getitem__)
    at_warmup = values[min(warmup, len(values)) - 1]
    return (
        f"| {seed} | {run} | {values[0]:.2f} | {at_warmup:.2f} | {after[peak]:.2f} (step {SETTLE + peak + 1}) | "
        f"{values[-1]:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, default="vicreg")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=None, help="default: bench/PEER_LOSSES_<method>.md")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "peer_losses"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override on top of the setting, e.g. trainer.gradient_clip_val=null (repeatable)",
    )
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps={args.steps}: expected a positive number of steps")
    lines = [
        f"{args.method} on CIFAR-10 at bench/peer_table.py's budget, the first {args.steps} steps, 2-core CPU "
        f"({time.strftime('%Y-%m-%d')}; lightly {peer_table._lightly_version()}). Command: `.venv/bin/python "
        f"bench/peer_losses.py --method {args.method} --seeds {args.seeds} --steps {args.steps}"
        + "".join(f" --override {o}" for o in args.override)
        + "`",
        "",
        f"| seed | run | loss, step 1 | end of warm-up | largest after step {SETTLE} | last |",
        "|---|---|---|---|---|---|",
    ]
    for seed in (int(s) for s in args.seeds.split(",")):
        for run in RUNS:
            values, warmup = losses(args.method, seed, args.steps, run, Path(args.run_root), args.override)
            lines.append(row(seed, run, values, warmup))
            print(lines[-1], flush=True)
    out = Path(args.out or ROOT / "bench" / f"PEER_LOSSES_{args.method}.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
