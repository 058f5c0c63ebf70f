"""What a run leaves for people to read: console lines, CSV logs, curves, smoke labels, `keras-rpat report`.

One smoke run of Figure 4 (one method, two epochs), made in a fresh process
whose output is not a terminal, is shared by the tests. The outputs do not
depend on the backend, and AutoAttack under tensorflow runs in a subprocess per
evaluation, so the run is made on torch only (a jax smoke run writes torch's files:
tests/test_cli_recipe.py).
"""

import csv
import re

import keras_rpat  # noqa: F401

import pytest
from testing import imported
from testing import invoke
from testing import torch_only

from keras_rpat.cli import main

pytestmark = torch_only

EPOCHS = 2


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figure4_smoke")
    args = [
        "recipe",
        "figure4",
        "--smoke",
        "--method",
        "mse",
        "--epochs",
        EPOCHS,
        "--out",
        out,
        "--tensorboard",
        out / "tb",
    ]
    # As if TensorFlow were not installed (Keras imports it, when it is, to seed it and to save a model).
    modules, process = imported(args, blocked=("tensorflow",))
    assert (out / "figure4.md").exists(), process.stdout + process.stderr
    return out, process.stdout, modules


def test_training_and_evaluation_on_torch_need_no_tensorflow(smoke_run):
    _, _, modules = smoke_run
    assert modules == ["keras", "torch"]  # with --tensorboard too


def test_each_run_of_a_recipe_writes_its_tensorboard_scalars_in_its_own_folder(smoke_run):
    out, _, _ = smoke_run
    events = list((out / "tb" / _run_dir(out).relative_to(out)).glob("events.out.tfevents.*"))
    assert len(events) == 1, list((out / "tb").rglob("*"))
    data = events[0].read_bytes()
    for tag in (b"loss/rpat", b"eval/robust_acc", b"eval/clean_acc", b"optimizer/learning_rate"):
        assert data.count(tag) == EPOCHS, tag  # the records are decoded in tests/test_tensorboard.py


def _run_dir(out):
    # A smoke run's folder names what ran (small_cnn on synthetic data), then the recipe cell it stands in for.
    return out / "mse" / "smoke-small_cnn-synthetic-linf-for-cifar10-resnet18_bottleneck" / "seed0"


def test_a_console_that_is_not_a_terminal_gets_one_plain_line_per_epoch(smoke_run):
    _, output, _ = smoke_run
    assert "\x1b" not in output  # no ANSI codes
    assert len(re.findall(r"^\d+/\d+ - .*loss", output, flags=re.M)) == EPOCHS, output


def test_every_run_writes_a_csv_log_per_epoch(smoke_run):
    out, _, _ = smoke_run
    with open(_run_dir(out) / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for key in ("loss", "adv_ce", "rpat", "val_clean_acc", "val_robust_acc", "learning_rate"):
        assert all(float(r[key]) >= 0 for r in rows), key


def test_every_run_draws_its_training_curves(smoke_run):
    out, _, _ = smoke_run
    png = (_run_dir(out) / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_smoke_report_says_what_ran_and_does_not_compare_with_the_paper(smoke_run):
    out, output, _ = smoke_run
    markdown = (out / "figure4.md").read_text()
    assert markdown.startswith("# figure4 smoke run: small_cnn on synthetic data")
    assert "SMOKE RUN: small_cnn" in markdown and "PGD-2 evaluation" in markdown and "APGD-CE" in markdown
    rows = markdown.split("| Group |")[1].split("\n\n")[0].splitlines()[2:]
    assert "⚠" not in markdown
    assert rows and all("(" not in "|".join(row.split("|")[3:]) for row in rows)  # no "(paper, delta)" in a cell
    assert "small_cnn on synthetic data, standing in for resnet18_bottleneck" in output
    assert "PGD-2" in output and "PGD-20" not in output


def test_report_rebuilds_the_files_and_lists_the_missing_runs(smoke_run):
    out, _, _ = smoke_run
    (out / "figure4.md").unlink()
    (out / "figure4.png").unlink()
    result = invoke(main, ["report", out])
    assert result.exit_code == 0, result.output
    markdown = (out / "figure4.md").read_text()
    assert "## Missing runs (8 of 9)" in markdown and "- `kl` CIFAR-10" in markdown
    assert (out / "figure4.png").exists()
    assert "no config.json" in invoke(main, ["report", out / "mse"]).output


def test_quiet_prints_nothing(smoke_run):
    out, _, _ = smoke_run
    result = invoke(main, ["recipe", "figure4", "--smoke", "--method", "mse", "--epochs", EPOCHS, "--out", out, "-q"])
    assert result.exit_code == 0 and result.output == ""


def test_a_smoke_run_still_checks_that_the_dataset_file_exists(tmp_path):
    args = ["train", "--method", "pgd_at", "--dataset", tmp_path / "missing.npz", "--smoke", "--out", tmp_path / "r"]
    result = invoke(main, args)
    assert result.exit_code == 1 and "missing.npz: no such file" in result.output
