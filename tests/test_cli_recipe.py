"""Tests of `keras-rpat recipe ...` and `keras-rpat train` through Click's `CliRunner`.

Every recipe runs end to end in smoke mode (tiny synthetic data, a tiny CNN,
one epoch, one- and two-step attacks, a two-iteration APGD-CE as AutoAttack),
narrowed to a few runs per recipe to keep the suite fast.
"""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import json
import re

import pytest
from click.testing import CliRunner

from keras_rpat import recipes
from keras_rpat.cli import main

from testing import BACKEND  # noqa: E402
from testing import imported  # noqa: E402

RECIPES = recipes.list_recipes()
# The paper's recipes; the one beyond it has its smoke test in tests/test_recipe_beyond.py.
PAPER_RECIPES = [name for name in RECIPES if name != "beyond"]

# On torch every recipe runs whole in smoke mode except Tables 1 and 2, one dataset
# each (53 runs). Under tensorflow every AutoAttack evaluation runs in a PyTorch
# subprocess (about 6 s each, two per run: best and final checkpoints), and under
# jax every run compiles its steps anew, so these suites run a representative
# narrowed subset instead: Figure 2
# whole (clean, random-noise and PGD-AT training, perception analysis, no
# AutoAttack), Figure 5 (the stride-2 Tiny-ImageNet path), the SOTAs pipeline
# with L2, weight averaging and AutoAttack (Table 3) and CutMix (Table 4).
WHOLE_RUNS = {
    "table1": 24,
    "table2": 24,
    "table3": 8,
    "table4": 4,
    "table5": 4,
    "table6": 4,
    "figure2": 3,
    "figure4": 8,
    "figure5": 6,
}
TF_SUBSET = {
    "figure2": ([], 3),
    "figure5": (["--method", "pgd_at"], 2),
    "table3": (["--arch", "preactresnet18", "--dataset", "cifar10", "--norm", "l2", "--method", "rpat_plus_plus"], 1),
    "table4": (["--method", "RPAT++*"], 1),
}
SUBSET_REASONS = {
    "tensorflow": "AutoAttack runs in a subprocess per evaluation under tensorflow",
    "jax": "every run compiles its steps under jax",
}
if BACKEND in SUBSET_REASONS:
    SMOKE_CASES = [
        pytest.param(
            name,
            *TF_SUBSET.get(name, ([], 0)),
            id=name,
            marks=()
            if name in TF_SUBSET
            else pytest.mark.skip(reason=f"{SUBSET_REASONS[BACKEND]}; the whole recipe is smoke-tested on torch"),
        )
        for name in PAPER_RECIPES
    ]
else:
    # Tables 1 and 2 repeat the same 8 runs for each dataset (all synthetic in smoke
    # mode): one dataset each, CIFAR-100 and Tiny-ImageNet (the stride-2 stem).
    TORCH_NARROWED = {"table1": (["--dataset", "cifar100"], 8), "table2": (["--dataset", "tiny_imagenet"], 8)}
    SMOKE_CASES = [
        pytest.param(name, *TORCH_NARROWED.get(name, ([], WHOLE_RUNS[name])), id=name) for name in PAPER_RECIPES
    ]


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_recipes_are_the_papers_tables_and_figures():
    paper = ["figure2", "figure4", "figure5", "table1", "table2", "table3", "table4", "table5", "table6"]
    assert RECIPES == ["beyond"] + paper  # and one recipe beyond the paper


@pytest.mark.parametrize(
    "args",
    [["--help"], ["recipe", "--help"], ["train", "--help"]] + [["recipe", name, "--help"] for name in RECIPES],
    ids=lambda a: " ".join(a[:-1]) or "main",
)
def test_help(args):
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if args[0] == "recipe" and len(args) == 3:
        for option in (
            "--dataset",
            "--arch",
            "--norm",
            "--method",
            "--seeds",
            "--epochs",
            "--data-dir",
            "--out",
            "--smoke",
            "--overwrite",
            "--batch-size",
            "--verbose",
            "--dry-run",
        ):
            assert option in result.output
        assert recipes.load_recipe(args[1]).title.split(":")[0] in result.output


