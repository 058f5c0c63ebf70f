"""`keras-rpat eval` and `keras-rpat autoattack` through Click's CliRunner."""

import keras_rpat  # noqa: F401  (selects the default backend before keras)

import json

import keras
import numpy as np
import pytest

from keras_rpat import attacks, evaluation, models
from keras_rpat.cli import evaluate as cli_evaluate
from keras_rpat.trainer import RPATTrainer

from testing import BACKEND  # noqa: E402
from testing import invoke  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_eval")
    keras.utils.set_random_seed(0)
    model = models.get("small_cnn", num_classes=4, input_shape=(8, 8, 3), widths=(4, 4, 4))
    model.save(tmp / "model.keras")
    rng = np.random.default_rng(0)
    np.savez(
        tmp / "data.npz",
        x_train=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(8) % 4,
        x_test=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(20) % 4,
    )
    models.get("small_cnn", num_classes=3, input_shape=(8, 8, 3), widths=(4, 4, 4)).save(tmp / "three.keras")
    models.get("small_cnn", num_classes=4, input_shape=(16, 16, 3), widths=(4, 4, 4)).save(tmp / "big.keras")
    (tmp / "corrupt.keras").write_bytes(b"\x00garbage, not a zip archive" * 20)
    trainer = RPATTrainer(model, attack=attacks.PGD(num_steps=1), weight_averaging=True)
    trainer.save(tmp / "trainer.keras")
    return tmp


