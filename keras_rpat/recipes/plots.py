"""Figures of the paper drawn from recipe results (matplotlib, Agg backend).

* `perception_figure`: Figures 2 and 5. Grouped bars of the success-case and
  failure-case logit MSE per model (clean / random-noise / PGD-AT training,
  each with its test perturbation), and the clean and perturbed accuracy as
  lines on a secondary axis; one panel per setting.
* `ablation_figure`: Figure 4. Clean / AA / Mean / NRR bars per regulariser
  (a) and per interpolation weight (b), with the paper's numbers (where the
  paper gives them) as markers.
* `plot_recipe`: the PNGs of a figure recipe from `collect_results` output.

matplotlib is imported lazily: `pip install matplotlib` if it is missing.
"""

import math
import textwrap
from pathlib import Path

from keras_rpat import _io
from keras_rpat.recipes.results import aggregate
from keras_rpat.recipes.results import paper_value
from keras_rpat.recipes.schema import ARCH_LABELS
from keras_rpat.recipes.schema import DATASET_LABELS
from keras_rpat.recipes.plan import smoke_description

__all__ = ["ablation_figure", "perception_figure", "plot_recipe", "training_curves"]

_COLORS = {
    "success": "#4C72B0",
    "failure": "#DD8452",
    "clean_acc": "#2CA02C",
    "perturbed_acc": "#C44E52",
    "clean_best": "#4C72B0",
    "aa_best": "#DD8452",
    "mean": "#55A868",
    "nrr": "#8172B2",
}
_SMOKE_NOTE = "SMOKE RUN (tiny synthetic data): numbers are meaningless"


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "Drawing the figures needs matplotlib, the plots extra: `pip install 'keras-rpat[plots]'` "
            "(or `pip install matplotlib`)."
        ) from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _value(row, key):
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _save(fig, path):
    """`fig.savefig` atomically (temporary file + `os.replace`)."""
    with _io.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    return str(path)


def perception_figure(panels, path, title=None, note=None):
    """Draws Figure 2 / Figure 5: logit MSE of success and failure cases.

    Args:
        panels: list of `(panel_title, rows)`; each row is a dict with
            `label` (e.g. `"PGD-AT / PGD-20"`), `mse_success`, `mse_failure`
            (optional `*_std`), `clean_acc` and `perturbed_acc` (percent).
            Missing values are left out (and marked "n/a").
        path: the PNG file to write.
        title: figure title.
        note: an optional line under the title (e.g. a smoke-run warning).

    Returns:
        The path written.
    """
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 4.6), squeeze=False)
    handles = None
    for ax, (panel_title, rows) in zip(axes[0], panels):
        labels = [r["label"] for r in rows]
        xs = list(range(len(rows)))
        width = 0.36
        for offset, key, name in (
            (-width / 2, "mse_success", "Success cases"),
            (width / 2, "mse_failure", "Failure cases"),
        ):
            heights, errs, positions = [], [], []
            for x, r in zip(xs, rows):
                v = _value(r, key)
                if v is None:
                    ax.text(x + offset, 0, "n/a", ha="center", va="bottom", fontsize=8, color="gray")
                    continue
                heights.append(v)
                errs.append(_value(r, key + "_std") or 0.0)
                positions.append(x + offset)
            ax.bar(
                positions,
                heights,
                width,
                yerr=errs if any(errs) else None,
                capsize=3,
                color=_COLORS["success" if key == "mse_success" else "failure"],
                label=f"MSE, {name.lower()}",
                edgecolor="black",
                linewidth=0.5,
            )
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=9)
        ax.set_xlabel("Training algorithm / perturbation method")
        ax.set_ylabel("MSE of logits (benign vs. perturbed)")
        ax.set_title(panel_title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax2 = ax.twinx()
        for key, name, marker in (("clean_acc", "Clean accuracy", "o"), ("perturbed_acc", "Perturbed accuracy", "s")):
            pts = [(x, _value(r, key)) for x, r in zip(xs, rows) if _value(r, key) is not None]
            if pts:
                ax2.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker=marker,
                    color=_COLORS[key],
                    label=name,
                    linewidth=1.8,
                )
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("Accuracy (%)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        handles = (h1 + h2, l1 + l2)
        ax.set_xlim(-0.6, len(rows) - 0.4)
    if handles:
        fig.legend(handles[0], handles[1], loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.02))
    _titles(fig, title, note)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    out = _save(fig, path)
    plt.close(fig)
    return out