def test_recipe_group_lists_every_recipe():
    result = invoke(["recipe", "--help"])
    for name in ["list", "show"] + RECIPES:
        assert f"  {name} " in result.output


def test_list_and_show():
    result = invoke(["recipe", "list"])
    assert result.exit_code == 0
    assert re.search(r"^table3 +Table 3 +24 runs x 200 epochs", result.output, re.M)
    assert re.search(r"^beyond +Beyond the paper +12 runs x 400 epochs", result.output, re.M)
    result = invoke(["recipe", "show", "table3"])
    assert result.exit_code == 0
    assert "rpat_plus_plus: RPAT++ = preset rpat_plus_plus" in result.output
    assert "rebat cifar10 linf: Clean best 82.09, AA best 50.72, Mean 66.405, NRR 62.7" in result.output
    assert "WA (UAI'18)" in result.output and "Default plan: 24 runs" in result.output


def test_dry_run_of_the_users_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["recipe", "table3", "--arch", "preactresnet18", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0].startswith("keras_rpat ") and f"backend: {BACKEND}" in out.splitlines()[0]
    assert "Plan for table3 (Table 3): 24 runs, 200 epochs each, batch size 128 -> runs/table3" in out
    assert "methods (2): rebat, rpat_plus_plus" in out and "datasets (2): cifar10, cifar100" in out
    assert "norms (2): linf, l2" in out and "seeds (3): 0, 1, 2" in out and "archs (1): preact_resnet18" in out
    rows = [l.split() for l in out.splitlines() if l.strip()[:1].isdigit()]
    assert len(rows) == 24
    assert {(r[1], r[2], r[3], r[4], r[5]) for r in rows} == {
        (m, d, "preact_resnet18", n, str(s))
        for m in ("rebat", "rpat_plus_plus")
        for d in ("cifar10", "cifar100")
        for n in ("linf", "l2")
        for s in (0, 1, 2)
    }
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["recipe", "table9"], 2, "Unknown recipe or command 'table9'. Valid: list, show, beyond, figure2"),
        (["recipe", "show", "table9"], 2, "Available recipes: beyond, figure2"),
        (["recipe", "table3", "--arch", "resnet50", "--dry-run"], 2, "Unknown model name: 'resnet50'. Valid names are"),
        (
            ["recipe", "table3", "--arch", "wrn34_10", "--dry-run"],
            2,
            "has no arch 'wrn34_10' (wide_resnet34_10). Valid: preact_resnet18",
        ),
        (
            ["recipe", "table3", "--dataset", "imagenet", "--dry-run"],
            2,
            "has no dataset 'imagenet'. Valid: cifar10, cifar100",
        ),
        (
            ["recipe", "table3", "--method", "trades", "--dry-run"],
            2,
            "Valid methods: rebat (ReBAT), rpat_plus_plus (RPAT++)",
        ),
        (["recipe", "table3", "--seeds", "0,a", "--dry-run"], 2, "comma-separated integers"),
        (["train", "--method", "awp", "--dataset", "cifar10"], 2, "Unknown preset: 'awp'. Valid presets: clean"),
        (
            ["train", "--method", "pgd_at", "--dataset", "mnist"],
            2,
            "Valid: cifar10, cifar100, synthetic, tiny_imagenet",
        ),
        (["train", "--method", "pgd_at", "--dataset", "cifar10", "--arch", "vgg"], 2, "Unknown model name: 'vgg'"),
        (
            ["train", "--method", "pgd_at", "--dataset", "cifar10", "--cutmix"],
            2,
            "applies to the ReBAT / RPAT++ presets only",
        ),
        (
            ["train", "--method", "pgd_at", "--dataset", "cifar10", "--teacher-training", "first_epoch"],
            2,
            "sets the weight-averaged teacher's mode: it applies to the presets",
        ),
    ],
)
def test_errors_are_clean_and_list_valid_values(args, code, message):
    result = invoke(args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_tiny_imagenet_is_a_clean_error(tmp_path):
    out = tmp_path / "out"
    result = invoke(
        [
            "recipe",
            "figure5",
            "--dataset",
            "tiny_imagenet",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(out),
            "--verbose",
            "0",
        ]
    )
    assert result.exit_code == 1, result.output
    assert "Tiny-ImageNet not found" in result.output and "tiny-imagenet-200.zip" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # checked before anything is written


@pytest.mark.slow
@pytest.mark.parametrize("name, args, n_runs", SMOKE_CASES)
def test_smoke_run_of_every_recipe(tmp_path, name, args, n_runs):
    out = tmp_path / name
    result = invoke(["recipe", name, "--smoke", "--out", str(out), "--verbose", "0"] + args)
    assert result.exit_code == 0, result.output
    assert f"{n_runs} run(s) complete (0 already done)" in result.output
    assert result.output.count("\ndone ") == n_runs
    results = sorted(out.glob("*/*/seed0/results.json"))
    assert len(results) == n_runs
    for path in results:
        data = json.loads(path.read_text())
        assert data["complete"] and data["run"]["smoke"] and data["provenance"]["backend"] == BACKEND
        assert (path.parent / "best.keras").exists() and (path.parent / "final.keras").exists()
        assert len(data["history"]) == 1
        if "autoattack" in data["run"]["eval_attacks"]:
            assert data["summary"]["aa_best"] is not None and data["summary"]["aa_final"] is not None
            assert data["config"]["evaluation"]["autoattack_version"] == "custom"
    assert json.loads((out / "config.json").read_text())["smoke"] is True
    markdown = (out / f"{name}.md").read_text()
    assert "SMOKE RUN" in markdown and f"{n_runs} result(s) found" in markdown
    summary = json.loads((out / f"{name}.json").read_text())
    assert summary["recipe"] == name
    if name.startswith("figure"):
        png = out / f"{name}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"![{name}]({name}.png)" in markdown

    # Re-running the same command skips the finished runs.
    again = invoke(["recipe", name, "--smoke", "--out", str(out), "--verbose", "0"] + args)
    assert again.exit_code == 0 and f"({n_runs} already done)" in again.output


# What differs between two backends' runs of one recipe: the backend, its device and versions; the random
# generators' states (torch's device generators, the others' SeedGenerator variables); the weights' hash.
BACKEND_DEPENDENT = ("provenance", "random_state", "model_sha256")


def _assert_same_document(ours, torch_doc, where):
    """The same JSON document but for `BACKEND_DEPENDENT` and numbers (the backends draw the initial weights
    and the random starts from their own generators, so losses and accuracies differ): same keys, same strings."""
    if isinstance(ours, dict):
        assert isinstance(torch_doc, dict) and ours.keys() == torch_doc.keys(), (where, ours.keys() ^ torch_doc.keys())
        for key in ours:
            if key not in BACKEND_DEPENDENT:
                _assert_same_document(ours[key], torch_doc[key], f"{where}/{key}")
    elif isinstance(ours, list) and all(isinstance(v, (bool, int, float)) for v in ours + torch_doc):
        pass  # per-image outcomes, robust-image orders
    elif isinstance(ours, list):
        assert isinstance(torch_doc, list) and len(ours) == len(torch_doc), where
        for i, (a, b) in enumerate(zip(ours, torch_doc)):
            _assert_same_document(a, b, f"{where}[{i}]")
    elif isinstance(ours, (bool, int, float)) and not isinstance(ours, bool):
        assert isinstance(torch_doc, (int, float)) and not isinstance(torch_doc, bool), where
    else:
        assert ours == torch_doc, where


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="compares the jax suite's run with a torch run (in a subprocess)")
def test_a_smoke_recipe_on_jax_writes_the_files_and_json_it_writes_on_torch(tmp_path):
    args = ["recipe", "table3", "--smoke", *TF_SUBSET["table3"][0], "--verbose", "0", "--out"]
    result = invoke(args + [str(tmp_path / "jax")])
    assert result.exit_code == 0, result.output
    _, process = imported(args + [tmp_path / "torch"], backend="torch")
    assert process.returncode == 0, process.stdout + process.stderr
    files = {
        b: sorted(p.relative_to(tmp_path / b) for p in (tmp_path / b).rglob("*") if p.is_file())
        for b in ("jax", "torch")
    }
    assert files["jax"] == files["torch"] and len(files["jax"]) > 15
    documents = [f for f in files["jax"] if f.suffix == ".json"]
    assert {"config.json", "table3.json", "results.json", "eval_final.json", "aa_state_best.json"} <= {
        f.name for f in documents
    }
    for name in documents:
        ours, torch_doc = (json.loads((tmp_path / b / name).read_text()) for b in ("jax", "torch"))
        _assert_same_document(ours, torch_doc, str(name))
    ours, torch_doc = (json.loads((tmp_path / b / "config.json").read_text()) for b in ("jax", "torch"))
    assert ours == torch_doc  # numbers too: the same plan


