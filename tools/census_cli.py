"""A census of bad command lines: how `keras-rpat` answers each (issue 19).

Each case is a command line (and the files it needs); the census runs it in a
fresh process with a timeout and classifies the answer:

| class | meaning |
|---|---|
| clear | refused (exit status != 0) in one `Error:` line that names the value and the fix (the case's words) |
| warn | accepted with a one-line `Warning:` (the case's words), for input that is legal but almost surely wrong |
| unclear | refused, but the message misses the value or the fix (or is several lines, or says what it must not) |
| traceback | a Python traceback was printed |
| silent | accepted (exit status 0) although it is a mistake, or wrong in another way the case checks |
| slow | worked, but took what the case says it must not (e.g. imported Keras for a plan) |
| hang | ran past the timeout |
| fine | input that must work, and it worked |

Usage (from a checkout; PYTHONPATH picks the tree under test):

    PYTHONPATH=$PWD KERAS_BACKEND=torch python tools/census_cli.py [--jobs 2] [-k WORD] [--timeout 300]

Prints one row per case and the counts per class.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

# The fixtures: made once per census in a fresh process (the tree under test, the chosen backend).
FIXTURES = r"""
import json, os, sys, zipfile
import numpy as np
import keras
import keras_rpat
root = sys.argv[1]
p = lambda *a: os.path.join(root, *a)
rng = np.random.default_rng(0)
def npz(name, size=8, **arrays):
    base = dict(x_train=rng.random((8, size, size, 3), dtype=np.float32), y_train=np.arange(8) % 10,
                x_test=rng.random((8, size, size, 3), dtype=np.float32), y_test=np.arange(8) % 10)
    base.update(arrays)
    np.savez(p(name), **{k: v for k, v in base.items() if v is not None})
