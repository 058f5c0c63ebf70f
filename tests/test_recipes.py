"""Tests of `keras_rpat.recipes` (recipe files, run plans, runs, resume, report) and `keras_rpat.recipes.plots`.

The paper's numbers in the recipe files are checked against an independent
relation (Mean = (Clean + AA) / 2 and NRR = 2 Clean AA / (Clean + AA), which
docs/algorithms.md#mean-nrr checks against every row of Tables 1-6), the run plans against the
configurations of docs/algorithms.md#experiments, and runs in smoke mode (tiny synthetic data).
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import dataclasses
import itertools
import json
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_rpat import evaluation
from keras_rpat import losses
from keras_rpat import recipes

from testing import BACKEND  # noqa: E402

EXPECTED = ["figure2", "figure4", "figure5", "table1", "table2", "table3", "table4", "table5", "table6"]
# Default plans (methods x setups x norms x 3 seeds; docs/algorithms.md#experiments). Figure 4's
# MSE and 0.5 points are one run.
PLAN_SIZES = {
    "table1": 8 * 3 * 1 * 3,
    "table2": 8 * 3 * 1 * 3,
    "table3": 2 * 2 * 2 * 3,
    "table4": 4 * 1 * 1 * 3,
    "table5": 4 * 1 * 1 * 3,
    "table6": 4 * 1 * 1 * 3,
    "figure2": 3 * 1 * 1 * 3,
    "figure4": 8 * 1 * 1 * 3,
    "figure5": 3 * 2 * 1 * 3,
}
RECIPES_DIR = Path(keras_rpat.__file__).resolve().parent.parent / "recipes"


# ---------------------------------------------------------------------------
# Recipe files
# ---------------------------------------------------------------------------


def test_list_recipes():
    assert recipes.list_recipes() == ["beyond"] + EXPECTED  # the paper's, and one beyond it


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_parses_and_validates(name):
    recipe = recipes.load_recipe(name)
    assert recipe.name == name and recipe.path.name == f"{name}.toml"
    assert recipe.kind == ("figure" if name.startswith("figure") else "table")
    assert recipe.config["seeds"] == [0, 1, 2]
    assert len(recipe.runs()) == PLAN_SIZES[name]
    # Every paper number lands in a cell of the Markdown layout.
    cells = {(e["method"], e["dataset"], e["arch"], e["norm"]) for e in recipe.entries()}
    for row in recipe.paper_results:
        assert any(
            c[0] == row["method"] and all(row.get(k, v) == v for k, v in zip(("dataset", "arch", "norm"), c[1:]))
            for c in cells
        ), row
    text = recipe.describe()
    assert recipe.title in text and "Configuration:" in text


def test_every_table_and_figure_has_its_numbers():
    counts = {n: len(recipes.load_recipe(n).paper_results) for n in EXPECTED}
    assert counts == {
        "table1": 24,
        "table2": 24,
        "table3": 8,
        "table4": 4,
        "table5": 4,
        "table6": 4,
        "figure2": 0,
        "figure4": 2,
        "figure5": 0,
    }
    lit = {n: len(recipes.load_recipe(n).literature) for n in EXPECTED}
    assert lit["table3"] == 18 and lit["table4"] == 11
    assert sum(lit.values()) == 29


@pytest.mark.parametrize("name", EXPECTED)
def test_paper_mean_and_nrr_match_clean_and_aa(name):
    recipe = recipes.load_recipe(name)
    checked = 0
    for row in recipe.paper_results + recipe.literature:
        if {"clean_best", "aa_best", "mean", "nrr"} <= set(row):
            mean, nrr = evaluation.mean_nrr(row["clean_best"], row["aa_best"])
            # The paper prints 2 or 3 decimals.
            assert abs(mean - row["mean"]) < 0.006, row  # the paper rounds to 2 decimals
            assert abs(nrr - row["nrr"]) < 0.006, row  # the paper rounds to 2 decimals
            checked += 1
    assert checked == sum(1 for r in recipe.paper_results + recipe.literature if "mean" in r)


def test_table1_and_2_spot_values():
    t1 = {(r["method"], r["dataset"]): r for r in recipes.load_recipe("table1").paper_results}
    assert t1[("pgd_at+rpat", "cifar10")]["aa_final"] == 47.60
    assert t1[("consistency_at", "tiny_imagenet")]["pgd20_best"] == 21.89
    t2 = {(r["method"], r["dataset"]): r for r in recipes.load_recipe("table2").paper_results}
    assert t2[("trades+rpat", "cifar10")]["clean_final"] == 84.80
    assert t2[("mart", "tiny_imagenet")]["nrr"] == 48.316
    assert recipes.load_recipe("table2").norms == ["l2"]


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(recipes.RecipeError, match="Available recipes: beyond, figure2, figure4.*table6"):
        recipes.load_recipe("table9")


def _write_variant(tmp_path, monkeypatch, name, edit):
    text = (RECIPES_DIR / f"{name}.toml").read_text()
    new = edit(text)
    assert new != text
    (tmp_path / f"{name}.toml").write_text(new)
    monkeypatch.setenv(recipes.RECIPES_ENV, str(tmp_path))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.replace('kind = "table"', 'kind = "table"\ncolour = 1'), r"unknown field\(s\) \['colour'\]"),
        (
            lambda t: t.replace('preset = "rebat"\nlabel = "ReBAT"\n', 'preset = "boat"\nlabel = "ReBAT"\n', 1),
            "Unknown preset: 'boat'",
        ),
        (lambda t: t.replace('pipeline = "sotas"', 'pipeline = "bench"'), "uses pipeline='sotas'"),
        (lambda t: t.replace("epochs = 200", "epochs = 0"), "`epochs` must be an integer >= 1"),
        (lambda t: t.replace('archs = ["wide_resnet34_10"]', 'archs = ["resnet50"]'), "Unknown model name: 'resnet50'"),
        (
            lambda t: t.replace("cutmix = true, lr_factor = 4.0", "cutmix = 1, lr_factor = 4.0", 1),
            "option `cutmix` must be true or false",
        ),
        (
            lambda t: t.replace("cutmix = true, lr_factor = 4.0", "mixup = true, lr_factor = 4.0", 1),
            r"unknown option\(s\) \['mixup'\]",
        ),
        (lambda t: t.replace('method = "rebat"\nclean_best', 'method = "awp"\nclean_best'), "`method` must be one of"),
        (lambda t: t.replace("clean_best = 85.25", "clean = 85.25"), r"unknown field\(s\) \['clean'\]"),
        (lambda t: t.replace('name = "table4"', 'name = "table44"'), "must equal the file name"),
        (lambda t: t.replace("[config]", "[config"), "not valid TOML"),
        (lambda t: t.replace('id = "rpat_plus_plus"\n', 'id = "rebat"\n'), "duplicate method id 'rebat'"),
    ],
)
def test_invalid_recipes_give_clear_errors(tmp_path, monkeypatch, edit, match):
    _write_variant(tmp_path, monkeypatch, "table4", edit)
    assert recipes.recipes_dir() == tmp_path.resolve()
    with pytest.raises(recipes.RecipeError, match=match):
        recipes.load_recipe("table4")


def test_option_needs_the_right_preset(tmp_path, monkeypatch):
    _write_variant(
        tmp_path,
        monkeypatch,
        "table5",
        lambda t: t.replace('preset = "pgd_at"\n', 'preset = "pgd_at"\noptions = { proxy = "penultimate" }\n', 1),
    )
    with pytest.raises(recipes.RecipeError, match="RobustPerception term, but preset 'pgd_at' has none"):
        recipes.load_recipe("table5")


# ---------------------------------------------------------------------------
# Run plans
# ---------------------------------------------------------------------------


def test_table3_plan_with_preactresnet18_alias():
    runs = recipes.load_recipe("table3").runs(arch="preactresnet18")
    got = sorted((r.preset, r.dataset, r.arch, r.norm, r.seed, r.epochs) for r in runs)
    want = sorted(
        itertools.product(
            ["rebat", "rpat_plus_plus"], ["cifar10", "cifar100"], ["preact_resnet18"], ["linf", "l2"], [0, 1, 2], [200]
        )
    )
    assert got == want
    assert len({r.run_dir for r in runs}) == 24
    for r in runs:
        assert r.batch_size == 128 and r.stem_stride == 1 and not r.smoke
        assert r.eval_attacks == ("clean", "pgd20", "autoattack") and r.checkpoints == ("best", "final")
        assert r.autoattack_version == "standard" and r.l2_step_size == pytest.approx(32 / 255)
    # Seed-major: a full table with seed 0 comes first.
    assert [r.seed for r in runs[:8]] == [0] * 8


def test_narrowing_options():
    t3 = recipes.load_recipe("table3")
    runs = t3.runs(dataset="CIFAR-10", norm="L2", method="RPAT++", seeds="0,2")
    assert [(r.method, r.dataset, r.norm, r.seed) for r in runs] == [
        ("rpat_plus_plus", "cifar10", "l2", 0),
        ("rpat_plus_plus", "cifar10", "l2", 2),
    ]
    t4 = recipes.load_recipe("table4")
    # A method id wins; a preset name that is not an id selects every method built on it.
    assert [r.method for r in t4.runs(method="rebat", seeds=[0])] == ["rebat"]
    t5 = recipes.load_recipe("table5")
    assert [r.method for r in t5.runs(method="pgd_at+rpat", seeds=[0])] == [
        "rpat_logits",
        "rpat_penultimate",
        "rpat_third_to_last",
    ]
    assert [r.method for r in t4.runs(method="RPAT++*", seeds=[0])] == ["rpat_plus_plus_cutmix"]
    assert t4.runs(method="rebat_cutmix", seeds=[0])[0].options == {"beta": 2.0, "cutmix": True, "lr_factor": 4.0}
    f5 = recipes.load_recipe("figure5")
    tiny = f5.runs(dataset="tiny_imagenet", seeds=[1])
    assert {(r.arch, r.stem_stride) for r in tiny} == {("wide_resnet34_10", 2)}
    assert {(r.arch, r.stem_stride) for r in f5.runs(dataset="cifar100")} == {("preact_resnet18", 1)}
    smoke = t3.runs(smoke=True)
    assert len(smoke) == 8 and {r.seed for r in smoke} == {0} and {r.epochs for r in smoke} == {1}
    assert {r.batch_size for r in smoke} == {32}
    assert {r.epochs for r in t3.runs(epochs=10, batch_size=64)} == {10}


def test_smoke_run_folders_name_what_ran_and_the_cell_they_stand_in_for():
    table1 = recipes.load_recipe("table1")
    real = table1.runs(method="pgd_at", seeds=[0])
    assert [r.run_dir for r in real] == [f"pgd_at/{d}-resnet18_bottleneck-linf/seed0" for d in table1.datasets]
    smoke = table1.runs(method="pgd_at", seeds=[0], smoke=True)
    # CIFAR-10 and CIFAR-100 are the same smoke computation (Tiny-ImageNet's stem stride is 2); each cell keeps its
    # own folder, which the report reads by cell, and says what ran first.
    assert [r.run_dir for r in smoke] == [
        f"pgd_at/smoke-small_cnn-synthetic-linf-for-{d}-resnet18_bottleneck/seed0" for d in table1.datasets
    ]
    assert recipes.run_cell("x.npz", "preact_resnet18", "l2", smoke=False) == "x.npz-preact_resnet18-l2"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "tiny_imagenet"}, "has no dataset 'tiny_imagenet'. Valid: cifar10, cifar100"),
        ({"arch": "wrn34_10"}, r"has no arch 'wrn34_10' \(wide_resnet34_10\). Valid: preact_resnet18"),
        ({"arch": "resnet50"}, "Unknown model name: 'resnet50'"),
        ({"norm": "l1"}, "Unknown `norm`"),
        ({"method": "pgd_at"}, r"no method 'pgd_at'. Valid methods: rebat \(ReBAT\), rpat_plus_plus"),
        ({"seeds": "0,x"}, "comma-separated integers"),
        ({"seeds": [0, 0]}, "without duplicates"),
        ({"seeds": [-1]}, "non-negative"),
        ({"epochs": 0}, "`epochs` must be a positive integer"),
    ],
)
def test_narrowing_errors(kwargs, match):
    with pytest.raises(recipes.RecipeError, match=match):
        recipes.load_recipe("table3").runs(**kwargs)


def test_figure4_shares_the_default_run_and_labels_are_benign_weights():
    recipe = recipes.load_recipe("figure4")
    runs = recipe.runs(seeds=[0])
    assert len(runs) == 8
    default = [r for r in runs if r.method == "mse"]
    assert default[0].methods == ("mse", "r0.5") and default[0].options == {}
    by_method = {r.method: r for r in runs}
    # The figure's label 0.2 is the benign weight r: alpha (on the perturbation) = 0.8.
    rp = [l for l in recipes.build_preset(by_method["r0.2"]).losses if isinstance(l, losses.RobustPerception)][0]
    assert rp.alpha == pytest.approx(0.8)
    rp = [l for l in recipes.build_preset(by_method["beta-"]).losses if isinstance(l, losses.RobustPerception)][0]
    assert rp.alpha_sampling == "beta-"
    rp = [l for l in recipes.build_preset(by_method["cosine"]).losses if isinstance(l, losses.RobustPerception)][0]
    assert rp.distance == "cosine" and rp.alpha == 0.5


def test_build_preset_applies_recipe_options():
    t4 = {r.method: r for r in recipes.load_recipe("table4").runs(seeds=[0])}
    star = recipes.build_preset(t4["rpat_plus_plus_cutmix"])
    assert star.lr_factor == 4.0 and star.pipeline == "sotas" and star.epochs == 200
    assert [l.beta for l in star.losses if isinstance(l, losses.RPATPlusPlus)] == [2.0]
    plain = recipes.build_preset(t4["rebat"])
    assert plain.lr_factor == 1.5 and [l.beta for l in plain.losses if isinstance(l, losses.BoAT)] == [1.0]
    t6 = {r.method: r for r in recipes.load_recipe("table6").runs(seeds=[0])}
    strong = recipes.build_preset(t6["rebat_stronger"])
    assert strong.attack.schedule == {100: {"epsilon": pytest.approx(10 / 255), "num_steps": 12}}
    assert recipes.build_preset(t6["rebat"]).attack.schedule is None
    t5 = {r.method: r for r in recipes.load_recipe("table5").runs(seeds=[0])}
    rp = [l for l in recipes.build_preset(t5["rpat_third_to_last"]).losses if isinstance(l, losses.RobustPerception)]
    assert rp[0].proxy == "third_to_last"
    l2 = recipes.load_recipe("table2").runs(method="pgd_at", dataset="cifar10", seeds=[0])[0]
    attack = recipes.build_preset(l2).attack
    assert (
        attack.norm == "l2"
        and attack.epsilon == pytest.approx(128 / 255)
        and attack.step_size == pytest.approx(32 / 255)
    )


def test_teacher_training_option_reaches_the_weight_averaging():
    spec = recipes.single_run("rpat_plus_plus", "cifar10", teacher_training="first_epoch")
    assert spec.options == {"teacher_training": "first_epoch"}
    assert recipes.build_preset(spec).weight_averaging.teacher_training == "first_epoch"
    spec = recipes.single_run("rebat", "cifar10", teacher_training="always")
    assert recipes.build_preset(spec).weight_averaging.teacher_training is True
    spec = recipes.single_run("wa", "cifar10", teacher_training="inference")
    assert spec.options == {} and recipes.build_preset(spec).weight_averaging.teacher_training is False
    with pytest.raises(recipes.RecipeError, match="applies to the presets"):
        recipes.single_run("pgd_at", "cifar10", teacher_training="first_epoch")
    with pytest.raises(recipes.RecipeError, match="teacher_training"):
        recipes.single_run("rebat", "cifar10", teacher_training="sometimes")


def test_l2_step_size_reaches_the_training_attack():
    from keras_rpat import presets

    assert presets.get("pgd_at", norm="l2", l2_step_size="15/255").attack.step_size == pytest.approx(15 / 255)
    spec = recipes.single_run("trades", "cifar10", norm="l2", l2_step_size=15 / 255)
    assert recipes.build_preset(spec).attack.step_size == pytest.approx(15 / 255)
    assert recipes.build_preset(recipes.single_run("trades", "cifar10", norm="l2")).attack.step_size == pytest.approx(
        32 / 255
    )


def test_preset_fields_reach_the_optimizer_and_the_run():
    from keras_rpat import optimizers, presets
    from keras_rpat.recipes import experiment

    preset = presets.get("rebat").with_options(learning_rate=0.2, momentum=0.5, weight_decay=1e-3, lr_factor=2.0)
    sgd = preset.optimizer(steps_per_epoch=10)
    assert (sgd.momentum, sgd.weight_decay, float(sgd.learning_rate)) == (0.5, 1e-3, pytest.approx(0.2))
    lr = preset.learning_rate_schedule(10)  # 0.2, / 2 from iteration 100 * 10 - 1 on, / 4 from 150 * 10 - 1 on
    assert isinstance(lr, optimizers.PiecewiseDecay)
    assert [float(lr(s)) for s in (0, 998, 999, 1499)] == pytest.approx([0.2, 0.2, 0.1, 0.05])
    lr = presets.get("pgd_at").with_options(milestones=(1, 2)).learning_rate_schedule(10)
    assert [float(lr(s)) for s in (9, 10, 20)] == pytest.approx([0.1, 0.01, 0.001])

    [sotas] = recipes.load_recipe("table4").runs(method="RPAT++*", smoke=True)
    run = experiment.build_run(sotas)
    assert run.train_seq.cutmix and run.train_seq.pad_mode == "reflect"
    assert run.train_seq[0][1].ndim == 2  # soft CutMix targets
    assert run.trainer.post_step_clean_forward and run.trainer.teacher is not None
    assert any(type(layer).__name__ == "InputNormalization" for layer in run.model.layers)
    [bench] = recipes.load_recipe("table1").runs(method="pgd_at", dataset="cifar10", seeds=[0], smoke=True)
    run = experiment.build_run(bench)
    assert not run.train_seq.cutmix and run.train_seq.pad_mode == "zero" and run.train_seq[0][1].ndim == 1
    assert not run.trainer.post_step_clean_forward and run.trainer.teacher is None
    assert not any(type(layer).__name__ == "InputNormalization" for layer in run.model.layers)


def test_shorter_epochs_scale_the_schedule():
    [spec] = recipes.load_recipe("table3").runs(method="rebat", dataset="cifar10", norm="linf", seeds=[0], epochs=20)
    preset = recipes.build_preset(spec)
    assert preset.epochs == 20 and preset.milestones == (10, 15)
    assert preset.weight_averaging.start_epoch == round(105 * 20 / 200)
    [smoke] = recipes.load_recipe("table6").runs(method="rebat_stronger", smoke=True)
    preset = recipes.build_preset(smoke)
    assert preset.attack.num_steps == 2 and preset.attack.schedule == {
        0: {"epsilon": pytest.approx(10 / 255), "num_steps": 2}
    }


# ---------------------------------------------------------------------------
# Runs: resume, skip, refuse
# ---------------------------------------------------------------------------


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _two_epoch_spec(recipe="figure2", method="clean"):
    [spec] = recipes.load_recipe(recipe).runs(method=method, dataset="cifar10", smoke=True, epochs=2)
    # AutoAttack is not needed here (it runs in a subprocess under tensorflow).
    return dataclasses.replace(spec, eval_attacks=("clean", "pgd20"))


def test_interrupted_run_resumes_and_finished_run_is_skipped(tmp_path):
    spec = _two_epoch_spec()
    run_dir = tmp_path / spec.run_dir
    with pytest.raises(KeyboardInterrupt):
        recipes.run_experiment(spec, tmp_path, verbose=0, callbacks=[_Interrupt()])
    assert (run_dir / "backup" / "training_metadata.json").exists()
    assert not (run_dir / "results.json").exists()
    assert [r["epoch"] for r in json.loads((run_dir / "history.json").read_text())] == [1]

    seen = _Epochs()
    result = recipes.run_experiment(spec, tmp_path, verbose=0, callbacks=[seen])
    assert seen.seen == [1]  # only the missing epoch was trained
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert "loss" in result["history"][1] and "robust" in result["history"][1]
    assert result["complete"] and not (run_dir / "backup").exists()
    for name in ("best.keras", "final.keras", "eval_final.json", "perception_final.json", "results.json"):
        assert (run_dir / name).exists(), name
    assert result["summary"]["clean_final"] is not None and result["perception"]["final"]["n"] == 16

    # The resumed run repeats the uninterrupted one exactly (same batches, same state).
    other = tmp_path / "uninterrupted"
    recipes.run_experiment(spec, other, verbose=0)
    w1 = keras.saving.load_model(run_dir / "final.keras").get_weights()
    w2 = keras.saving.load_model(other / spec.run_dir / "final.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))

    again = _Epochs()
    skipped = recipes.run_experiment(spec, tmp_path, verbose=0, callbacks=[again])
    assert skipped["skipped"] is True and again.seen == []


def test_results_json_contents(tmp_path):
    spec = _two_epoch_spec("table5", "rpat_third_to_last")
    spec = dataclasses.replace(spec, epochs=1)
    result = recipes.run_experiment(spec, tmp_path, verbose=0)
    on_disk = json.loads((tmp_path / spec.run_dir / "results.json").read_text())
    assert on_disk["complete"] and on_disk["format"] == recipes.RESULTS_FORMAT
    assert on_disk["summary"] == result["summary"]
    prov = on_disk["provenance"]
    assert prov["backend"] == BACKEND and prov["keras"] == keras.__version__
    assert {"git_sha", "device", "torch", "numpy", "elapsed_s"} <= set(prov)
    assert (prov["engine"], prov["world_size"], prov["per_replica_batch"]) == ("single-process", 1, spec.batch_size)
    cfg = on_disk["config"]
    assert cfg["preset"]["name"] == "pgd_at+rpat"
    rp = [l for l in cfg["preset"]["losses"] if l["class"] == "RobustPerception"][0]
    assert rp["proxy"] == "third_to_last"
    assert cfg["model"]["paper_arch"] == "resnet18_bottleneck" and cfg["model"]["arch"] == "small_cnn"
    assert cfg["data"]["paper_dataset"] == "cifar10" and cfg["data"]["steps_per_epoch"] == 2
    assert set(on_disk["metrics"]) == {"best", "final"}
    s = on_disk["summary"]
    assert s["mean"] == pytest.approx(evaluation.mean_nrr(s["clean_best"], s["pgd20_best"])[0])
    assert on_disk["wall_time_s"] > 0 and len(on_disk["history"]) == 1
    # No temporary files are left behind.
    assert not [p for p in (tmp_path / spec.run_dir).iterdir() if p.name.endswith(".tmp")]


def test_run_folder_of_another_configuration_is_refused(tmp_path):
    spec = _two_epoch_spec()
    spec1 = dataclasses.replace(spec, epochs=1)
    recipes.run_experiment(spec1, tmp_path, verbose=0)
    with pytest.raises(recipes.RecipeError, match=r"different configuration \(epochs: 1 -> 2"):
        recipes.run_experiment(spec, tmp_path, verbose=0)
    fp1 = dict(spec.fingerprint, epochs=1)
    recipes.check_out_dir(tmp_path, fp1)
    with pytest.raises(recipes.RecipeError, match="--overwrite"):
        recipes.check_out_dir(tmp_path, dict(fp1, epochs=2))
    with pytest.warns(UserWarning, match="replacing the configuration"):
        recipes.check_out_dir(tmp_path, dict(fp1, epochs=2), overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------------------
# Report and plots
# ---------------------------------------------------------------------------


def _fake_found(recipe, metrics):
    found = {}
    for i, e in enumerate(recipe.entries()):
        found[(e["method"], e["dataset"], e["arch"], e["norm"])] = [
            dict({k: v + seed for k, v in metrics.items()}, seed=seed) for seed in (0, 1, 2)
        ]
    return found


def test_report_cells_show_measured_paper_and_difference():
    recipe = recipes.load_recipe("table5")
    found = _fake_found(recipe, {"clean_best": 82.0, "aa_best": 47.0, "pgd20_best": 50.0})
    del found[("rpat_penultimate", "cifar10", "resnet18_bottleneck", "linf")]
    lines = recipes.report_tables(recipe, found)
    assert lines[0] == "| Method | Clean best | AA best | Mean | NRR |"
    baseline = lines[2]
    # mean over seeds 82, 83, 84 = 83.00, sample std 1.00; paper 82.92 -> +0.08 (within 1 pp).
    assert "83.00 ± 1.00 (82.92, +0.08)" in baseline and "⚠" not in baseline.split("|")[2]
    # AA 48.00 vs 46.74 -> +1.26 > tolerance.
    assert "48.00 ± 1.00 (46.74, +1.26) ⚠" in baseline
    mean, nrr = evaluation.mean_nrr(83.0, 48.0)
    assert f"{mean:.2f}" in baseline and f"{nrr:.2f}" in baseline
    missing = [l for l in lines if l.startswith("| +RPAT, second-to-last")][0]
    assert "— (83.19)" in missing


def test_report_layout_of_table1_and_table3():
    t1 = recipes.load_recipe("table1")
    header = recipes.report_tables(t1, {})[0]
    assert header.startswith("| Dataset | Method | Baseline Clean best | Baseline PGD-20 best")
    assert "+RPAT Clean final" in header and header.count("|") == 2 + 5 + 8 + 1
    rows = recipes.report_tables(t1, {})[2:]
    assert len(rows) == 12 and rows[0].startswith("| CIFAR-10 | PGD-AT | — (82.92)")
    t3 = recipes.report_tables(recipes.load_recipe("table3"), {})
    assert t3[0].startswith("| Norm | Method | CIFAR-10 Clean best | CIFAR-10 AA best")
    assert [r.split("|")[1:3] for r in t3[2:]] == [
        [" Linf ", " ReBAT "],
        [" Linf ", " RPAT++ "],
        [" L2 ", " ReBAT "],
        [" L2 ", " RPAT++ "],
    ]


@pytest.mark.parametrize("name", ["figure2", "figure4", "figure5"])
def test_plots_are_written(tmp_path, name):
    from keras_rpat.recipes import plots

    recipe = recipes.load_recipe(name)
    if name == "figure4":
        found = _fake_found(recipe, {"clean_best": 83.0, "aa_best": 48.0})
    else:
        found = _fake_found(recipe, {"mse_success": 0.5, "mse_failure": 1.5, "clean_acc": 80.0, "perturbed_acc": 40.0})
    paths = plots.plot_recipe(recipe, found, tmp_path, smoke=True)
    assert [Path(p).name for p in paths] == [f"{name}.png"]
    data = Path(paths[0]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(os.listdir(tmp_path)) == [f"{name}.png"]  # written atomically, nothing left over


def test_plots_without_matplotlib_say_what_to_install(monkeypatch, tmp_path):
    from keras_rpat.recipes import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.perception_figure([("x", [])], tmp_path / "x.png")


def test_report_without_matplotlib_keeps_the_results(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    recipe = recipes.load_recipe("figure2")
    with pytest.warns(UserWarning, match="pip install matplotlib"):
        paths = recipes.write_report(recipe, tmp_path, fingerprint=recipe.fingerprint(smoke=True))
    assert paths["figures"] == []
    text = Path(paths["markdown"]).read_text()
    assert "Not drawn:" in text and "| Clean / Random |" in text
