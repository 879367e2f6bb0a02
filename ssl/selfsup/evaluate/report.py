"""Evaluation reports: ``report.md`` + self-contained ``report.html`` (PNG plots embedded as base64).

A run report shows the metrics, the training curves and top covariance eigenvalues logged in ``metrics.csv``, the
singular-value spectrum of the embeddings and backbone features, and a 2-D PCA map of test embeddings coloured by
label. A sweep report ranks runs by each label-free score (:data:`LABEL_FREE`: RankMe, α-ReQ, LiDAR) next to their
overridden hyper-parameters and probe accuracies, with each score's Spearman / Kendall rank correlation with
accuracy and the accuracy of the run it would select (label-free model selection: Garrido et al. 2023,
arXiv:2210.02885; Agrawal et al. 2022; Thilak et al. 2023, arXiv:2312.04000).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from selfsup.runtime.files import atomic_write_text

# Metric columns of run and sweep tables, in display order: key → header.
METRIC_COLUMNS = {
    "rankme": "RankMe (emb.)",
    "rankme_backbone": "RankMe (backbone)",
    "alpha_req": "α-ReQ (emb.)",
    "alpha_req_backbone": "α-ReQ (backbone)",
    "lidar": "LiDAR (emb.)",
    "lidar_backbone": "LiDAR (backbone)",
    "knn_top1": "kNN top-1 (k=200)",
    "knn_top1_k20": "kNN top-1 (k=20)",
    "linear_top1": "linear top-1",
    "fewshot_1shot": "few-shot, 1 shot",
    "fewshot_5shot": "few-shot, 5 shots",
    "precision_at_10": "precision@10",
    "map_at_r": "MAP@R",
    "nmi": "k-means NMI",
    "ari": "k-means ARI",
    "corruption_top1": "corrupted top-1 (probe)",
    "corruption_ratio": "corrupted / clean",
    "finetune_top1": "fine-tuned top-1",
}
# Label-based scores (the default protocols' and the others of ``eval.protocols``), each correlated with every
# label-free score in a sweep report.
ACCURACY_KEYS = (
    "knn_top1",
    "knn_top1_k20",
    "linear_top1",
    "fewshot_1shot",
    "fewshot_5shot",
    "precision_at_10",
    "map_at_r",
    "nmi",
    "ari",
    "corruption_top1",
    "finetune_top1",
)
# Label-free scores a sweep is ranked by: key → how a run's value becomes its score (higher: predicted better).
# RankMe and LiDAR: the value. α-ReQ: closeness to α = 1, where Agrawal et al. 2022 find probes best.
LABEL_FREE = {
    "rankme": lambda v: v,
    "rankme_backbone": lambda v: v,
    "alpha_req": lambda v: -abs(v - 1),
    "alpha_req_backbone": lambda v: -abs(v - 1),
    "lidar": lambda v: v,
    "lidar_backbone": lambda v: v,
}


def write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON (NaN and ±Inf, which JSON has no words for, become null)."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _json_safe(x):
    if isinstance(x, torch.Tensor | np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, str | int | bool) or x is None:
        return x
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# -- plots ---------------------------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def spectrum_png(spectra: Mapping[str, torch.Tensor]) -> bytes:
    """Normalised singular values σ_k / σ_1 on a log scale, one line per feature set (name → descending σ)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    for name, sigma in spectra.items():
        s = torch.as_tensor(sigma, dtype=torch.float64).cpu().numpy()
        s = s / s[0] if s.size and s[0] > 0 else s
        ax.semilogy(np.arange(1, s.size + 1), np.maximum(s, 1e-16), label=f"{name} (D={s.size})")
    ax.set_xlabel("index k")
    ax.set_ylabel("σ_k / σ_1")
    ax.set_title("Singular-value spectrum")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _png(fig)


CURVES = (
    ("train/loss", "training loss"),
    ("train/lr", "learning rate"),
    ("train/probe_top1", "online probe top-1 (train)"),
    ("val/knn_top1", "val kNN top-1"),
    ("val/probe_top1", "val probe top-1"),
    ("val/rankme", "val RankMe"),
)


