"""The report of a recipe: Markdown tables of measured numbers beside the paper's, JSON, figures."""

import warnings
from pathlib import Path

from keras_rpat import _io
from keras_rpat.recipes import plots
from keras_rpat.recipes.results import aggregate
from keras_rpat.recipes.results import collect_results
from keras_rpat.recipes.results import paper_value
from keras_rpat.recipes.schema import DATASET_LABELS
from keras_rpat.recipes.schema import metric_label
from keras_rpat.recipes.schema import variant_metric
from keras_rpat.recipes.schema import METRICS
from keras_rpat.recipes.schema import MSE_METRICS
from keras_rpat.recipes.schema import NORM_LABELS
from keras_rpat.recipes.plan import load_recipe
from keras_rpat.recipes.plan import smoke_description

__all__ = ["report_tables", "write_report"]


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _dim_label(dim, value):
    if dim == "dataset":
        return DATASET_LABELS.get(value, value)
    if dim == "norm":
        return NORM_LABELS.get(value, value)
    return str(value)


def _digits(metric):
    """Number format: 4 significant digits for logit MSEs, 3 decimals for Mean / NRR (as the paper), else 2."""
    if metric in MSE_METRICS:
        return ".4g"
    return ".3f" if metric in ("mean", "nrr", "mean_final", "nrr_final") else ".2f"


def _cell(measured, paper, tolerance, spec):
    value, std, n = measured
    text = "—" if value is None else format(value, spec)
    if value is not None and std is not None:
        text += f" ± {format(std, spec)}"
    if paper is None:
        return text
    if value is None:
        return f"— ({format(paper, spec)})"
    delta = value - paper
    flag = " ⚠" if abs(delta) > tolerance else ""
    return f"{text} ({format(paper, spec)}, {format(delta, '+' + spec)}){flag}"


