"""Reading the results of a recipe's output folder and aggregating them over seeds."""

import warnings
from pathlib import Path

import numpy as np

from keras_rpat import _io
from keras_rpat.evaluation import mean_nrr
from keras_rpat.recipes.schema import RESULTS_FORMAT

__all__ = ["aggregate", "collect_results", "paper_value"]


def collect_results(recipe, out_dir, fingerprint=None):
    """Reads the complete `results.json` files of a recipe's output folder.

    Args:
        recipe: a `Recipe`.
        out_dir: the output folder.
        fingerprint: keep results of this configuration only (default: the
            folder's `config.json`).

    Returns:
        A dict `{(method_id, dataset, arch, norm): [summary per seed]}`
        (each summary has a `seed` key), for every recipe method the run
        serves.
    """
    out_dir = Path(out_dir)
    if fingerprint is None:
        fingerprint = _io.read_json(out_dir / "config.json")
    found = {}
    for path in sorted(out_dir.glob("*/*/seed*/results.json")):
        r = _io.read_json(path)
        if r is None:
            warnings.warn(
                f"Leaving out {path}: it is corrupt or truncated (not valid JSON). To fix: run the recipe command "
                "on this folder again (the run evaluates its checkpoints again and rewrites it).",
                stacklevel=2,
            )
            continue
        if not isinstance(r, dict) or r.get("format") != RESULTS_FORMAT or not r.get("complete"):
            continue
        run = r.get("run", {})
        if run.get("recipe") != recipe.name:
            continue
        if fingerprint is not None and run.get("fingerprint") != _io.jsonable(fingerprint):
            continue
        summary = dict(r.get("summary", {}), seed=run.get("seed"), run_dir=run.get("run_dir"))
        for mid in run.get("methods", [run.get("method")]):
            key = (mid, run.get("dataset"), run.get("arch"), run.get("norm"))
            found.setdefault(key, []).append(summary)
    for values in found.values():
        values.sort(key=lambda s: s["seed"])
    return found


def aggregate(values, metric):
    """(mean, std, n) of a metric over seeds; Mean/NRR from averaged inputs."""
    if metric in ("mean", "nrr", "mean_final", "nrr_final"):
        ckpt = "final" if metric.endswith("_final") else "best"
        clean = [v.get(f"clean_{ckpt}") for v in values]
        robust = [v.get(f"aa_{ckpt}") if v.get(f"aa_{ckpt}") is not None else v.get(f"pgd20_{ckpt}") for v in values]
        pairs = [(c, r) for c, r in zip(clean, robust) if c is not None and r is not None]
        if not pairs:
            return None, None, 0
        c = float(np.mean([p[0] for p in pairs]))
        r = float(np.mean([p[1] for p in pairs]))
        index = 0 if metric.startswith("mean") else 1
        value = mean_nrr(c, r)[index]
        per_seed = [mean_nrr(*p)[index] for p in pairs]
        std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
        return value, std, len(pairs)
    xs = [v.get(metric) for v in values if v.get(metric) is not None]
    if not xs:
        return None, None, 0
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return float(np.mean(xs)), std, len(xs)


def paper_value(recipe, entry, metric, field="paper_results"):
    for r in getattr(recipe, field):
        if r.get("method") != entry["method"]:
            continue
        if any(k in r and r[k] != entry[k] for k in ("dataset", "arch", "norm")):
            continue
        return r.get(metric)
    return None