def read_metrics_csv(path: str | os.PathLike) -> dict[str, tuple[list[int], list[float]]]:
    """``metrics.csv`` of a run as {metric: (steps, values)}, rows without a value skipped."""
    import csv

    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or not value:
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(v)
    return series


def curves_png(series: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> bytes | None:
    """The run's training curves (:data:`CURVES` that were logged), one panel each, against the optimiser step."""
    from matplotlib.figure import Figure

    panels = [(key, title) for key, title in CURVES if key in series and series[key][0]]
    if not panels:
        return None
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
    for i, (key, title) in enumerate(panels, 1):
        ax = fig.add_subplot(rows, cols, i)
        steps, values = series[key]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def eigenvalues_png(series: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> bytes | None:
    """The logged ``train/eigval_k`` trajectories (``callbacks.collapse.eigenvalues``) against the optimiser step on a
    log scale: the staircase of stepwise learning (Simon et al. 2023, arXiv:2303.15438, Fig. 1)."""
    from matplotlib.figure import Figure

    keys = sorted(
        (k for k in series if k.startswith("train/eigval_") and series[k][0]), key=lambda k: int(k.rsplit("_", 1)[1])
    )
    if not keys:
        return None
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for key in keys:
        steps, values = series[key]
        ax.semilogy(steps, np.maximum(values, 1e-12), lw=1.2, label=f"λ{key.rsplit('_', 1)[1]}")
    ax.set_xlabel("step")
    ax.set_ylabel("eigenvalue of the embedding covariance")
    ax.set_title("Top eigenvalues during training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def pca_2d(z: torch.Tensor) -> np.ndarray:
    """(N, 2) projection of the centred rows of z on their two leading principal directions (float64)."""
    z = z.detach().to(torch.float64).cpu()
    z = z - z.mean(0)
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    out = z @ vh[:2].T
    return torch.nn.functional.pad(out, (0, 2 - out.shape[1])).numpy()  # D = 1 → second coordinate 0


def embedding_map_png(
    z: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None, max_points: int = 5000, seed: int = 0
) -> bytes:
    """Scatter of a 2-D PCA map of (at most ``max_points``, seeded sample of) the rows of z, coloured by label."""
    from matplotlib.figure import Figure

    labels = torch.as_tensor(labels).cpu()
    if z.shape[0] > max_points:
        rows = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        z, labels = z[rows], labels[rows]
    xy = pca_2d(z)
    fig = Figure(figsize=(5.5, 4.6))
    ax = fig.add_subplot()
    labels = labels.numpy()
    uniq = np.unique(labels)
    cmap = "tab10" if len(uniq) <= 10 else "tab20" if len(uniq) <= 20 else "viridis"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, s=4, alpha=0.7, linewidths=0)
    if len(uniq) <= 20:
        names = [classes[c] if classes is not None and 0 <= c < len(classes) else str(c) for c in uniq]
        handles = [
            ax.scatter([], [], color=sc.cmap(sc.norm(c)), s=12, label=name) for c, name in zip(uniq, names, strict=True)
        ]
        ax.legend(handles=handles, fontsize=7, markerscale=1.2, loc="best", framealpha=0.6)
    ax.set_title(f"Test embeddings, PCA (n={len(labels)})")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


# -- tables --------------------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    esc = lambda s: _fmt(s).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"
)


def _html_page(title: str, parts: Sequence[str]) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n"
    )


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# -- run report ----------------------------------------------------------------------------------------------------