def _titles(fig, title, note):
    """Title on top; the note (e.g. a smoke-run warning) under the legend."""
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=12)
    if note:
        fig.text(0.5, -0.06, note, ha="center", va="top", fontsize=10, color="#B22222", fontweight="bold")


def ablation_figure(panels, path, title=None, note=None, metrics=("clean_best", "aa_best", "mean", "nrr")):
    """Draws Figure 4: Clean / AA / Mean / NRR per regulariser and per weight.

    Args:
        panels: list of `(panel_title, rows)`; each row is a dict with
            `label`, the metrics (optional `<metric>_std`) and optional
            `paper` (a dict of the paper's numbers, drawn as black markers).
        path: the PNG file to write.
        title: figure title.
        note: an optional line under the title.
        metrics: the metrics drawn as bars.

    Returns:
        The path written.
    """
    plt = _pyplot()
    names = {"clean_best": "Clean", "aa_best": "AA", "mean": "Mean", "nrr": "NRR", "pgd20_best": "PGD-20"}
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.6), squeeze=False)
    paper_drawn = False
    for ax, (panel_title, rows) in zip(axes[0], panels):
        xs = list(range(len(rows)))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            offset = (i - (len(metrics) - 1) / 2) * width
            pos, heights, errs = [], [], []
            for x, r in zip(xs, rows):
                v = _value(r, metric)
                if v is not None:
                    pos.append(x + offset)
                    heights.append(v)
                    errs.append(_value(r, metric + "_std") or 0.0)
                paper = (r.get("paper") or {}).get(metric)
                if paper is not None:
                    ax.plot(
                        [x + offset],
                        [paper],
                        marker="D",
                        color="black",
                        markersize=5,
                        linestyle="none",
                        label="Paper's number" if not paper_drawn else None,
                    )
                    paper_drawn = True
            ax.bar(
                pos,
                heights,
                width,
                yerr=errs if any(errs) else None,
                capsize=2,
                color=_COLORS.get(metric, None),
                label=names.get(metric, metric),
                edgecolor="black",
                linewidth=0.5,
            )
        for x, r in zip(xs, rows):
            if all(_value(r, m) is None for m in metrics):
                ax.text(x, 2, "not run", ha="center", va="bottom", fontsize=9, color="gray")
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["label"] for r in rows])
        ax.set_ylim(0, 100)
        ax.set_ylabel("Accuracy / score (%)")
        ax.set_title(panel_title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, -0.02))
    _titles(fig, title, note)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    out = _save(fig, path)
    plt.close(fig)
    return out


def _rows(recipe, found, entries, metrics, label_of, with_paper=True):
    rows = []
    for e in entries:
        values = found.get((e["method"], e["dataset"], e["arch"], e["norm"]), [])
        row = {"label": label_of(e)}
        for metric in metrics:
            value, std, _ = aggregate(values, metric)
            row[metric] = value
            row[metric + "_std"] = std
        paper = {m: paper_value(recipe, e, m) for m in metrics}
        row["paper"] = {k: v for k, v in paper.items() if v is not None and with_paper}
        rows.append(row)
    return rows