def test_out_of_another_configuration_is_refused_unless_overwrite(tmp_path):
    base = ["recipe", "figure2", "--smoke", "--method", "clean", "--out", str(tmp_path), "--verbose", "0"]
    assert invoke(base).exit_code == 0
    refused = invoke(base + ["--epochs", "2"])
    assert refused.exit_code == 1
    assert (
        "holds results of a different configuration (epochs: 1 -> 2)" in refused.output
        and "--overwrite" in refused.output
    )
    with pytest.warns(UserWarning, match="replacing the configuration"):
        accepted = invoke(base + ["--epochs", "2", "--overwrite"])
    assert accepted.exit_code == 0, accepted.output
    data = json.loads(next(tmp_path.glob("clean/*/seed0/results.json")).read_text())
    assert data["run"]["epochs"] == 2 and len(data["history"]) == 2
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2


def test_train_command(tmp_path):
    out = tmp_path / "x"
    args = [
        "train",
        "--method",
        "trades+rpat",
        "--dataset",
        "cifar10",
        "--arch",
        "resnet18_bottleneck",
        "--norm",
        "linf",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
        "--smoke",
        "--eval-attacks",
        "clean,pgd20",
        "--verbose",
        "0",
    ]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("keras_rpat ")
    data = json.loads((out / "results.json").read_text())
    assert data["run"]["preset"] == "trades+rpat" and data["run"]["arch"] == "resnet18_bottleneck"
    assert data["config"]["preset"]["losses"][1]["class"] == "RobustPerception"
    assert data["summary"]["pgd20_best"] is not None and data["summary"]["aa_best"] is None
    again = invoke(args)
    assert again.exit_code == 0 and "already complete" in again.output
    other = invoke([a if a != "linf" else "l2" for a in args])
    assert other.exit_code == 1 and "different configuration" in other.output and "norm: 'linf' -> 'l2'" in other.output


