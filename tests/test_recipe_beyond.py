"""The recipe beyond the paper (`keras-rpat recipe beyond`) and the GPU-hour estimate of every recipe's plan.

The pass counts of `keras_rpat.recipes.cost` are checked against a real train step that counts its own
forward and backward passes (torch, eager), and against the algorithms written out by hand here.
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import json
import math

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from keras_rpat import models
from keras_rpat import presets
from keras_rpat import recipes
from keras_rpat.awp import AWP
from keras_rpat.cli import main
from keras_rpat.recipes import cost

from testing import BACKEND  # noqa: E402


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


# ---------------------------------------------------------------------------
# The recipe file
# ---------------------------------------------------------------------------


def test_beyond_is_trades_on_the_leaderboard_recipe_with_and_without_rpat_and_awp():
    recipe = recipes.load_recipe("beyond")
    assert recipe.archs == ["dm_wide_resnet28_10"] and recipe.datasets == ["cifar10"] and recipe.norms == ["linf"]
    assert (recipe.epochs, recipe.config["batch_size"], recipe.config["generated_fraction"]) == (400, 512, 0.7)
    assert "generated_data" not in recipe.config  # the file comes from --generated-data
    assert recipe.config["eval_attacks"] == ["clean", "pgd20", "cw20", "autoattack"]
    wang = {  # DM-Improves-AT's train-wa.py, 1M command of its README
        "beta": 5.0,
        "learning_rate": 0.2,
        "label_smoothing": 0.1,
        "lr_schedule": "cosine",
        "nesterov": True,
        "weight_decay_exclude": "batchnorm",
        "ema": 0.995,
    }
    awp = {"awp_gamma": 0.005, "awp_warmup": 9}
    assert {m.id: (m.preset, m.options) for m in recipe.methods} == {
        "trades": ("trades", wang),
        "trades_rpat": ("trades+rpat", wang),
        "trades_awp": ("trades", wang | awp),
        "trades_awp_rpat": ("trades+rpat", wang | awp),
    }
    # Reference rows: Wang et al.'s published numbers (no RPAT), each with the generated data it assumes.
    rows = {(r["setting"].split(" EDM")[0], r.get("arch")): (r["clean_best"], r["aa_best"]) for r in recipe.literature}
    assert rows == {
        ("1M", "dm_wide_resnet28_10"): (91.12, 63.35),
        ("20M", "dm_wide_resnet28_10"): (92.44, 67.31),
        ("50M", None): (93.25, 70.69),
    }
    assert all(r["source"] for r in recipe.literature)


def test_the_recipe_options_reach_the_preset():
    [spec] = recipes.load_recipe("beyond").runs(method="trades_awp_rpat", seeds=[0])
    preset = recipes.build_preset(spec)
    assert preset.learning_rate == 0.2 and preset.schedule == "cosine" and preset.epochs == 400
    assert preset.losses[0].beta == 5.0 and preset.losses[0].label_smoothing == 0.1
    assert type(preset.losses[1]).__name__ == "RobustPerception"
    assert preset.nesterov and preset.weight_decay_exclude == "batchnorm"
    assert preset.weight_averaging.decay == 0.995 and preset.weight_averaging.dynamic_decay
    assert (preset.awp.gamma, preset.awp.warmup_epochs) == (0.005, 9)
    # A smoke run (1 epoch) runs AWP in its one epoch, so the smoke goes through it.
    [smoke] = recipes.load_recipe("beyond").runs(method="trades_awp_rpat", smoke=True)
    assert recipes.build_preset(smoke).awp.warmup_epochs == 0


def test_a_method_that_replaces_the_schedule_owns_the_epochs(tmp_path, monkeypatch):
    text = (recipes.recipes_dir() / "beyond.toml").read_text()
    (tmp_path / "beyond.toml").write_text(text.replace('lr_schedule = "cosine", ', "", 1))
    monkeypatch.setenv(recipes.RECIPES_ENV, str(tmp_path))
    with pytest.raises(recipes.RecipeError, match="uses epochs=110 but the recipe's `epochs` is 400"):
        recipes.load_recipe("beyond")


@pytest.mark.parametrize(
    "attacks, columns, match",
    [
        ('["clean", "pgd20", "CW-20", "pgd20x5", "aa"]', None, None),
        ('["clean", "pgd20", "fgsm"]', None, "Unknown evaluation 'fgsm'"),
        ('["clean", "pgd20", "autoattack"]', '"cw20_best"', "needs 'cw20' in"),
        ('["clean", "pgd20", "autoattack"]', '"cw20_worst"', "`columns` must name metrics"),
    ],
)
def test_recipe_evaluations_are_the_names_of_keras_rpat_eval(tmp_path, monkeypatch, attacks, columns, match):
    text = (recipes.recipes_dir() / "beyond.toml").read_text()
    text = text.replace('eval_attacks = ["clean", "pgd20", "cw20", "autoattack"]', f"eval_attacks = {attacks}")
    if columns is not None:
        text = text.replace('columns = ["clean_best", ', f"columns = [{columns}, ")
    (tmp_path / "beyond.toml").write_text(text)
    monkeypatch.setenv(recipes.RECIPES_ENV, str(tmp_path))
    if match is not None:
        with pytest.raises(recipes.RecipeError, match=match):
            recipes.load_recipe("beyond")
        return
    recipe = recipes.load_recipe("beyond")
    assert recipe.config["eval_attacks"] == ["clean", "pgd20", "cw20", "pgd20x5", "autoattack"]
    assert recipe.runs(seeds=[0])[0].eval_attacks == ("clean", "pgd20", "cw20", "pgd20x5", "autoattack")


def test_generated_data_of_the_command_line_reaches_every_run_and_its_fingerprint():
    recipe = recipes.load_recipe("beyond")
    assert recipe.runs(seeds=[0])[0].generated == {"path": None, "fraction": 0.7}
    runs = recipe.runs(seeds=[0, 1], generated_data="edm/1m.npz")
    assert {json.dumps(r.generated) for r in runs} == {json.dumps({"path": "edm/1m.npz", "fraction": 0.7})}
    assert all(r.run_fingerprint()["generated"] == r.generated for r in runs)
    assert runs[0].fingerprint["generated"] == runs[0].generated  # the output folder's configuration too
    other = recipe.runs(seeds=[0], generated_data="edm/20m.npz", generated_fraction=0.5)[0]
    assert other.generated == {"path": "edm/20m.npz", "fraction": 0.5}
    assert other.run_fingerprint() != runs[0].run_fingerprint()
    # Any recipe takes generated data from the command line; a fraction alone needs the file.
    table3 = recipes.load_recipe("table3")
    assert table3.runs(method="rebat", generated_data="g.npz")[0].generated == {"path": "g.npz", "fraction": 0.7}
    assert "generated" not in table3.runs(method="rebat")[0].to_dict()  # unchanged without
    with pytest.raises(recipes.RecipeError, match="needs generated data"):
        table3.runs(generated_fraction=0.5)
    with pytest.raises(recipes.RecipeError, match=r"must be a number in \(0, 1\)"):
        recipe.runs(generated_fraction=1.5)


# ---------------------------------------------------------------------------
# The estimate: passes per step, FLOPs, GPU-hours
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_recipe_beyond")
class PassCounter(keras.layers.Layer):
    """Identity that counts the forward passes through it, and the backward passes that reach it."""

    counts = {}

    def call(self, x):
        record = PassCounter.counts.setdefault(self.name, {"forward": 0, "backward": 0})
        record["forward"] += 1
        if getattr(x, "requires_grad", False):
            x.register_hook(lambda grad: record.__setitem__("backward", record["backward"] + 1))
        return x * 1.0


def _counting_model():
    inputs = keras.Input((8, 8, 3))
    x = PassCounter(name="at_input")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = PassCounter(name="after_a_weight")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _measured_passes(preset, epoch):
    """Forward-equivalents of one image in one real train step, counted by `PassCounter`s: a forward 1,
    a backward to the input only 1, a backward with weight gradients 2 (the unit of `cost`)."""
    trainer = preset.build_trainer(_counting_model(), steps_per_epoch=1, fast_path=False)
    trainer.compile(optimizer=preset.optimizer(1))
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype("float32")
    y = np.arange(4) % 10
    trainer.set_epoch(epoch)
    trainer.train_on_batch(x, y)  # builds the step
    PassCounter.counts.clear()
    trainer.train_on_batch(x, y)
    forwards = PassCounter.counts["at_input"]["forward"]
    input_backwards = PassCounter.counts["at_input"]["backward"]  # only an attack's gradient reaches the input
    weight_backwards = PassCounter.counts["after_a_weight"]["backward"] - input_backwards
    assert PassCounter.counts["after_a_weight"]["forward"] == forwards
    return forwards + input_backwards + 2 * weight_backwards


# The algorithms by hand: PGD-10 is 10 x (forward + input backward); a training view is a forward and a
# weight backward (3); `1 +` TRADES' KL attack's clean forward; ReBAT's attack ends with a forward, its
# step with a clean forward, and the clean accuracy needs a forward where no loss has the clean view.
BY_HAND = [
    ("trades", 0, False, 1 + 10 * 2 + 3 * 3),  # views clean, adv, clean_kl
    ("trades+rpat", 0, True, 1 + 10 * 2 + 3 * 4 + 3 * 4),  # + interp; AWP repeats the 4 views' pass
    ("pgd_at", 0, False, 10 * 2 + 3 + 1),
    ("rebat", 0, False, 10 * 2 + 1 + 3 + 1 + 1),  # BoAT starts at epoch 105
    ("rebat", 105, False, 10 * 2 + 1 + 3 + 1 + 1 + 1),  # + the teacher's forward of x'
    ("rpat_plus_plus", 105, False, 10 * 2 + 1 + 3 + 1 + 1 + 2),  # the teacher's forwards of x and x_alpha
]


@pytest.mark.parametrize("name, epoch, awp, expected", BY_HAND)
def test_step_passes_are_the_algorithms(name, epoch, awp, expected):
    assert cost.step_passes(name, epoch=epoch, awp=awp)["total"] == expected


@pytest.mark.skipif(BACKEND != "torch", reason="counts the passes with torch's eager autograd hooks")
@pytest.mark.parametrize("name, epoch, awp, expected", BY_HAND)
def test_step_passes_are_what_a_train_step_runs(name, epoch, awp, expected):
    preset = presets.get(name)
    if awp:
        preset = preset.with_options(awp=AWP(0.005))
    assert _measured_passes(preset, epoch) == expected


def test_the_loss_views_table_is_the_losses():
    from keras_rpat import losses

    for class_name, views in cost.LOSS_VIEWS.items():
        assert getattr(losses, class_name)().required_views == views, class_name


def test_estimate_of_a_beyond_run_by_hand():
    recipe = recipes.load_recipe("beyond")
    trades, awp = recipe.runs(method="trades,trades_awp", seeds=[0])
    flops = 10_486_657_536  # one WRN-28-10 forward of a 32x32 image
    images = 98 * 512  # ceil(50,000 / 512) full batches an epoch
    train = 400 * images * 30 * flops
    select = 400 * 10_000 * (1 + 2 * 10 + 1) * flops  # clean, PGD-10 and its forward after every epoch
    aa = 2 * 100 + 9 * 2 * 100 + 9 * 3 * 100 + 5_000
    evaluation = 2 * 10_000 * (1 + 41 + 41 + aa) * flops  # best and final: clean, PGD-20, CW-20, AutoAttack
    e = cost.estimate(trades, gpu_tflops=100)
    assert (e["train_flops"], e["select_flops"], e["eval_flops"]) == (train, select, evaluation)
    assert e["gpu_hours"] == pytest.approx((train + select + evaluation) / 100e12 / 3600, rel=1e-12)
    # AWP from epoch 9 on: 9 epochs of 30 F, 391 of 30 + 3 x 3.
    assert cost.estimate(awp)["train_flops"] == images * (9 * 30 + 391 * 39) * flops


def test_forward_flops_counts_the_multiply_adds():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    assert cost.forward_flops(model) == 2 * (8 * 8 * 9 * 3 * 4 + 4 * 4 * 9 * 4 * 6 + 6 * 10)


@pytest.mark.skipif(
    BACKEND != "torch",
    reason="the table is the same on every backend: checked once, on torch (building the networks takes 60 s under jax)",
)
@pytest.mark.parametrize("arch", sorted(cost.FORWARD_FLOPS))
def test_forward_flops_table_is_the_models(arch):
    if arch == "small_cnn":
        shape = (recipes.SMOKE["image_size"],) * 2 + (3,)
        model = models.get(arch, input_shape=shape, widths=recipes.SMOKE["widths"])
    else:
        model = models.get(arch)
    assert cost.forward_flops(model) == cost.FORWARD_FLOPS[arch]


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_its_gpu_hours():
    result = invoke(["recipe", "beyond", "--dry-run", "--seeds", "0", "--gpu-tflops", "100"])
    assert result.exit_code == 0, result.output
    runs = recipes.load_recipe("beyond").runs(seeds=[0])
    hours = [cost.estimate(r, 100)["gpu_hours"] for r in runs]
    for r, h in zip(runs, hours):
        line = next(line for line in result.output.splitlines() if r.run_dir in line)
        assert f"  {h:.3g}  " in line
    assert f"GPU-hour estimate: {sum(hours):.3g} in total" in result.output and "100 TFLOP/s" in result.output
    assert "generated data: 0.7 of each batch, from none given: pass --generated-data PATH" in result.output
    assert "GPU-h" in invoke(["recipe", "table3", "--dry-run", "--arch", "preactresnet18"]).output


def test_train_takes_the_learning_rate_and_the_trades_beta(monkeypatch):
    from keras_rpat.cli import train as train_cli

    ran = []
    monkeypatch.setattr(train_cli.recipes, "run_single", lambda spec, *a, **k: ran.append(spec) or {})
    args = ["train", "--method", "trades+rpat", "--dataset", "cifar10", "--learning-rate", "0.2", "--beta", "5"]
    assert invoke(args).exit_code == 0
    assert ran[0].options == {"beta": 5.0, "learning_rate": 0.2}
    preset = recipes.build_preset(ran[0])
    assert preset.learning_rate == 0.2 and preset.losses[0].beta == 5.0 and preset.losses[1].weight == 1.0
    refused = invoke(["train", "--method", "pgd_at", "--dataset", "cifar10", "--beta", "5"])
    assert refused.exit_code == 2 and "option `beta` applies to the TRADES / MART" in refused.output


def test_a_run_without_its_generated_data_is_a_usage_error():
    result = invoke(["recipe", "beyond", "--method", "trades"])
    assert result.exit_code == 2
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "--generated-data PATH" in error and "docs/guides/leaderboard.md" in error
    assert "Traceback" not in result.output


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="30 s of compiling under jax (the suites' time budget); its code paths run in the jax suite's table3 "
    "smoke, tests/test_awp.py and tests/test_generated_data.py",
)
def test_beyond_smoke_runs_end_to_end_and_reports_the_reference_rows(tmp_path):
    out = tmp_path / "beyond"
    args = ["recipe", "beyond", "--smoke", "--method", "trades_awp_rpat", "--out", str(out), "--verbose", "0"]
    result = invoke(args + ["--generated-data", "edm/1m.npz"])
    assert result.exit_code == 0, result.output
    assert "1 run(s) complete (0 already done)" in result.output
    [path] = out.glob("*/*/seed0/results.json")
    data = json.loads(path.read_text())
    assert data["complete"] and data["provenance"]["backend"] == BACKEND
    assert data["run"]["generated"] == {"path": "edm/1m.npz", "fraction": 0.7}
    generated = data["config"]["data"]["generated"]
    assert generated["path"] == "edm/1m.npz" and generated["per_batch"] == math.floor(32 * 0.7)
    summary = data["summary"]
    for metric in ("clean_best", "pgd20_best", "cw20_best", "aa_best", "cw20_final"):
        assert summary[metric] is not None, metric
    assert data["config"]["preset"]["losses"][1]["class"] == "RobustPerception"
    markdown = (out / "beyond.md").read_text()
    assert "| CW-20 best |" in markdown
    for row in ("1M generated", "20M generated", "50M generated", "91.12", "63.35", "92.44", "67.31", "70.69"):
        assert row in markdown, row
    # Other generated data is another configuration: refused, not mixed into these results.
    again = invoke(args + ["--generated-data", "edm/20m.npz"])
    assert again.exit_code == 1 and "different configuration" in again.output


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="builds two ResNet-18s: 20 s under jax; which normalisation a network gets does not depend on the backend",
)
def test_deepmind_networks_keep_their_input_normalisation_in_a_recipe_run():
    import dataclasses
    import types

    from keras_rpat.layers import CIFAR10_MEAN
    from keras_rpat.recipes import build
    from keras_rpat.recipes import experiment

    [spec] = recipes.load_recipe("beyond").runs(method="trades", seeds=[0])
    preset = recipes.build_preset(spec)
    assert preset.normalize is None  # the Bench pipeline normalises nothing itself
    data = types.SimpleNamespace(num_classes=10, image_shape=(32, 32, 3))
    deepmind = build._build_model(dataclasses.replace(spec, arch="dm_preact_resnet18"), preset, data)
    assert experiment._model_normalization(deepmind)["mean"] == pytest.approx(CIFAR10_MEAN)
    paper = build._build_model(dataclasses.replace(spec, arch="preact_resnet18"), preset, data)
    assert experiment._model_normalization(paper) is None
