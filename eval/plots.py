"""
Figures for the condensation probes (condensation.json, see eval/condensation.py) and for
training runs (metrics.jsonl written by train.py).

  plot_heatmaps   the paper's figure: per layer (x = layer fraction), the density histogram of the
                  sequence-averaged token cosine similarities (y), one panel per model
  plot_mean_cos   mean_cos against layer fraction for several checkpoints (and the centred version)
  plot_training   train and val cross-entropy, last-layer mean_cos and Spearman rho against iteration
  draw_figures    the experiment report's PNGs (eval/report.py): heatmaps, mean_cos, training,
                  paired differences, and plot_dose_response (against lambda)

matplotlib is imported inside the functions, so the rest of the project runs without it. Figures
are drawn on matplotlib's Agg canvas without pyplot, which leaves any interactive backend alone.

Usage:
    python -m eval.plots heatmap a/condensation.json b/condensation.json --labels CE dispersion --out fig.png
    python -m eval.plots mean_cos a/condensation.json b/condensation.json --out mean_cos.png
    python -m eval.plots training run1/metrics.jsonl run2/metrics.jsonl --labels CE dispersion --out curves.png
"""

import json
import math
import os
import re

import numpy as np

from configurator import ArgumentParser
from errors import InputError, MissingFileError, run_cli
from eval.stats import mean_std
from files import read_metrics


def new_figure(n_panels, panel_width, panel_height):
    """A figure on the Agg canvas with n_panels axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel_width * n_panels, panel_height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v):
    return f"{v:+.2f}" if _is_number(v) else "n/a"


def _labels(labels, paths_or_results):
    if labels:
        if len(labels) != len(paths_or_results):
            raise ValueError(f"{len(labels)} labels for {len(paths_or_results)} inputs")
        return list(labels)
    return [f"model {i}" for i in range(len(paths_or_results))]


def save_figure(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


# ---------------------------------------------------------------------- condensation

def plot_heatmaps(results, labels=None, path="condensation_heatmap.png", vmax=10.0, ylim=(-0.25, 1.0), cmap="viridis"):
    """The paper's condensation heatmap, one panel per probe result (condensation.json dicts):
    x = layer fraction, y = cosine similarity, colour = histogram density (clipped at vmax).
    The white line is each layer's mean_cos."""
    labels = _labels(labels, results)
    fig, axes = new_figure(len(results), 4.2, 3.8)
    mesh = None
    for ax, res, label in zip(axes, results, labels):
        layers = res["layers"]
        frac = np.array([l["layer_fraction"] for l in layers])
        density = np.array([l["hist"] for l in layers]).T  # (bins, n_layer + 1): one column per layer
        y_edges = np.asarray(res["hist_edges"])
        step = frac[1] - frac[0] if len(frac) > 1 else 1.0
        x_edges = np.concatenate([frac - step / 2, [frac[-1] + step / 2]])  # each layer a column centred on its fraction
        mesh = ax.pcolormesh(x_edges, y_edges, density, vmin=0.0, vmax=vmax, cmap=cmap, shading="flat")
        ax.plot(frac, [l["mean_cos"] for l in layers], color="white", lw=1.0, ls="--", marker=".", ms=3,
                label="mean cos")
        ax.set_xlim(x_edges[0], x_edges[-1])
        ax.set_ylim(*ylim)
        ax.set_xlabel("Layer fraction")
        ax.set_ylabel("Cosine similarity")
        ax.set_title(f"{label}\nSpearman ρ = {_fmt(res.get('spearman'))}, Kendall τ = {_fmt(res.get('kendall'))}",
                     fontsize=10)
        ax.legend(loc="lower right", fontsize=8, framealpha=0.3)
    fig.colorbar(mesh, ax=list(axes), label="Density", extend="max")
    return save_figure(fig, path)