def plot_recipe(recipe, found, out_dir, smoke=False):
    """Draws the PNG(s) of a figure recipe; returns the paths written.

    Args:
        recipe: a `keras_rpat.recipes.Recipe` of kind `"figure"`.
        found: `keras_rpat.recipes.collect_results(recipe, out_dir)`.
        out_dir: output folder.
        smoke: title the figure with what a smoke run runs, without the paper's numbers.
    """
    out_dir = Path(out_dir)
    note = f"{_SMOKE_NOTE}: {smoke_description()}" if smoke else None
    title = f"{recipe.name}, smoke run: small_cnn, synthetic data (not the paper's setup)" if smoke else recipe.title
    entries = recipe.entries()
    paths = []
    if recipe.config["perception"] is not None:
        metrics = ("mse_success", "mse_failure", "clean_acc", "perturbed_acc")
        panels = []
        for setup in recipe.config["setups"]:
            for norm in recipe.norms:
                sel = [
                    e
                    for e in entries
                    if e["dataset"] == setup["dataset"] and e["arch"] == setup["arch"] and e["norm"] == norm
                ]
                label = f"{DATASET_LABELS[setup['dataset']]}, {ARCH_LABELS.get(setup['arch'], setup['arch'])}"
                if smoke:
                    label = f"synthetic, small_cnn (for {label})"
                if len(recipe.norms) > 1:
                    label += f", {norm}"
                rows = _rows(
                    recipe,
                    found,
                    sel,
                    metrics,
                    lambda e: recipe.method(e["method"]).label.replace(" / ", "\n/ "),
                    with_paper=not smoke,
                )
                panels.append((label, rows))
        paths.append(perception_figure(panels, out_dir / f"{recipe.name}.png", title=title, note=note))
    else:
        metrics = ("clean_best", "aa_best", "mean", "nrr")
        groups = list(dict.fromkeys(m.group for m in recipe.methods))
        panels = []
        for g in groups:
            sel = [e for e in entries if e["group"] == g]
            panels.append(
                (
                    g or recipe.paper,
                    _rows(recipe, found, sel, metrics, lambda e: recipe.method(e["method"]).label, not smoke),
                )
            )
        paths.append(ablation_figure(panels, out_dir / f"{recipe.name}.png", title=title, note=note))
    return paths


# Per-epoch keys that are not loss terms (accuracies, learning rate, timings).
_NOT_LOSSES = {"epoch", "clean", "robust", "lr", "learning_rate", "time", "eval_time"}


def training_curves(history, path, title, robust_label="PGD", best_epoch=None):
    """Draws one run's training curves: loss terms (left), clean and robust accuracy (right).

    Args:
        history: per-epoch records (`results.json`'s `history`: `epoch`,
            `clean`, `robust` in percent, and Keras' logged loss terms and
            training accuracies `*_acc`, as fractions).
        path: the PNG to write.
        title: the figure title (what ran: method, model, data).
        robust_label: the attack behind `robust` (e.g. `"PGD-10"`).
        best_epoch: marked with a vertical line (the best checkpoint).

    Returns:
        The path written.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in history]
    numeric = sorted({k for r in history for k, v in r.items() if isinstance(v, (int, float)) and k not in _NOT_LOSSES})
    losses = [k for k in numeric if not k.endswith("_acc")]
    train_accs = [k for k in numeric if k.endswith("_acc") and not k.startswith("val_")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in losses:
        left.plot(epochs, [_value(r, key) for r in history], marker="o", markersize=3, label=key)
    left.set_ylabel("training loss (epoch mean)")
    left.set_title("loss terms")
    for key, label in (("clean", "test clean"), ("robust", f"test {robust_label}")):
        right.plot(epochs, [_value(r, key) for r in history], marker="o", markersize=3, label=label)
    for key in train_accs:  # fractions in Keras' logs
        values = [None if _value(r, key) is None else 100 * _value(r, key) for r in history]
        right.plot(epochs, values, linestyle=":", marker=".", label=f"train {key[: -len('_acc')]}")
    right.set_ylabel("accuracy (%)")
    right.set_title("accuracy per epoch")
    if best_epoch is not None:
        for axis in (left, right):
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        right.plot([], [], color="grey", linestyle="--", label=f"best checkpoint (epoch {best_epoch})")
    for axis in (left, right):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