npz("good.npz")
npz("big.npz", size=32)
npz("no_y_test.npz", y_test=None)
model = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))
model.save(p("model.keras"))
smoke = keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(16, 16, 3), widths=(4, 8, 8))
smoke.save(p("smoke16.keras"))
inputs = keras.Input((8, 8, 3))
lam = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs))))
lam.save(p("lambda.keras"))
import torch
from keras_rpat import torch_models
net = torch_models.get("small_cnn", num_classes=10, widths=(4, 4, 4))
torch.save(net.state_dict(), p("small_cnn.pt"))
open(p("text.pt"), "w").write("not a checkpoint")
open(p("text.keras"), "w").write("not a model")
open(p("empty.keras"), "w").close()
open(p("empty.npz"), "w").close()
os.makedirs(p("dir.npz"))
os.makedirs(p("empty_dir"))
open(p("a_file"), "w").write("x")
json.dump({"clean": 0.5, "pgd20": 0.3, "provenance": {}}, open(p("results.json"), "w"))
os.makedirs(p("train_run"))
json.dump({"recipe": "train", "method": "pgd_at", "dataset": "synthetic", "smoke": True}, open(p("train_run", "config.json"), "w"))
"""


@dataclasses.dataclass
class Case:
    """One command line. `expect`: 'error' (must be refused), 'warn' (a warning), 'ok' (must work)."""

    id: str
    args: list
    expect: str = "error"
    words: tuple = ()  # what the message must name (the value, the fix)
    absent: tuple = ()  # what the message must not say
    env: dict = dataclasses.field(default_factory=dict)
    setup: object = None  # setup(fixtures) before the run
    no_keras: bool = False  # the command must answer without importing Keras
    python_m: bool = False  # run as `python -m keras_rpat` instead of `python -m keras_rpat.cli`


def _recipe_dir(root, name, edit, table="table3"):
    """A copy of recipes/<table>.toml as <name>.toml in a folder of its own, edited by `edit(text)`."""
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", f"{table}.toml")
    folder = os.path.join(root, f"recipes_{name}")
    os.makedirs(folder, exist_ok=True)
    with open(source) as f:
        text = f.read()
    text = text.replace(f'name = "{table}"', f'name = "{name}"', 1)
    with open(os.path.join(folder, f"{name}.toml"), "w") as f:
        f.write(edit(text))
    return folder


def _copy_model(name):
    def setup(f):
        shutil.copy(f["model"], os.path.join(f["root"], name))

    return setup


# `{key}`: a fixture path; `{out}`: the case's own output folder (absent at the start).
M, G = "{model}", "{good}"
EVAL = ["eval", M, "--dataset", G, "--attacks", "clean"]
AA = ["autoattack", M, "--dataset", G, "--attacks", "apgd-ce", "--option", "apgd.n_iter=1"]
SMOKE = ["--dataset", "synthetic", "--smoke", "--eval-attacks", "clean", "--checkpoints", "final", "--out", "{out}"]
TRAIN = ["train", "--method", "pgd_at", *SMOKE]
RECIPE = ["recipe", "table3", "--smoke", "--dry-run", "--method", "rpat_plus_plus", "--out", "{out}"]
READ_ONLY = "/sys/keras_rpat_read_only"

CASES = [
    # --- the cases named in issue 19 -------------------------------------------------------------
    Case(
        "eval-l2-epsilon-128", ["eval", M, "--dataset", G, "--norm", "l2", "--epsilon", "128"], words=("128", "128/255")
    ),
    Case(
        "eval-l2-step-size-32",
        [*EVAL, "--attacks", "pgd20", "--norm", "l2", "--step-size", "32"],
        words=("32", "32/255"),
    ),
    Case("aa-l2-epsilon-128", [*AA, "--norm", "l2", "--epsilon", "128"], words=("128", "128/255")),
    Case("train-l2-step-size-32", [*TRAIN, "--norm", "l2", "--l2-step-size", "32"], words=("32", "32/255")),
    Case(
        "recipe-toml-l2-step-size-32",
        ["recipe", "l2slip", "--dry-run", "--smoke"],
        words=("l2_step_size", "32/255"),
        env={"KERAS_RPAT_RECIPES": "{recipes_l2slip}"},
    ),
    Case("train-quiet-verbose-2", [*TRAIN, "--quiet", "--verbose", "2"], words=("--quiet", "--verbose 2")),
    Case("recipe-quiet-verbose-2", [*RECIPE, "--quiet", "--verbose", "2"], words=("--quiet", "--verbose 2")),
    Case(
        "eval-lambda-model",
        ["eval", "{lambda}", "--dataset", G],
        words=("lambda.keras", "Lambda", "--unsafe-deserialization"),
        absent=("to the loading funct",),
    ),
    Case(
        "export-lambda-model",
        ["export", "{lambda}", "--out", "{out}/m.pt"],
        words=("lambda.keras", "Lambda", "--unsafe-deserialization"),
        absent=("to the loading funct",),
    ),
    Case(
        "eval-state-is-a-results-file",
        [*EVAL, "--attacks", "clean,autoattack", "--state", "{results}"],
        words=("results.json", "not a", "--state"),
        absent=("Delete it",),
    ),
    Case(
        "report-train-folder",
        ["report", "{train_run}"],
        words=("keras-rpat train", "results.json"),
        absent=("Unknown recipe",),
    ),
    Case("recipe-dry-run-imports-no-keras", ["recipe", "table3", "--dry-run"], expect="ok", no_keras=True),
    Case(
        "eval-smoke-model-on-synthetic",
        ["eval", "{smoke16}", "--dataset", "synthetic", "--n", "16", "--attacks", "clean"],
        expect="ok",
    ),
    Case(
        "recipe-toml-perception-epsilon-8",
        ["recipe", "perception", "--dry-run", "--smoke"],
        words=("epsilon=8", "8/255"),
        env={"KERAS_RPAT_RECIPES": "{recipes_perception}"},
    ),
    # --- eval / autoattack --------------------------------------------------------------------------
    Case(
        "eval-out-is-the-model",
        ["eval", "{root}/victim.keras", "--dataset", G, "--attacks", "clean", "--out", "{root}/victim.keras"],
        words=("victim.keras", "--out"),
        setup=_copy_model("victim.keras"),
    ),
    Case(
        "eval-state-is-the-out",
        [*EVAL, "--attacks", "clean,autoattack", "--state", "{out}/r.json", "--out", "{out}/r.json"],
        words=("r.json", "--state", "--out"),
    ),
    Case("eval-model-is-an-npz", ["eval", G, "--dataset", G], words=("good.npz", ".keras")),
    Case(
        "eval-model-is-a-torch-checkpoint",
        ["eval", "{small_cnn_pt}", "--dataset", G],
        words=("small_cnn.pt", "keras-rpat convert"),
    ),
    Case(
        "eval-model-without-extension",
        ["eval", "{root}/model_copy", "--dataset", G, "--attacks", "clean"],
        expect="ok",
        setup=_copy_model("model_copy"),
    ),
    Case("eval-model-empty-file", ["eval", "{empty_keras}", "--dataset", G], words=("empty.keras", ".keras")),
    Case("eval-model-is-a-folder", ["eval", "{empty_dir}", "--dataset", G], words=("empty_dir", "directory")),
    Case("eval-dataset-npz-is-a-folder", ["eval", M, "--dataset", "{dir_npz}"], words=("dir.npz", "folder")),
    Case("eval-dataset-npz-empty", ["eval", M, "--dataset", "{empty_npz}"], words=("empty.npz", "np.savez")),
    Case("eval-dataset-npz-without-y-test", ["eval", M, "--dataset", "{no_y_test}"], words=("no_y_test.npz", "y_test")),
    Case("eval-dataset-npz-other-image-size", ["eval", M, "--dataset", "{big}"], words=("(None, 8, 8, 3)", "32")),
    Case("eval-attacks-empty", [*EVAL[:-1], ""], words=("--attacks", "clean")),
    Case("eval-n-text", [*EVAL, "--n", "abc"], words=("--n", "'abc'")),
    Case("eval-batch-size-negative", [*EVAL, "--batch-size", "-1"], words=("--batch-size", "-1")),
    Case("eval-l2-default-budget", [*EVAL, "--norm", "l2"], expect="ok"),
    Case(
        "eval-tiny-imagenet-missing",
        [*EVAL, "--dataset", "tiny_imagenet"],
        words=("tiny-imagenet-200",),
        env={"KERAS_RPAT_DATA_DIR": "{empty_dir}"},
    ),
    Case("aa-version-unknown", [*AA, "--version", "foo"], words=("'foo'", "standard")),
    Case("aa-version-standard-with-attacks", [*AA, "--version", "standard"], words=("standard", "--attacks")),
    Case("aa-option-float-iterations", [*AA[:-1], "apgd.n_iter=1.5"], words=("apgd.n_iter=1.5",)),
    Case("aa-option-unknown-setting", [*AA[:-1], "apgd.bogus=1"], words=("'bogus'", "n_iter")),
    Case("aa-state-is-a-folder", [*AA, "--state", "{empty_dir}"], words=("empty_dir", "folder")),
    # --- convert / export ---------------------------------------------------------------------------
    Case(
        "convert-text-checkpoint",
        ["convert", "{text_pt}", "--arch", "small_cnn", "--out", "{out}/m.keras"],
        words=("text.pt", "torch.save(model.state_dict(), path)"),
        absent=("weights_only",),
    ),
    Case(
        "convert-out-not-keras",
        ["convert", "{small_cnn_pt}", "--arch", "small_cnn", "--out", "{out}/m.h5"],
        words=("m.h5", ".keras"),
    ),
    Case(
        "convert-normalize-unknown",
        ["convert", "{small_cnn_pt}", "--arch", "small_cnn", "--normalize", "imagenet", "--out", "{out}/m.keras"],
        words=("'imagenet'", "cifar10"),
    ),
    Case(
        "convert-wrong-arch",
        ["convert", "{small_cnn_pt}", "--arch", "resnet18", "--out", "{out}/m.keras"],
        words=("resnet18",),
    ),
    Case(
        "convert-out-read-only",
        ["convert", "{small_cnn_pt}", "--arch", "small_cnn", "--out", READ_ONLY + "/m.keras"],
        words=(READ_ONLY, "not writable"),
    ),
    Case(
        "convert-num-classes-wrong",
        ["convert", "{small_cnn_pt}", "--arch", "small_cnn", "--num-classes", "100", "--out", "{out}/m.keras"],
        words=("100",),
    ),
    Case(
        "export-text-model",
        ["export", "{text_keras}", "--out", "{out}/m.pt"],
        words=("text.keras", ".keras"),
        absent=("File not found",),
    ),
    Case("export-out-read-only", ["export", M, "--out", READ_ONLY + "/m.pt"], words=(READ_ONLY, "not writable")),
    Case("export-format-unknown", ["export", M, "--format", "tf"], words=("'tf'", "torch")),
    # --- demo ---------------------------------------------------------------------------------------
    Case("demo-epochs-0", ["demo", "--epochs", "0"], words=("--epochs", "0")),
    Case("demo-n-train-0", ["demo", "--n-train", "0"], words=("--n-train", "0")),
    Case("demo-batch-size-0", ["demo", "--batch-size", "0"], words=("--batch-size", "0")),
    Case("demo-n-test-text", ["demo", "--n-test", "abc"], words=("--n-test", "'abc'")),
    # --- train --------------------------------------------------------------------------------------
    Case("train-l2-step-size-with-linf", [*TRAIN, "--l2-step-size", "0.1"], words=("--l2-step-size", "--norm l2")),
    Case(
        "train-stronger-attack-with-l2",
        ["train", "--method", "rebat", *SMOKE, "--norm", "l2", "--stronger-attack"],
        words=("stronger_attack", "L-inf"),
    ),
    Case(
        "train-batch-size-above-the-data",
        [*TRAIN, "--batch-size", "100000"],
        expect="warn",
        words=("100000", "64 images"),
    ),
    Case(
        "train-dataset-npz-is-a-folder",
        ["train", "--method", "pgd_at", "--dataset", "{dir_npz}", "--out", "{out}"],
        words=("dir.npz", "folder"),
    ),
    Case("train-data-dir-is-a-file", [*TRAIN, "--data-dir", "{a_file}"], words=("a_file", "file")),
    Case("train-tensorboard-is-a-file", [*TRAIN, "--tensorboard", "{a_file}"], words=("a_file", "is a file")),
    Case("train-sync-batchnorm-one-device", [*TRAIN, "--sync-batchnorm"], words=("--sync-batchnorm",)),
    Case("train-method-rpat-alone", ["train", "--method", "rpat", *SMOKE], words=("'rpat'", "+rpat")),
    # --- recipe -------------------------------------------------------------------------------------
    Case("recipe-seeds-negative", [*RECIPE, "--seeds", "-1"], words=("--seeds", "-1")),
    Case("recipe-seeds-repeated", [*RECIPE, "--seeds", "0,0"], words=("--seeds", "0,0")),
    Case("recipe-dataset-unknown", [*RECIPE, "--dataset", "foo"], words=("'foo'", "cifar10")),
    Case("recipe-arch-not-in-recipe", [*RECIPE, "--arch", "resnet18"], words=("resnet18", "preact_resnet18")),
    Case("recipe-norm-unknown", [*RECIPE, "--norm", "l3"], words=("'l3'", "linf")),
    Case("recipe-show-unknown", ["recipe", "show", "foo"], words=("'foo'", "table3")),
    Case(
        "recipe-toml-path",
        ["recipe", "{recipes_mine}/mine.toml", "--dry-run"],
        words=("mine.toml", "KERAS_RPAT_RECIPES"),
    ),
    Case(
        "recipe-toml-syntax",
        ["recipe", "broken", "--dry-run"],
        words=("broken.toml", "TOML"),
        env={"KERAS_RPAT_RECIPES": "{recipes_broken}"},
    ),
    Case(
        "recipe-toml-unknown-key",
        ["recipe", "typo", "--dry-run"],
        words=("'epoch'", "epochs"),
        env={"KERAS_RPAT_RECIPES": "{recipes_typo}"},
    ),
    Case(
        "recipe-toml-wrong-type",
        ["recipe", "types", "--dry-run"],
        words=("epochs", "'3'"),
        env={"KERAS_RPAT_RECIPES": "{recipes_types}"},
    ),
    Case(
        "recipe-toml-name-mismatch",
        ["recipe", "named", "--dry-run"],
        words=("name", "named"),
        env={"KERAS_RPAT_RECIPES": "{recipes_named}"},
    ),
    Case(
        "recipe-folder-missing",
        ["recipe", "list"],
        words=("/nonexistent", "KERAS_RPAT_RECIPES"),
        env={"KERAS_RPAT_RECIPES": "/nonexistent"},
    ),
    # --- report / the command itself ----------------------------------------------------------------
    Case("report-folder-missing", ["report", "{root}/nope"], words=("nope", "does not exist")),
    Case("report-empty-folder", ["report", "{empty_dir}"], words=("config.json", "keras-rpat recipe")),
    Case("report-is-a-file", ["report", "{a_file}"], words=("a_file", "file")),
    Case("command-unknown", ["evaluate"], words=("'evaluate'", "eval")),
    Case("python-m-missing-model", ["eval"], words=("MODEL",), python_m=True),
]


def make_fixtures(root, python, env):
    """Writes the fixture files into `root` (a fresh process of the tree under test); returns {key: path}."""
    subprocess.run([python, "-c", FIXTURES, root], env=env, check=True, capture_output=True, text=True)
    names = {
        "model": "model.keras",
        "smoke16": "smoke16.keras",
        "lambda": "lambda.keras",
        "good": "good.npz",
        "big": "big.npz",
        "no_y_test": "no_y_test.npz",
        "small_cnn_pt": "small_cnn.pt",
        "text_pt": "text.pt",
        "text_keras": "text.keras",
        "empty_keras": "empty.keras",
        "empty_npz": "empty.npz",
        "dir_npz": "dir.npz",
        "empty_dir": "empty_dir",
        "a_file": "a_file",
        "results": "results.json",
        "train_run": "train_run",
    }
    files = {k: os.path.join(root, v) for k, v in names.items()} | {"root": root}
    files["recipes_l2slip"] = _recipe_dir(
        root, "l2slip", lambda t: t.replace('l2_step_size = "32/255"', "l2_step_size = 32")
    )
    files["recipes_mine"] = _recipe_dir(root, "mine", lambda t: t)
    files["recipes_perception"] = _recipe_dir(
        root, "perception", lambda t: t.replace('epsilon = "8/255"', "epsilon = 8", 1), table="figure2"
    )
    files["recipes_broken"] = _recipe_dir(root, "broken", lambda t: t.replace("[config]", "[config", 1))
    files["recipes_typo"] = _recipe_dir(root, "typo", lambda t: t.replace("epochs = 200", "epoch = 200", 1))
    files["recipes_types"] = _recipe_dir(root, "types", lambda t: t.replace("epochs = 200", 'epochs = "3"', 1))
    files["recipes_named"] = _recipe_dir(root, "named", lambda t: t.replace('name = "named"', 'name = "other"', 1))
    return files


PROBE = textwrap.dedent(
    """
    import sys, json
    sys.argv[0] = 'keras-rpat'
    from keras_rpat.cli import main
    try:
        main(sys.argv[1:], prog_name='keras-rpat')
    finally:
        print('IMPORTED', json.dumps(sorted(m for m in ('keras', 'torch', 'tensorflow') if m in sys.modules)))
    """
)


def classify(case, status, output, imported):
    """The class of an answer (see the module docstring) and a short note."""
    if status is None:
        return "hang", ""
    if "Traceback (most recent call last)" in output:
        return "traceback", ""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    warnings = [line for line in lines if line.startswith("Warning:")]
    # The words are looked for in the answer: from the Error: line on, or the Warning: lines.
    answer = output[output.index("Error:") :] if errors else "\n".join(warnings)
    missing = [w for w in case.words if w not in answer]
    present = [w for w in case.absent if w in answer]
    if status != 0:
        if case.expect == "ok":
            return "unclear", "refused input that must work"
        if not errors:
            return "unclear", "no Error: line"
        if missing or present:
            return "unclear", f"missing {missing}" if missing else f"says {present}"
        return "clear", ""
    if case.expect == "error":
        return "silent", "accepted"
    if case.expect == "warn":
        return ("warn", "") if warnings and not missing else ("silent", "no warning")
    if case.no_keras and "keras" in imported:
        return "slow", f"imported {', '.join(imported)}"
    return "fine", ""


def run_case(case, files, python, env, timeout):
    out = os.path.join(files["root"], "out", case.id)
    values = files | {"out": out}

    def fill(text):
        return text.format(**values)

    if case.setup is not None:
        case.setup(files)
    case_env = env | {k: fill(v) for k, v in case.env.items()}
    if case.python_m:
        command = [python, "-m", "keras_rpat", *map(fill, case.args)]
    else:
        command = [python, "-c", PROBE, *map(fill, case.args)]
    start = time.monotonic()
    try:
        p = subprocess.run(command, env=case_env, capture_output=True, text=True, timeout=timeout, cwd=files["root"])
        status, output = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        status, output = None, (e.stdout or b"").decode() + (e.stderr or b"").decode()
    seconds = time.monotonic() - start
    imported = []
    for line in output.splitlines():
        if line.startswith("IMPORTED "):
            imported = json.loads(line[len("IMPORTED ") :])
    output = "\n".join(line for line in output.splitlines() if not line.startswith("IMPORTED "))
    kind, note = classify(case, status, output, imported)
    message = next((line for line in output.splitlines() if line.startswith(("Error:", "Warning:"))), "")
    if not message and output.strip():
        message = output.strip().splitlines()[-1]
    return case, kind, note, status, seconds, message, output


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("-k", default=None, help="Only the cases whose id contains one of these (comma-separated).")
    parser.add_argument("--width", type=int, default=150, help="Characters of the message shown.")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    python = sys.executable
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "torch")
    env.pop("KERAS_RPAT_DEBUG", None)
    root = tempfile.mkdtemp(prefix="census_cli.")
    files = make_fixtures(root, python, env)
    cases = [c for c in CASES if args.k is None or any(k in c.id for k in args.k.split(","))]
    tree = env.get("PYTHONPATH", "(installed)")
    print(f"census_cli: {len(cases)} cases, KERAS_BACKEND={env['KERAS_BACKEND']}, PYTHONPATH={tree}")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run_case(c, files, python, env, args.timeout), cases))
    print("| case | expect | class | exit | s | note / message |")
    print("|---|---|---|---|---|---|")
    counts = {}
    for case, kind, note, status, seconds, message, _ in rows:
        counts[kind] = counts.get(kind, 0) + 1
        text = (f"{note}: " if note else "") + message
        text = text.replace("|", "\\|")[: args.width]
        print(f"| {case.id} | {case.expect} | {kind} | {status} | {seconds:.0f} | {text} |")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    dict(id=c.id, expect=c.expect, kind=k, note=n, status=s, seconds=round(t, 1), message=m, output=o)
                    for c, k, n, s, t, m, o in rows
                ],
                f,
                indent=1,
            )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