def plot_mean_cos(results, labels=None, path="condensation_mean_cos.png"):
    """mean_cos per layer for several probe results (dotted: its part mean_cos_shared, when present),
    and a second panel with mean_cos_centered (the direction shared by all sequences removed)."""
    labels = _labels(labels, results)
    centred = all("mean_cos_centered" in l for res in results for l in res["layers"])
    fig, axes = new_figure(2 if centred else 1, 4.8, 3.6)
    for res, label in zip(results, labels):
        frac = [l["layer_fraction"] for l in res["layers"]]
        line, = axes[0].plot(frac, [l["mean_cos"] for l in res["layers"]], marker="o", ms=3,
                             label=f"{label} (ρ = {_fmt(res.get('spearman'))})")
        if all("mean_cos_shared" in l for l in res["layers"]):
            axes[0].plot(frac, [l["mean_cos_shared"] for l in res["layers"]], ls=":", color=line.get_color())
        if centred:
            axes[1].plot(frac, [l["mean_cos_centered"] for l in res["layers"]], marker="o", ms=3,
                         color=line.get_color(), label=label)
    axes[0].set_title("Mean token cosine similarity\n(dotted: part shared by all sequences)", fontsize=10)
    axes[0].set_ylabel("mean cos")
    if centred:
        axes[1].set_title("After removing the direction shared\nby all sequences (mean_cos_centered)", fontsize=10)
        axes[1].set_ylabel("mean cos, centred")
        axes[1].axhline(0.0, color="grey", lw=0.5)
    for ax in axes:
        ax.set_xlabel("Layer fraction")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- training curves

def _series(rows, key):
    """(iters, values) of the rows that have a number under key."""
    pts = [(r["iter"], r[key]) for r in rows if "iter" in r and _is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _last_layer_key(rows):
    """'probe/layer{n}/mean_cos' for the deepest layer the run logged, or None."""
    pattern = re.compile(r"^probe/layer(\d+)/mean_cos$")
    layers = [int(m.group(1)) for r in rows for k in r for m in [pattern.match(k)] if m]
    return f"probe/layer{max(layers)}/mean_cos" if layers else None


def plot_training(metrics_paths, labels=None, path="training_curves.png"):
    """Train CE (train.py's `ce`: the cross-entropy without the auxiliary term) and val CE, the last
    layer's mean_cos and the Spearman rho of mean_cos over depth, against iteration, one colour per run. Panels whose keys no run logged are left out.
    Returns the titles of the panels drawn (nothing is written when there are none)."""
    labels = labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in metrics_paths]
    labels = _labels(labels, metrics_paths)
    runs = [read_metrics(p) for p in metrics_paths]
    has = lambda key: any(_series(rows, key)[0] for rows in runs)  # noqa: E731
    panels = []
    if has("ce") or has("loss") or has("val_loss"):
        panels.append("loss")
    if any(_last_layer_key(rows) for rows in runs):
        panels.append("last-layer mean cos")
    if has("probe/spearman"):
        panels.append("Spearman ρ (mean cos vs depth)")
    if not panels:
        return panels

    from matplotlib import colormaps
    colours = colormaps["tab10"]
    fig, axes = new_figure(len(panels), 4.6, 3.6)
    ax_of = dict(zip(panels, axes))
    for i, (rows, label) in enumerate(zip(runs, labels)):
        colour = colours(i % 10)
        if "loss" in ax_of:
            # train.py's `loss` is CE + the auxiliary term; `ce` is the cross-entropy alone, comparable
            # across arms and with val_loss (CE). A log from before `ce` was logged shows `loss`, named so.
            key = "ce" if _series(rows, "ce")[0] else "loss"
            x, y = _series(rows, key)
            ax_of["loss"].plot(x, y, color=colour, lw=0.8, alpha=0.6,
                               label=f"{label} train CE" if key == "ce" else f"{label} train loss (CE + aux)")
            x, y = _series(rows, "val_loss")
            ax_of["loss"].plot(x, y, color=colour, lw=1.5, ls="--", marker="o", ms=3, label=f"{label} val")
        if "last-layer mean cos" in ax_of:
            key = _last_layer_key(rows)
            if key:
                x, y = _series(rows, key)
                ax_of["last-layer mean cos"].plot(x, y, color=colour, marker="o", ms=3,
                                                  label=f"{label} ({key.split('/')[1]})")
        if "Spearman ρ (mean cos vs depth)" in ax_of:
            x, y = _series(rows, "probe/spearman")
            ax_of["Spearman ρ (mean cos vs depth)"].plot(x, y, color=colour, marker="o", ms=3, label=label)
    for title, ax in ax_of.items():
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if "loss" in ax_of:
        ce_only = all(_series(rows, "ce")[0] or not _series(rows, "loss")[0] for rows in runs)
        ax_of["loss"].set_title("cross-entropy" if ce_only else "loss", fontsize=10)
        ax_of["loss"].set_ylabel("cross-entropy (nats/token): train CE, val CE" if ce_only
                                 else "train: CE, or CE + aux where no ce is logged; val: CE")
    if "Spearman ρ (mean cos vs depth)" in ax_of:
        ax_of["Spearman ρ (mean cos vs depth)"].set_ylim(-1.05, 1.05)
    save_figure(fig, path)
    return panels