@pytest.mark.parametrize(
    "method, flags, options",
    [
        (
            "rpat_plus_plus",
            ["--cutmix", "--stronger-attack", "--lr-factor", "1.7", "--beta", "2", "--teacher-training", "first_epoch"],
            {"cutmix": True, "stronger_attack": True, "lr_factor": 1.7, "beta": 2.0, "teacher_training": "first_epoch"},
        ),
        (
            "pgd_at+rpat",
            ["--proxy", "penultimate", "--distance", "kl", "--alpha", "0.3", "--alpha-sampling", "beta-"],
            {"proxy": "penultimate", "distance": "kl", "alpha": 0.3, "alpha_sampling": "beta-"},
        ),
        ("trades", ["--norm", "l2", "--l2-step-size", "15/255"], {"l2_step_size": pytest.approx(15 / 255)}),
    ],
)
def test_train_command_passes_every_method_option_to_the_run(tmp_path, monkeypatch, method, flags, options):
    from keras_rpat.cli import train as train_cli

    ran = []
    monkeypatch.setattr(train_cli.recipes, "run_single", lambda spec, *a, **k: ran.append(spec) or {})
    result = invoke(["train", "--method", method, "--dataset", "cifar10", "--out", str(tmp_path / "x"), *flags])
    assert result.exit_code == 0, result.output
    [spec] = ran
    assert spec.options == options