def write_run_report(
    out_dir: str | os.PathLike,
    title: str,
    metrics: Mapping,
    spectrum: bytes | None = None,
    embedding_map: bytes | None = None,
    details: Mapping | None = None,
    curves: bytes | None = None,
    eigenvalues: bytes | None = None,
) -> tuple[Path, Path]:
    """``report.md`` (plots as ``report_*.png`` beside it) and self-contained ``report.html`` in out_dir."""
    out_dir = Path(out_dir)
    first_k = (metrics.get("knn_k") or [200])[0]
    labels = {**METRIC_COLUMNS, "knn_top1": f"kNN top-1 (k={first_k})"}
    shown = set(METRIC_COLUMNS) | {f"knn_top1_k{first_k}"}  # knn_top1 is the first k's result: one row for both
    rows = [(labels[k], metrics[k]) for k in METRIC_COLUMNS if k in metrics]
    rows += [(k, v) for k, v in metrics.items() if k not in shown and isinstance(v, int | float | str)]
    md = [f"# {title}", "", _md_table(("metric", "value"), rows), ""]
    hp = [f"<h2>Metrics</h2>{_html_table(('metric', 'value'), rows)}"]
    plots = (
        ("curves", curves, "Training curves (metrics.csv)"),
        ("eigenvalues", eigenvalues, "Top eigenvalues of the embedding covariance during training"),
        ("spectrum", spectrum, "Singular-value spectrum"),
        ("map", embedding_map, "PCA map of the test embeddings"),
    )
    for name, png, heading in plots:
        if png is None:
            continue
        atomic_write_text(out_dir / f"report_{name}.png", png)
        md += [f"## {heading}", "", f"![{heading}](report_{name}.png)", ""]
        hp.append(f"<h2>{html.escape(heading)}</h2>{_img(png, heading)}")
    if details:
        block = json.dumps(_json_safe(details), indent=2)
        md += ["## Details", "", "```json", block, "```", ""]
        hp.append(f"<h2>Details</h2><pre>{html.escape(block)}</pre>")
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.html", _html_page(title, hp))
    return out_dir / "report.md", out_dir / "report.html"


# -- sweep report --------------------------------------------------------------------------------------------------


def rank_correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman ρ and Kendall τ between x and y over the pairs where both are finite (NaN with < 3 pairs or a
    constant side)."""
    from scipy import stats

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    nan = {"spearman": float("nan"), "kendall": float("nan"), "n": len(pairs)}
    if len(pairs) < 3:
        return nan
    a, b = map(np.asarray, zip(*pairs, strict=True))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return nan
    return {"spearman": float(stats.spearmanr(a, b)[0]), "kendall": float(stats.kendalltau(a, b)[0]), "n": len(pairs)}


def _value(run: Mapping, key: str) -> float:
    """``run[key]`` as a float; NaN where it was not measured (missing, or null in a sweep.json)."""
    value = run.get(key)
    return float(value) if value is not None else float("nan")


def score(run: Mapping, key: str) -> float:
    """A run's label-free score under :data:`LABEL_FREE` ``key`` (NaN where it was not measured)."""
    value = _value(run, key)
    return LABEL_FREE[key](value) if math.isfinite(value) else float("nan")


def _ranked(runs: Sequence[Mapping], value) -> list[Mapping]:
    """``runs`` sorted by ``value(run)``, highest first; unmeasured (NaN) runs last, in their order."""
    return sorted(runs, key=lambda r: -value(r) if math.isfinite(value(r)) else math.inf)