# ---------------------------------------------------------------------- the experiment report's figures

def average_probe(results):
    """Seed-averaged condensation result (mean of mean_cos, histograms and rho over seeds) for the figures."""
    first = results[0]
    layers = []
    for i, layer in enumerate(first["layers"]):
        avg = {"layer": layer["layer"], "layer_fraction": layer["layer_fraction"]}
        for key in ("mean_cos", "mean_cos_shared", "mean_cos_centered"):
            avg[key] = float(np.mean([r["layers"][i][key] for r in results]))
        avg["hist"] = np.mean([r["layers"][i]["hist"] for r in results], axis=0).tolist()
        layers.append(avg)
    return {"layers": layers, "hist_edges": first["hist_edges"],
            "spearman": mean_std([r["spearman"] for r in results])[0],
            "kendall": mean_std([r["kendall"] for r in results])[0]}


def draw_figures(exp_dir, meta, runs, summary, doses):
    """The report's PNGs; returns {name: file}. Without matplotlib, none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}
    arms = [a for a in meta["config"]["arms"] if runs.get(a)]
    figures = {}
    probes = [average_probe([runs[a][s]["final"]["probe"] for s in sorted(runs[a])]) for a in arms]
    labels = [f"{a} ({len(runs[a])} seed{'s' if len(runs[a]) > 1 else ''})" for a in arms]
    figures["heatmaps"] = plot_heatmaps(probes, labels, os.path.join(exp_dir, "heatmaps.png"))
    figures["mean_cos"] = plot_mean_cos(probes, labels, os.path.join(exp_dir, "mean_cos.png"))
    first_seed = [runs[a][sorted(runs[a])[0]]["metrics_path"] for a in arms]
    if plot_training(first_seed, [f"{a} seed {sorted(runs[a])[0]}" for a in arms], os.path.join(exp_dir, "training.png")):
        figures["training"] = os.path.join(exp_dir, "training.png")

    others = [a for a in arms if a in summary["deltas"] and "acc" in summary["deltas"][a]]
    if others:  # forest plot: paired accuracy differences with their 95% CIs
        rows = [u for u in summary["units"]] + ["average"]
        fig, (ax,) = new_figure(1, 6.0, 0.35 * len(rows) * max(1, len(others)) ** 0.5 + 1.5)
        for j, arm in enumerate(others):
            d = summary["deltas"][arm]
            records = [d["acc"][u]["new_items"] if u in d["acc"] else None for u in rows[:-1]] + [d["avg_acc"]["new_items"]]
            ests = [(r["estimate"], r["lo"], r["hi"]) if r else None for r in records]
            y = [i + (j - (len(others) - 1) / 2) * 0.8 / max(1, len(others)) for i in range(len(rows))]
            pts = [(yy, e) for yy, e in zip(y, ests) if e is not None]
            bar = lambda x: x if math.isfinite(x) else 0.0  # noqa: E731  (one seed: no interval, a point alone)
            ax.errorbar([100 * e[0] for _, e in pts], [yy for yy, _ in pts],
                        xerr=[[bar(100 * (e[0] - e[1])) for _, e in pts], [bar(100 * (e[2] - e[0])) for _, e in pts]],
                        fmt="o", ms=4, capsize=2, label=f"{arm} (seeds {', '.join(map(str, d['seeds']))})")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(rows)), rows)
        ax.invert_yaxis()
        ax.set_xlabel(f"accuracy − {meta['config']['baseline']} (pp), 95% interval over seeds and items (new items)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        figures["deltas"] = save_figure(fig, os.path.join(exp_dir, "deltas.png"))

    if doses:
        figures["dose_response"] = plot_dose_response(doses, os.path.join(exp_dir, "dose_response.png"))
    return {k: os.path.basename(v) for k, v in figures.items()}


def plot_dose_response(doses, path):
    """Condensation, benchmark average and val loss against lambda, one line per variant."""
    panels = [("mean_cos_last", "last-layer mean cos"), ("spearman", "Spearman ρ over depth"),
              ("avg_acc", "benchmark average (%)"), ("val_loss", "val loss")]
    fig, axes = new_figure(len(panels), 3.6, 3.2)
    for group in doses:
        pts = [p for p in group["points"] if p["seeds"]]
        for ax, (key, title) in zip(axes, panels):
            scale = 100.0 if key == "avg_acc" else 1.0
            ax.errorbar([p["lambda"] for p in pts], [scale * p[key][0] for p in pts],
                        yerr=[scale * (p[key][1] if math.isfinite(p[key][1]) else 0.0) for p in pts],
                        marker="o", ms=4, capsize=2, label=group["variant"])
            ax.set_title(title, fontsize=10)
    positive = [p["lambda"] for g in doses for p in g["points"] if p["lambda"] > 0]
    for ax in axes:
        ax.set_xscale("symlog", linthresh=min(positive))  # linear near 0, so the baseline at lambda = 0 shows
        ax.set_xlabel("λ (dispersion_weight)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------------- command line

def _load_result(path):
    """A condensation.json, checked for what the figures read."""
    try:
        with open(path) as f:
            result = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}); give a condensation.json "
                         "written by python -m eval.condensation") from None
    layers = result.get("layers") if isinstance(result, dict) else None
    if not (isinstance(layers, list) and layers and "hist_edges" in result
            and all(isinstance(l, dict) and {"layer_fraction", "hist", "mean_cos"} <= l.keys() for l in layers)):
        raise InputError(f"{path} is not a condensation probe result (it needs 'layers' with layer_fraction, hist "
                         "and mean_cos, and 'hist_edges'); give a condensation.json written by python -m eval.condensation")
    return result


def arguments():
    """The command line (configurator.ArgumentParser: the options' spellings and --help as in every tool)."""
    parser = ArgumentParser(prog="python -m eval.plots", description=__doc__)
    parser.add_argument("kind", choices=("heatmap", "mean_cos", "training"),
                        help="heatmap / mean_cos: condensation.json files; training: metrics.jsonl files")
    parser.add_argument("files", nargs="+", help="the files to draw, one curve or panel each")
    parser.add_argument("--labels", nargs="+", default=None, help="one per file; default: from the files")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser


def main(argv=None):
    parser = arguments()
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.files):
        parser.error(f"{len(args.labels)} labels for {len(args.files)} files")
    for path in args.files:
        if not os.path.isfile(path):
            raise MissingFileError(f"{path}: no such file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("the figures need matplotlib: pip install matplotlib") from None

    if args.kind == "training":
        panels = plot_training(args.files, args.labels, args.out)
        if not panels:
            parser.error("none of the files has loss, val_loss or probe/ keys: nothing to plot")
    else:
        results = [_load_result(p) for p in args.files]
        labels = args.labels or [r.get("meta", {}).get("label") or os.path.basename(os.path.dirname(os.path.abspath(p)))
                                 for r, p in zip(results, args.files)]
        (plot_heatmaps if args.kind == "heatmap" else plot_mean_cos)(results, labels, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
