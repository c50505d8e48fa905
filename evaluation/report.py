"""The evaluation report: headline table, the targets (evaluation.targets), all result tables, and PNG plots."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Sequence

import numpy as np

from weightnet.metrics import fmt

def headline_rows(rows: Sequence[dict], primary: str) -> list[dict]:
    """Random-split rows of every zoo (primary first), one per predictor and property, best tau first."""
    sel = [r for r in rows if r["experiment"].endswith("/ random") and r["test_set"] == "test"]
    sel.sort(key=lambda r: (r["experiment"] != f"{primary} / random", r["experiment"], r["property"] != "test_accuracy",
                            r["property"], -_nz(r["kendall_tau"][0])))
    return [{"zoo": r["experiment"].split(" / ")[0], "property": r["property"], "predictor": r["predictor"],
             "kendall_tau": fmt(r["kendall_tau"]), "spearman": fmt(r["spearman"]), "r2": fmt(r["r2"]),
             "mae": fmt(r["mae"], 4), "coverage": fmt(r["coverage"], 2), "fit_s": fmt(r["fit_seconds"], 1), "n_test": r["n_test"],
             "seeds": r["n_seeds"]}
            for r in sel]


def _nz(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def _table(rows: Sequence[dict], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


HEAD_COLS = ("zoo", "property", "predictor", "kendall_tau", "spearman", "r2", "mae", "coverage", "fit_s", "n_test",
             "seeds")


def headline_text(headline: Sequence[dict], targets: Sequence[dict]) -> str:
    """Plain-text table (for ``make demo``): the headline rows, then each target and its verdict."""
    cols = HEAD_COLS[:-3]
    widths = [max(len(c), *(len(str(r[c])) for r in headline)) if headline else len(c) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in headline]
    lines.append("")
    lines += [f"[{_verdict(t['met'])}] {t['target']}: {t['measured']}" for t in targets]
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "MISSED")


# --- plots -------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s).strip("_")


def plot_scatter(out: pathlib.Path, scatter: dict) -> list[str]:
    """Predicted vs true, one figure per (experiment, test set, property), one panel per predictor."""
    plt = _plt()
    groups: dict[tuple, list] = {}
    for (exp, test, pred, prop), (y, p) in scatter.items():
        if exp.endswith(("/ random", "/ widths")) or exp.startswith("held-out"):
            groups.setdefault((exp, test, prop), []).append((pred, y, p))
    files = []
    for (exp, test, prop), panels in sorted(groups.items()):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
        for ax, (pred, y, p) in zip(axes[0], panels):
            ax.scatter(y, p, s=10, alpha=0.7)
            lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(pred, fontsize=9)
            ax.set_xlabel(f"true {prop}", fontsize=8)
        axes[0][0].set_ylabel("predicted", fontsize=8)
        fig.suptitle(f"{exp} [{test}]", fontsize=9)
        fig.tight_layout()
        name = f"scatter_{_slug(exp)}_{_slug(test)}_{_slug(prop)}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def plot_learning_curve(out: pathlib.Path, rows: Sequence[dict]) -> str | None:
    lc = [r for r in rows if "/ learning curve" in r["experiment"] and r["property"] == "test_accuracy"]
    if not lc:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for pred in sorted({r["predictor"] for r in lc}):
        pts = sorted((r["n_train"], r["kendall_tau"][0], r["kendall_tau"][1]) for r in lc if r["predictor"] == pred)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=pred)
    ax.set_xlabel("training models")
    ax.set_ylabel("Kendall tau (test accuracy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=90)
    plt.close(fig)
    return "learning_curve.png"


def plot_ablations(out: pathlib.Path, rows: Sequence[dict]) -> str | None:
    ab = [r for r in rows if r["experiment"].endswith("/ ablation") and r["property"] == "test_accuracy"]
    if not ab:
        return None
    plt = _plt()
    ab.sort(key=lambda r: r["predictor"])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(ab) + 1))
    ax.barh([r["predictor"] for r in ab], [r["kendall_tau"][0] for r in ab], xerr=[r["kendall_tau"][1] for r in ab])
    ax.set_xlabel("Kendall tau (test accuracy)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=90)
    plt.close(fig)
    return "ablations.png"


def plot_heatmap(out: pathlib.Path, name: str, title: str, data: dict[str, dict[str, float]]) -> str:
    plt = _plt()
    props = sorted(data)
    layers = sorted({k for v in data.values() for k in v}, key=lambda k: (int(k.split("@")[1]), k))
    m = np.array([[data[p].get(k, np.nan) for k in layers] for p in props])
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(layers), 0.5 * len(props) + 1.5))
    im = ax.imshow(m, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(props)), props, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


# --- markdown ----------------------------------------------------------------------------------
def _result_rows(rows: Sequence[dict]) -> list[dict]:
    return [{"experiment": r["experiment"], "test set": r["test_set"], "predictor": r["predictor"],
             "property": r["property"], "tau": fmt(r["kendall_tau"]), "spearman": fmt(r["spearman"]),
             "r2": fmt(r["r2"]), "mae": fmt(r["mae"], 4), "rmse": fmt(r["rmse"], 4), "coverage": fmt(r["coverage"], 2),
             "interval width": fmt(r.get("interval_width", (math.nan, math.nan)), 3),
             "fit s": fmt(r["fit_seconds"], 1), "n_train": r["n_train"], "n_test": r["n_test"], "seeds": r["n_seeds"]} for r in rows]


def write(out: pathlib.Path, run_id: str, config: dict, rows: Sequence[dict], scatter: dict, sens: dict, attn: dict,
          targets: Sequence[dict], headline: Sequence[dict], notes: Sequence[str], samples: Sequence,
          reliability: dict | None = None, failures: Sequence[str] = (), status: str = "completed") -> pathlib.Path:
    """report.md (+ plots) in ``out``; when anything failed, the status and the failures come first."""
    out.mkdir(parents=True, exist_ok=True)
    fams: dict[str, int] = {}
    for s in samples:
        fams[s.family] = fams.get(s.family, 0) + 1
    md = [f"# Evaluation {run_id}", ""]
    if failures:
        md += [f"## Status: {status.upper()}: {len(failures)} failure(s)", "",
               "These parts raised; their rows are missing below and the targets they feed read 'not measured'.", ""]
        md += [f"- {f}" for f in failures] + [""]
    md += [
          f"Suite `{config['suite']['name']}` on snapshot {config['snapshot_id']}"
          + (f" (`--at {config['at']}`)" if config.get("at") is not None else "")
          + f", seeds {config['seeds']}; metrics are mean ± std over seeds.", "",
          "Zoo: " + ", ".join(f"{f} ({n} models)" for f, n in sorted(fams.items())), "",
          "## Headline (random split by training run)", "", _table(headline, HEAD_COLS), "",
          "## Targets (issue 7 §7)", "",
          _table([{"target": t["target"], "measured": t["measured"], "verdict": _verdict(t["met"])} for t in targets],
                 ("target", "measured", "verdict")), ""]
    if reliability:
        md += ["## Label reliability (test accuracy)", "",
               "Kendall tau of each model's test accuracy with itself re-measured: on a bootstrap resample of the "
               "test examples (optimistic) and between two disjoint halves (pessimistic). No predictor can be "
               "expected to rank models much better than the label ranks itself.", "",
               _table([{"family": f, **{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()}}
                       for f, r in sorted(reliability.items())],
                      ("family", "n_models", "n_test", "bootstrap_tau", "split_half_tau")), ""]
    result_rows = _result_rows(sorted(rows, key=lambda r: (r["experiment"], r["test_set"], r["property"], r["predictor"])))
    md += ["## All results", "", _table(result_rows, tuple(result_rows[0]) if result_rows else ("experiment",)), ""]
    plots = plot_scatter(out, scatter)
    lc, ab = plot_learning_curve(out, rows), plot_ablations(out, rows)
    if lc:
        md += ["## Learning curve", "", f"![learning curve]({lc})", ""]
    if ab:
        md += ["## Ablations", "", f"![ablations]({ab})", ""]
    if sens or attn:
        md += ["## Interpretability", "",
               "Sensitivity: mean |change of the prediction| when one layer (kind@depth) of each test model is zeroed, "
               "in units of the predictions' std. Layers that matter most per property:", ""]
        for pred, s in sens.items():
            if not any(s.values()):
                md.append(f"- {pred}: no layer could be perturbed")
                continue
            name = plot_heatmap(out, f"sensitivity_{_slug(pred)}.png", f"sensitivity of {pred}", s)
            for prop, layer_vals in s.items():
                top = sorted(layer_vals.items(), key=lambda kv: -kv[1])[:3]
                md.append(f"- {pred} / {prop}: " + ", ".join(f"{k} ({v:.2f})" for k, v in top))
            md += ["", f"![sensitivity {pred}]({name})", ""]
        for pred, a in attn.items():
            name = plot_heatmap(out, f"attention_{_slug(pred)}.png", f"attention of {pred}", {"attention": a})
            md += [f"![attention {pred}]({name})", ""]
    if plots:
        md += ["## Predicted vs true", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += ["## Configuration", "", "```json", json.dumps(config, indent=1, sort_keys=True, default=str), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