def sweep_summary(runs: Sequence[Mapping]) -> dict:
    """Runs ranked by each label-free score, and each score's rank correlations with each accuracy.

    Args:
        runs: one mapping per run with ``"name"``, ``"overrides"`` (list of ``key=value``) and metric keys.

    Returns:
        ``{"runs": runs sorted by RankMe (descending), "ranks": {score: {run name: 1-based rank}},
        "correlations": {accuracy: {score: {"spearman", "kendall", "n"}}}, "selection": {accuracy: {score: {"run",
        "chosen", "best", "regret"}}}}`` — the run each score ranks first, its accuracy, the best accuracy of the
        sweep and the difference; only scores that some run has.
    """

    def by(key: str) -> list[Mapping]:
        return _ranked(runs, lambda r: score(r, key))

    scores = [k for k in LABEL_FREE if any(math.isfinite(score(r, k)) for r in runs)]
    ranks = {k: {r["name"]: i for i, r in enumerate(by(k), 1) if math.isfinite(score(r, k))} for k in scores}
    correlations, selection = {}, {}
    for acc in ACCURACY_KEYS:
        if not any(math.isfinite(_value(r, acc)) for r in runs):
            continue
        correlations[acc] = {
            k: rank_correlations([score(r, k) for r in runs], [_value(r, acc) for r in runs]) for k in scores
        }
        best = max(_value(r, acc) for r in runs if math.isfinite(_value(r, acc)))
        selection[acc] = {}
        for k in scores:
            top = by(k)[0]
            chosen = _value(top, acc)
            selection[acc][k] = {"run": top["name"], "chosen": chosen, "best": best, "regret": best - chosen}
    ranked = by("rankme") if "rankme" in scores else list(runs)
    return {"runs": ranked, "ranks": ranks, "correlations": correlations, "selection": selection}


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def write_sweep_report(out_dir: str | os.PathLike, title: str, summary: Mapping) -> tuple[Path, Path]:
    """Ranking table (runs, overridden hyper-parameters, metrics) + correlations as report.md / report.html."""
    runs = summary["runs"]
    hps = [dict(o.split("=", 1) if "=" in o else (o, "") for o in r.get("overrides", [])) for r in runs]
    hp_keys: list[str] = []
    for h in hps:
        hp_keys += [k for k in h if k not in hp_keys]
    varying = [k for k in hp_keys if len({h.get(k) for h in hps}) > 1]
    common = [f"{k}={hps[0][k]}" for k in hp_keys if k not in varying and k in hps[0]]
    labels = {
        r["name"]: ", ".join(f"{k}={h[k]}" for k in varying if k in h) or r["name"]
        for r, h in zip(runs, hps, strict=True)
    }
    # Hydra's override_dirname run names repeat the hyper-parameter columns: leave them out then.
    show_name = not varying or not all("=" in r["name"] for r in runs)
    metric_keys = [k for k in METRIC_COLUMNS if any(k in r for r in runs)]
    header = ["#", *(["run"] if show_name else []), *varying, *(METRIC_COLUMNS[k] for k in metric_keys)]
    rows = [
        [i, *([_short(r["name"])] if show_name else []), *(h.get(k, "") for k in varying)]
        + [r.get(k, float("nan")) for k in metric_keys]
        for i, (r, h) in enumerate(zip(runs, hps, strict=True), 1)
    ]
    names = lambda key: METRIC_COLUMNS.get(key, key)  # noqa: E731
    ranks = summary.get("ranks", {})
    accs = [k for k in ACCURACY_KEYS if k in summary["correlations"]]
    acc_ranks = {k: {r["name"]: i for i, r in enumerate(_ranked(runs, lambda r, k=k: _value(r, k)), 1)} for k in accs}
    rank_header = ["run", *(names(k) for k in ranks), *(names(k) for k in accs)]
    rank_rows = [
        [labels[r["name"]], *(ranks[k].get(r["name"], "—") for k in ranks), *(acc_ranks[k][r["name"]] for k in accs)]
        for r in runs
    ]
    corr_rows = [
        [names(acc), names(k) + (" (−|α−1|)" if k.startswith("alpha_req") else ""), c["spearman"], c["kendall"], c["n"]]
        for acc, by_score in summary["correlations"].items()
        for k, c in by_score.items()
    ]
    corr_header = ("accuracy", "label-free score", "Spearman ρ", "Kendall τ", "runs")
    sel_rows = [
        [names(acc), names(k), labels.get(sel["run"], sel["run"]), sel["chosen"], sel["best"], sel["regret"]]
        for acc, by_score in summary["selection"].items()
        for k, sel in by_score.items()
    ]
    sel_header = ("accuracy", "selected by", "run", "its accuracy", "best accuracy", "regret")
    intro = f"{len(runs)} runs ranked by RankMe of the embeddings (higher first)."
    if common:
        intro += f" Overrides shared by all runs: {' '.join(common)}."
    sections = (
        ("Rank of each run under each score (α-ReQ: closest to α = 1 first) and each accuracy", rank_header, rank_rows),
        ("Rank correlation with accuracy", corr_header, corr_rows),
        ("Selecting a run without labels", sel_header, sel_rows),
    )
    md = [f"# {title}", "", intro, "", _md_table(header, rows), ""]
    hp = [f"<p>{html.escape(intro)}</p>{_html_table(header, rows)}"]
    for heading, head, body in sections:
        md += [f"## {heading}", "", _md_table(head, body), ""]
        hp.append(f"<h2>{html.escape(heading)}</h2>{_html_table(head, body)}")
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.html", _html_page(title, hp))
    return out_dir / "report.md", out_dir / "report.html"