def test_eval_writes_result_json(files):
    out = files / "result.json"
    res = invoke(
        cli_evaluate.eval_command,
        [
            files / "model.keras",
            "--dataset",
            files / "data.npz",
            "--attacks",
            "clean,pgd20",
            "--epsilon",
            "8/255",
            "--step-size",
            "2/255",
            "--num-steps",
            "3",
            "--n",
            "12",
            "--out",
            out,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Clean" in res.output and "PGD-3" in res.output and "NRR" in res.output
    result = json.loads(out.read_text())
    assert result["n"] == 12 and result["norm"] == "linf"
    assert result["epsilon"] == pytest.approx(8 / 255) and result["step_size"] == pytest.approx(2 / 255)
    assert result["autoattack"] is None and result["robust_source"] == "pgd20"
    assert (result["mean"], result["nrr"]) == pytest.approx(evaluation.mean_nrr(result["clean"], result["pgd20"]))
    assert result["provenance"]["backend"] == BACKEND
    # The same numbers as the library on the same strided subset.
    model = keras.saving.load_model(files / "model.keras")
    with np.load(files / "data.npz") as d:
        idx = (np.arange(12) * 20) // 12
        x, y = d["x_test"][idx].astype("float32") / 255, d["y_test"][idx]
    assert result["clean"] == pytest.approx(evaluation.clean_accuracy(model, x, y))


def test_eval_of_trainer_file_uses_weight_averaged_model(files):
    res = invoke(
        cli_evaluate.eval_command, [files / "trainer.keras", "--dataset", files / "data.npz", "--num-steps", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "weight-averaged model" in res.output


def test_autoattack_command_with_state(files):
    # Under tensorflow, AutoAttack runs in a PyTorch subprocess.
    out, state = files / "aa.json", files / "aa_state.json"
    args = [
        files / "model.keras",
        "--dataset",
        files / "data.npz",
        "--n",
        "8",
        "--attacks",
        "apgd-ce",
        "--option",
        "apgd.n_iter=3",
        "--state",
        state,
        "--out",
        out,
    ]
    res = invoke(cli_evaluate.autoattack_command, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["autoattack_version"] == "custom" and result["autoattack_attacks"] == ["apgd-ce"]
    assert result["autoattack"] <= result["clean"] and result["robust_source"] == "autoattack"
    assert result["pgd20"] is None
    assert json.loads(state.read_text())["complete"]
    again = invoke(cli_evaluate.autoattack_command, args)  # resumes a finished state: same numbers
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["autoattack"] == result["autoattack"]


def test_missing_model_file(files):
    res = invoke(cli_evaluate.eval_command, [files / "nope.keras", "--dataset", files / "data.npz"])
    assert res.exit_code != 0
    assert "does not exist" in res.output and "Traceback" not in res.output


def test_corrupt_model_file(files):
    res = invoke(cli_evaluate.eval_command, [files / "corrupt.keras", "--dataset", files / "data.npz"])
    assert res.exit_code == 1
    assert "Could not load the model file" in res.output and "corrupt" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_class_count_mismatch(files):
    res = invoke(cli_evaluate.eval_command, [files / "three.keras", "--dataset", files / "data.npz"])
    assert res.exit_code == 1
    assert "outputs 3 classes" in res.output and "has 4 classes" in res.output


def test_input_shape_mismatch(files):
    res = invoke(cli_evaluate.autoattack_command, [files / "big.keras", "--dataset", files / "data.npz"])
    assert res.exit_code == 1
    assert "(None, 16, 16, 3)" in res.output and "(20, 8, 8, 3)" in res.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attacks", "clean,fgsm"], "Unknown evaluation 'fgsm'"),
        (["--epsilon", "eight"], "fraction"),
        (["--epsilon", "-1/255"], "must be > 0"),
        (["--n", "500"], "at most the number of examples"),
    ],
)
def test_bad_options(files, extra, message):
    res = invoke(cli_evaluate.eval_command, [files / "model.keras", "--dataset", files / "data.npz", *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_unknown_dataset(files):
    res = invoke(cli_evaluate.eval_command, [files / "model.keras", "--dataset", "imagenet22k"])
    assert res.exit_code == 2 and "Unknown dataset" in res.output


def test_autoattack_bad_attack_name(files):
    res = invoke(
        cli_evaluate.autoattack_command, [files / "model.keras", "--dataset", files / "data.npz", "--attacks", "pgd"]
    )
    assert res.exit_code == 2 and "Unknown AutoAttack attack 'pgd'" in res.output


def test_eval_cw_and_restarts_resume_from_their_state_files(files, monkeypatch):
    out, state = files / "variants.json", files / "variants_state.json"
    args = [files / "model.keras", "--dataset", files / "data.npz", "--n", "12", "--batch-size", "8"]
    args += ["--attacks", "clean,cw1,PGD-1x2", "--state", state, "--out", out]
    res = invoke(cli_evaluate.eval_command, args)
    assert res.exit_code == 0, res.output
    assert "clean, cw1, pgd1x2" in res.output and "CW-1 " in res.output and "PGD-1x2 " in res.output
    result = json.loads(out.read_text())
    assert list(result["pgd_variants"]) == ["cw1", "pgd1x2"] and result["pgd20"] is None
    assert result["pgd_variants"]["pgd1x2"] == {
        "accuracy": result["pgd_variants"]["pgd1x2"]["accuracy"],
        "loss": "ce",
        "num_steps": 1,
        "restarts": 2,
    }
    assert result["robust_source"] in ("cw1", "pgd1x2")
    for name in ("cw1", "pgd1x2"):  # each PGD evaluation's state beside --state
        saved = json.loads((files / f"variants_state.pgd.{name}.json").read_text())
        assert saved["done"] == 12 and saved["attack"]["loss"] == ("cw" if name == "cw1" else "ce")
    # The same numbers as the library with the same settings.
    model = keras.saving.load_model(files / "model.keras")
    with np.load(files / "data.npz") as d:
        idx = (np.arange(12) * 20) // 12
        x, y = d["x_test"][idx].astype("float32") / 255, d["y_test"][idx]
    expected = evaluation.evaluate(model, x, y, attacks="cw1,pgd1x2", batch_size=8)
    assert result["pgd_variants"] == expected.pgd_variants
    # A rerun with the finished states attacks nothing and gives the same result.
    monkeypatch.setattr(attacks.PGD, "perturb", lambda *a: pytest.fail("a finished evaluation ran again"))
    again = invoke(cli_evaluate.eval_command, args)
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["pgd_variants"] == result["pgd_variants"]


@pytest.mark.parametrize(
    "attacks_option, message",
    [
        ("clean,pgd20x0", "Invalid evaluation 'pgd20x0': its steps N and restarts R (pgdNxR) must be at least 1"),
        ("clean,cw0", "Invalid evaluation 'cw0'"),
        ("clean,pgd20y5", "Unknown evaluation 'pgd20y5'. Valid: clean, autoattack (aa), pgdN and cwN"),
    ],
)
def test_eval_bad_attack_names(files, attacks_option, message):
    res = invoke(
        cli_evaluate.eval_command, [files / "model.keras", "--dataset", files / "data.npz", "--attacks", attacks_option]
    )
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "pgdNxR" in res.output and "Traceback" not in res.output


def test_eval_robustbench_json(files, monkeypatch):
    from keras_rpat import autoattack

    # AutoAttack itself is tested elsewhere: here its accuracy only has to reach the record.
    monkeypatch.setattr(autoattack, "run_autoattack", lambda *a, **k: (37.5, None))
    out, record_path = files / "aa_result.json", files / "model_info.json"
    args = [files / "model.keras", "--dataset", files / "data.npz", "--n", "8", "--attacks", "clean,aa"]
    res = invoke(cli_evaluate.eval_command, [*args, "--out", out, "--robustbench-json", record_path])
    assert res.exit_code == 0, res.output
    assert f"Wrote {record_path}" in res.output
    result, record = json.loads(out.read_text()), json.loads(record_path.read_text())
    assert record["clean_acc"] == f"{result['clean']:.2f}" and record["autoattack_acc"] == "37.50"
    assert (record["eps"], record["threat_model"], record["n_examples"]) == ("8/255", "Linf", 8)
    assert (record["architecture"], record["dataset"]) == ("small_cnn", "data")
    assert record["footnote"] == "Evaluated on 8 of the 20 test images."
    res = invoke(cli_evaluate.eval_command, [*args, "--robustbench-json", record_path, "--architecture", "WRN-x"])
    assert res.exit_code == 0 and json.loads(record_path.read_text())["architecture"] == "WRN-x"
    # Without AutoAttack there is no record to write: refused before any work.
    res = invoke(cli_evaluate.eval_command, [*args[:-1], "clean,pgd20", "--robustbench-json", record_path])
    assert res.exit_code == 2, res.output
    assert "add autoattack to --attacks" in res.output and "--robustbench-json" in res.output
    res = invoke(cli_evaluate.eval_command, [*args, "--robustbench-json", files / "model.keras"])
    assert res.exit_code == 2 and "would destroy it" in res.output
    with pytest.warns(UserWarning, match="--architecture WRN-x is only written by --robustbench-json"):
        res = invoke(cli_evaluate.eval_command, [*args, "--architecture", "WRN-x"])
    assert res.exit_code == 0, res.output