def report_tables(recipe, found, compare=True):
    """The comparison tables of a recipe as Markdown lines (`compare=False`: measured numbers only)."""
    entries = recipe.entries()
    rows_dims = recipe.layout["rows"]
    group_dim = recipe.layout["groups"]
    order = {
        "dataset": recipe.datasets,
        "arch": recipe.archs,
        "norm": recipe.norms,
        "row": list(dict.fromkeys(m.row for m in recipe.methods)),
        "group": list(dict.fromkeys(m.group for m in recipe.methods)),
    }
    row_keys = sorted(
        {recipe.row_key(e) for e in entries}, key=lambda k: tuple(order[d].index(v) for d, v in zip(rows_dims, k))
    )
    groups = [None] if group_dim is None else [g for g in order[group_dim] if any(e[group_dim] == g for e in entries)]
    columns = recipe.layout["columns"]

    def group_columns(g):
        return columns[g] if isinstance(columns, dict) else columns

    header = [d.capitalize() if d not in ("row", "group") else ("Method" if d == "row" else "Group") for d in rows_dims]
    for g in groups:
        prefix = "" if g is None else f"{_dim_label(group_dim, g)} "
        header += [prefix + metric_label(c) for c in group_columns(g)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_cell = {(recipe.row_key(e), recipe.group_key(e)): e for e in entries}
    for rk in row_keys:
        cells = [_dim_label(d, v) for d, v in zip(rows_dims, rk)]
        for g in groups:
            e = by_cell.get((rk, g))
            for c in group_columns(g):
                if e is None:
                    cells.append("")
                    continue
                values = found.get((e["method"], e["dataset"], e["arch"], e["norm"]), [])
                paper = paper_value(recipe, e, c) if compare else None
                cells.append(_cell(aggregate(values, c), paper, recipe.tolerance, _digits(c)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _detail_lines(recipe, found):
    metrics = ["clean_best", "pgd20_best", "aa_best", "clean_final", "pgd20_final", "aa_final", "mean", "nrr"]
    if recipe.config["perception"] is not None:
        metrics = ["clean_final", "pgd20_final", "mse_success", "mse_failure", "clean_acc", "perturbed_acc"]
    if recipe.config["perception"] is None:  # the PGD variants of `eval_attacks` (cw20_best...), after PGD-20
        variants = [a for a in recipe.config["eval_attacks"] if variant_metric(f"{a}_best")]
        metrics[2:2] = [f"{a}_best" for a in variants]
        at = metrics.index("aa_final")
        metrics[at:at] = [f"{a}_final" for a in variants]
    metrics = [m for m in metrics if any(aggregate(v, m)[0] is not None for v in found.values())] or metrics[:1]
    header = ["Method", "Dataset", "Arch", "Norm", "Seeds"] + [metric_label(m) for m in metrics]
    if recipe.config["perception"] is not None:
        header.append("Pattern")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in recipe.entries():
        values = found.get((e["method"], e["dataset"], e["arch"], e["norm"]), [])
        m = recipe.method(e["method"])
        seeds = ", ".join(str(v["seed"]) for v in values) or "—"
        cells = [f"{m.label} (`{m.id}`)", DATASET_LABELS[e["dataset"]], e["arch"], NORM_LABELS[e["norm"]], seeds]
        for metric in metrics:
            cells.append(_cell(aggregate(values, metric), None, recipe.tolerance, _digits(metric)))
        if recipe.config["perception"] is not None:
            cells.append(_pattern(m, values))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pattern(method, values):
    s, _, _ = aggregate(values, "mse_success")
    f, _, _ = aggregate(values, "mse_failure")
    if s is None or f is None:
        return "—"
    observed = "failure > success" if f > s else "failure < success"
    if method.expect is None:
        return observed
    return f"{observed} ({'as expected' if observed == method.expect else 'expected ' + method.expect})"


def _missing_lines(recipe, found):
    """The recipe's (method, dataset, arch, norm) cells without a complete run, as a list."""
    missing = [e for e in recipe.entries() if not found.get((e["method"], e["dataset"], e["arch"], e["norm"]))]
    if not missing:
        return []
    lines = ["", f"## Missing runs ({len(missing)} of {len(recipe.entries())})", ""]
    for e in missing:
        lines.append(f"- `{e['method']}` {DATASET_LABELS[e['dataset']]} {e['arch']} {NORM_LABELS[e['norm']]}")
    return lines


def _literature_lines(recipe):
    """The rows the paper copies from the literature (not re-run), as a Markdown table."""
    if not recipe.literature:
        return []
    lines = ["", "## Literature rows (published numbers, not re-run)", ""]
    variants = [k for r in recipe.literature for k in r if variant_metric(k) is not None]
    cols = [c for c in METRICS + tuple(dict.fromkeys(variants)) if any(c in r for r in recipe.literature)]
    dims = [d for d in ("norm", "dataset", "arch") if any(d in r for r in recipe.literature)]
    texts = [t for t in ("setting", "source") if any(t in r for r in recipe.literature)]
    header = ["Method", "Venue"] + [d.capitalize() for d in dims + texts] + [metric_label(c) for c in cols]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in recipe.literature:
        cells = [r["label"], r.get("venue", "")] + [_dim_label(d, r.get(d, "")) for d in dims]
        cells += [r.get(t, "") for t in texts]
        cells += [_fmt(r.get(c), 3 if c in ("mean", "nrr") else 2) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _failed_runs(out_dir):
    """`(run folder, message)` of the runs whose `results.json` says they failed (diverged)."""
    out = []
    for path in sorted(Path(out_dir).glob("*/*/seed*/results.json")):
        r = _io.read_json(path)
        if isinstance(r, dict) and r.get("status") == "failed":
            out.append((str(path.parent.relative_to(out_dir)), r.get("failed", "failed")))
    return out


def write_report(recipe, out_dir, fingerprint=None):
    """Writes `<out>/<recipe>.md` and `<out>/<recipe>.json` (and PNGs for figures).

    The Markdown puts the measured numbers (mean ± std over seeds) beside the
    paper's, with the difference, in the layout of the paper's table; cells
    whose difference exceeds the recipe's tolerance are marked ⚠; runs not
    (yet) done show "—".

    Args:
        recipe: a `Recipe` (or a name).
        out_dir: the output folder.
        fingerprint: report results of this configuration only (default:
            the folder's `config.json`).

    Returns:
        A dict of the paths written (`markdown`, `json`, `figures`).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    out_dir = Path(out_dir)
    if fingerprint is None:
        fingerprint = _io.read_json(out_dir / "config.json")
    found = collect_results(recipe, out_dir, fingerprint)
    smoke = bool(fingerprint and fingerprint.get("smoke"))
    title = f"{recipe.name} smoke run: small_cnn on synthetic data (checks the pipeline of: {recipe.title})"
    lines = [f"# {title if smoke else recipe.title}", ""]
    lines.append(f"*{recipe.paper}.* {recipe.caption}")
    lines.append("")
    if fingerprint:
        lines.append(
            f"Configuration: {fingerprint['epochs']} epoch{'s' if fingerprint['epochs'] != 1 else ''}, "
            f"batch size {fingerprint['batch_size']}" + f" (recipe hash `{fingerprint['config_sha256'][:12]}`)."
        )
        lines.append("")
    n_runs = len({v.get("run_dir") for vs in found.values() for v in vs})
    if smoke:
        lines.append(
            f"**SMOKE RUN: {smoke_description()}.** It checks the pipeline, not the method: the rows keep the "
            "recipe's labels (datasets, architectures, AA columns) but every number comes from the setup above, "
            "so none is compared with the paper's. "
            f"Cells: measured mean ± std over seeds; — = not run yet. {n_runs} result(s) found."
        )
    else:
        lines.append(
            "Cells: measured mean ± std over seeds (paper, measured − paper); "
            f"⚠ marks a difference above the tolerance of {recipe.tolerance:g} pp; — = not run yet. "
            f"{n_runs} result(s) found."
        )
    lines.append("")
    lines.extend(report_tables(recipe, found, compare=not smoke))
    lines.extend(_missing_lines(recipe, found))
    lines.extend(_literature_lines(recipe))
    lines += ["", "## All measured metrics", ""]
    lines.extend(_detail_lines(recipe, found))
    failed = _failed_runs(out_dir)
    if failed:
        lines += ["", "## Failed runs", ""]
        lines.extend(f"- `{run_dir}`: {message}" for run_dir, message in failed)
    if recipe.notes:
        lines += ["", "## Notes", ""]
        lines.extend(f"- {n}" for n in recipe.notes)
    figures = []
    if recipe.kind == "figure":
        try:
            figures = plots.plot_recipe(recipe, found, out_dir, smoke=smoke)
        except ImportError as e:  # no matplotlib: keep the results, say what is missing
            warnings.warn(f"The figure of {recipe.name} was not drawn: {e}", stacklevel=2)
            lines += ["", "## Figures", "", f"Not drawn: {e}"]
        if figures:
            lines += ["", "## Figures", ""]
            lines.extend(f"![{Path(p).stem}]({Path(p).name})" for p in figures)
    markdown_path = out_dir / f"{recipe.name}.md"
    _io.atomic_write_text(markdown_path, "\n".join(lines) + "\n")
    json_path = out_dir / f"{recipe.name}.json"
    payload = {
        "recipe": recipe.name,
        "fingerprint": fingerprint,
        "results": [
            {"method": k[0], "dataset": k[1], "arch": k[2], "norm": k[3], "seeds": v} for k, v in sorted(found.items())
        ],
    }
    _io.atomic_write_json(json_path, _io.jsonable(payload))
    return {"markdown": str(markdown_path), "json": str(json_path), "figures": [str(p) for p in figures]}
