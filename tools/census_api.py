"""Census of bad input through the Python API (issue 19): how each case is answered.

Each case is a small function that feeds one rough input to the public API. A
worker process (one per backend; restarted after a case that hangs or kills it)
runs the cases one by one and classifies the answer:

    clear      refused with an error, or warned, naming the value / the fix (`words`)
    unclear    refused (ValueError/TypeError) without naming the value or the fix,
               or a legal input refused or warned about
    traceback  an internal exception a user cannot act on (KeyError, RuntimeError, ...)
    silent     accepted, though it is almost surely a mistake
    hang       ran past the timeout
    fine       a legal input, accepted without a word (the `ok` cases)

Good answers are `clear` (for `bad` cases) and `fine` (for `ok` cases).

Usage (from the repository root):

    PYTHONPATH=$PWD python tools/census_api.py --backend torch --json before_torch.json
    python tools/census_api.py --compare before_torch.json after_torch.json
"""

import argparse
import contextlib
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

CASES = {}


def case(expect="bad", words=(), backends=("torch", "tensorflow")):
    """Registers a case: `expect` "bad" (needs a clear error or warning) or "ok" (must be accepted quietly)."""

    def register(fn):
        CASES[fn.__name__] = dict(fn=fn, expect=expect, words=tuple(words), backends=backends)
        return fn

    return register


# ---------------------------------------------------------------------------
# Fixtures (built once per worker, small: 8x8 RGB, 10 classes)
# ---------------------------------------------------------------------------

_CACHE = {}


def _cached(fn):
    def get():
        if fn.__name__ not in _CACHE:
            _CACHE[fn.__name__] = fn()
        return _CACHE[fn.__name__]

    return get


@_cached
def model():
    import keras_rpat

    return keras_rpat.models.get("small_cnn", num_classes=10, input_shape=(8, 8, 3), widths=(4, 4, 4))


@_cached
def softmax_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def images(n=4):
    import numpy as np

    return np.random.default_rng(0).random((n, 8, 8, 3), dtype=np.float32)


def images_uint8(n=4):
    import numpy as np

    return (images(n) * 255).astype(np.uint8)


def labels(n=4):
    import numpy as np

    return np.arange(n, dtype=np.int64) % 10


def trainer(classifier=None, **kwargs):
    import keras_rpat

    kwargs.setdefault("attack", keras_rpat.attacks.PGD(num_steps=1))
    t = keras_rpat.RPATTrainer(classifier or model(), **kwargs)
    t.compile(optimizer="sgd")
    return t


def _fit(t, x=None, y=None, **kwargs):
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("batch_size", 4)
    return t.fit(images() if x is None else x, labels() if y is None else y, verbose=0, **kwargs)


# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------

# -- L2 unit slips (issue 19) -------------------------------------------------


@case(words=["epsilon=128", "128/255"])
def pgd_l2_epsilon_128():
    from keras_rpat import attacks

    attacks.PGD("l2", epsilon=128)


@case(words=["step_size=32", "32/255"])
def pgd_l2_step_32():
    from keras_rpat import attacks

    attacks.PGD("l2", epsilon=128 / 255, step_size=32)


@case(expect="ok")
def pgd_l2_epsilon_3_imagenet():
    from keras_rpat import attacks

    attacks.PGD("l2", epsilon=3.0, step_size=0.5)


@case(words=["l2_step_size=32", "32/255"])
def presets_l2_step_32():
    from keras_rpat import presets

    presets.get("pgd_at", norm="l2", l2_step_size=32)


@case(words=["l2_step_size=32", "32/255"])
def single_run_l2_step_32():
    from keras_rpat import recipes

    recipes.single_run("pgd_at", "synthetic", norm="l2", smoke=True, l2_step_size=32)


@case(words=["epsilon=128", "128/255"])
def evaluate_l2_epsilon_128():
    from keras_rpat import evaluation

    evaluation.evaluate(model(), images(), labels(), attacks=["clean"], norm="l2", epsilon=128)


@case(words=["epsilon=128", "128/255"])
def autoattack_l2_epsilon_128():
    from keras_rpat import autoattack

    autoattack.run_autoattack(model(), images(), labels(), norm="l2", epsilon=128)


@case(words=["l2_step_size", "norm='l2'"])
def presets_l2_step_with_linf():
    from keras_rpat import presets

    presets.get("pgd_at", norm="linf", l2_step_size=15 / 255)


# -- integer images at every entry (issue 19) ---------------------------------


@case(words=["uint8", "/ 255"])
def trainer_evaluate_uint8():
    trainer().evaluate(images_uint8(), labels(), verbose=0)


@case(words=["max=254", "divide by 255"])
def trainer_evaluate_0_255_floats():
    trainer().evaluate(images_uint8().astype("float32"), labels(), verbose=0)


@case(words=["uint8", "/ 255"])
def fit_validation_data_uint8():
    _fit(trainer(), validation_data=(images_uint8(), labels()))


@case(words=["uint8", "/ 255"])
def trainer_predict_uint8():
    trainer().predict(images_uint8(), verbose=0)


@case(words=["uint8", "/ 255"])
def fit_uint8():
    _fit(trainer(), images_uint8())


@case(words=["uint8", "/ 255"])
def attack_call_uint8_tensor():
    import keras

    from keras_rpat import attacks

    attacks.PGD(num_steps=1)(model(), keras.ops.convert_to_tensor(images_uint8()), labels())


@case(words=["uint8", "/ 255"])
def attack_perturb_uint8_array():
    from keras_rpat import attacks

    attacks.PGD(num_steps=1).perturb(model(), images_uint8(), labels())


@case(words=["uint8", "/ 255"])
def clean_accuracy_uint8():
    from keras_rpat import evaluation

    evaluation.clean_accuracy(model(), images_uint8(), labels())


@case(words=["uint8", "/ 255"])
def pgd_accuracy_uint8():
    from keras_rpat import evaluation

    evaluation.pgd_accuracy(model(), images_uint8(), labels(), num_steps=1)


@case(words=["uint8", "/ 255"])
def perception_analysis_uint8():
    from keras_rpat import evaluation

    evaluation.perception_analysis(model(), images_uint8(), labels())


@case(words=["uint8", "/ 255"])
def autoattack_uint8():
    from keras_rpat import autoattack

    autoattack.run_autoattack(model(), images_uint8(), labels(), version="custom", attacks_to_run=["apgd-ce"])


@case(words=["uint8", "/ 255"])
def robust_evaluation_callback_uint8():
    from keras_rpat import callbacks

    callbacks.RobustEvaluation(images_uint8(), labels())


@case(words=["0 and 1", "/ 255"])
def evaluate_binary_after_cast():
    from keras_rpat import evaluation

    x = (images() * 255).astype("uint8").astype("float32") / 255  # fine: 0..1 in 1/255 steps
    x = (x > 0.5).astype("float32")  # only 0 and 1: a float -> int -> float cast
    evaluation.evaluate(model(), x, labels(), attacks=["clean"])


# -- a model ending in softmax (issue 19) -------------------------------------


@case(words=["softmax", "logits"])
def fit_softmax_model():
    _fit(trainer(softmax_model()))


@case(words=["softmax", "logits"])
def attack_softmax_model():
    from keras_rpat import attacks

    attacks.PGD(num_steps=1)(softmax_model(), images(), labels())


@case(words=["softmax", "logits"])
def trainer_evaluate_softmax_model():
    trainer(softmax_model()).evaluate(images(), labels(), verbose=0)


# -- one class, batch size 0, a channels-first input shape (issue 19) ---------


@case(words=["num_classes=1", ">= 2"])
def models_one_class():
    import keras_rpat

    keras_rpat.models.get("small_cnn", num_classes=1, input_shape=(8, 8, 3))


@case(words=["one class", "y"])
def fit_one_class_labels():
    import numpy as np

    _fit(trainer(), y=np.zeros(4, np.int64))


@case(words=["num_classes=1"])
def synthetic_one_class():
    import keras_rpat

    keras_rpat.datasets.load("synthetic", num_classes=1, n_train=8, n_test=8, image_size=8)


@case(words=["one class", "num_classes"])
def npz_one_class():
    import numpy as np

    import keras_rpat

    path = os.path.join(tempfile.mkdtemp(), "one.npz")
    x = images_uint8(8)
    np.savez(path, x_train=x, y_train=np.zeros(8), x_test=x, y_test=np.zeros(8))
    keras_rpat.datasets.load(path)


@case(words=["batch_size=0"])
def fit_batch_size_0():
    _fit(trainer(), batch_size=0)


@case(words=["batch_size=-4"])
def fit_batch_size_negative():
    _fit(trainer(), batch_size=-4)


@case(words=["epochs=0"])
def fit_epochs_0():
    _fit(trainer(), epochs=0)


@case(words=["input_shape=(3, 32, 32)", "channels_first"])
def models_input_shape_channels_first():
    import keras_rpat

    keras_rpat.models.get("small_cnn", input_shape=(3, 32, 32), data_format="channels_last")


@case(words=["input_shape=(32, 32, 4)", "1 or 3"])
def models_input_shape_4_channels():
    import keras_rpat

    keras_rpat.models.get("small_cnn", input_shape=(32, 32, 4))


# -- TorchBridge gradients (issue 19) -----------------------------------------


@case(expect="ok", backends=("torch",))
def torch_bridge_gradient_view():
    """A torch attack that flattens the input gradient with `.view()` (as torchattacks' PGDL2 does)."""
    import torch

    from keras_rpat.autoattack.torch_bridge import TorchBridge

    bridge = TorchBridge(model())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(bridge(x), torch.tensor([0, 1]))
    grad = torch.autograd.grad(loss, x)[0]
    norms = grad.view(2, -1).norm(p=2, dim=1)
    assert norms.shape == (2,)


# -- the census proper: models ------------------------------------------------


@case(words=["'resnet19'", "resnet18"])
def models_unknown_name():
    import keras_rpat

    keras_rpat.models.get("resnet19")


@case(words=["bogus"])
def models_unknown_option():
    import keras_rpat

    keras_rpat.models.get("small_cnn", bogus=1)


@case(words=["data_format='NHWC'", "channels_last"])
def models_data_format_nhwc():
    import keras_rpat

    keras_rpat.models.get("small_cnn", data_format="NHWC")


@case(words=["normalize='imagenet'"])
def models_normalize_unknown():
    import keras_rpat

    keras_rpat.models.get("small_cnn", normalize="imagenet")


@case(words=["num_classes=10.5"])
def models_num_classes_float():
    import keras_rpat

    keras_rpat.models.get("small_cnn", num_classes=10.5)


@case(words=["'foo'", "penultimate"])
def feature_model_unknown_proxy():
    import keras_rpat

    keras_rpat.models.feature_model(model(), proxies=("foo",))


@case(words=["linear.weight: (10, 4)", "num_classes"])
def from_torch_wrong_num_classes():
    import keras_rpat

    arrays = _torch_arrays(num_classes=10)
    keras_rpat.models.from_torch("small_cnn", arrays, num_classes=100, widths=(4, 4, 4))


def _torch_arrays(num_classes):
    from keras_rpat import torch_models

    module = torch_models.get("small_cnn", num_classes=num_classes, widths=(4, 4, 4))
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@case(words=["missing.pt"])
def from_torch_missing_file():
    import keras_rpat

    keras_rpat.models.from_torch("small_cnn", "/nonexistent/missing.pt")


@case(words=["0 keys", "17 Keras weights with no key"])
def from_torch_empty_state_dict():
    import keras_rpat

    keras_rpat.models.from_torch("small_cnn", {}, widths=(4, 4, 4))


# -- attacks -------------------------------------------------------------------


@case(words=["random_start='no'"])
def pgd_random_start_text():
    from keras_rpat import attacks

    attacks.PGD(random_start="no")


@case(words=["training='False'"])
def pgd_training_text():
    from keras_rpat import attacks

    attacks.PGD(training="False")


@case(words=["'ten'", "epoch"])
def pgd_schedule_epoch_text():
    from keras_rpat import attacks

    attacks.PGD(schedule={"ten": {"num_steps": 12}})


@case(words=["epsilon=8", "8/255"])
def pgd_schedule_epsilon_8():
    from keras_rpat import attacks

    attacks.PGD(schedule={100: {"epsilon": 8}})


@case(words=["y[2]=12", "[0, 10)"])
def attack_labels_out_of_range():
    import numpy as np

    from keras_rpat import attacks

    attacks.PGD(num_steps=1)(model(), images(), np.array([0, 1, 12, 3]))


@case(words=["x.shape=(4, 8, 8, 3)", "y.shape=(3,)"])
def attack_length_mismatch():
    from keras_rpat import attacks

    attacks.PGD(num_steps=1)(model(), images(), labels(3))


@case(words=["'pgd20'", "pgd"])
def attacks_get_unknown():
    from keras_rpat import attacks

    attacks.get("pgd20")


# -- losses ---------------------------------------------------------------------


@case(words=["'logit'", "penultimate"])
def rp_proxy_unknown():
    from keras_rpat import losses

    losses.RobustPerception(proxy="logit")


@case(words=["'l1'", "mse"])
def rp_distance_unknown():
    from keras_rpat import losses

    losses.RobustPerception(distance="l1")


@case(words=["'trade'", "TRADES"])
def losses_get_unknown():
    from keras_rpat import losses

    losses.get("trade")


# -- the trainer ----------------------------------------------------------------


@case(words=["loss_weights='a'"])
def trainer_loss_weights_text():
    from keras_rpat import losses

    trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=["a"])


@case(words=["loss_weights=nan"])
def trainer_loss_weights_nan():
    from keras_rpat import losses

    trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=[float("nan")])


@case(words=["loss_weights=-1", ">= 0"])
def trainer_loss_weights_negative():
    from keras_rpat import losses

    trainer(losses=[losses.AdversarialCrossEntropy()], loss_weights=[-1.0])


@case(words=["weight_averaging='yes'", "WeightAveraging"])
def trainer_weight_averaging_text():
    trainer(weight_averaging="yes")


@case(words=["seed=abc", "integer"])
def trainer_seed_text():
    trainer(seed="abc")


@case(words=["precision='fp16'", "bfloat16"])
def trainer_precision_unknown():
    trainer(precision="fp16")


@case(words=["compile"])
def fit_without_compile():
    import keras_rpat

    keras_rpat.RPATTrainer(model()).fit(images(), labels(), epochs=1, verbose=0)


@case(words=["(4, 16, 16, 3)", "(None, 8, 8, 3)"])
def fit_wrong_image_size():
    import numpy as np

    _fit(trainer(), np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32))


@case(words=["y[1]=12", "[0, 10)"])
def trainer_evaluate_labels_out_of_range():
    import numpy as np

    trainer().evaluate(images(), np.array([0, 12, 2, 3]), verbose=0)


@case(words=["y[1]=12", "[0, 10)"])
def fit_validation_labels_out_of_range():
    import numpy as np

    _fit(trainer(), validation_data=(images(), np.array([0, 12, 2, 3])))


# -- evaluation -----------------------------------------------------------------


@case(words=["seed=abc", "integer"])
def evaluate_seed_text():
    from keras_rpat import evaluation

    evaluation.evaluate(model(), images(), labels(), attacks=["clean", "pgd20"], num_steps=1, seed="abc")


@case(words=["clean=150", "100"])
def mean_nrr_above_100():
    from keras_rpat import evaluation

    evaluation.mean_nrr(150, 40)


@case(words=["epsilon=8", "8/255"])
def perception_epsilon_8():
    from keras_rpat import evaluation

    evaluation.perception_analysis(model(), images(), labels(), epsilon=8)


@case(words=["step_size=2", "2/255"])
def perception_step_2():
    from keras_rpat import evaluation

    evaluation.perception_analysis(model(), images(), labels(), perturbation="pgd20", step_size=2, num_steps=1)


@case(words=["batch_size='a'"])
def autoattack_batch_size_text():
    from keras_rpat import autoattack

    autoattack.run_autoattack(model(), images(), labels(), batch_size="a")


@case(words=["seed='x'"])
def autoattack_seed_text():
    from keras_rpat import autoattack

    autoattack.run_autoattack(model(), images(), labels(), seed="x")


@case(words=["'fast'", "standard"])
def autoattack_version_unknown():
    from keras_rpat import autoattack

    autoattack.run_autoattack(model(), images(), labels(), version="fast")


# -- callbacks, presets, datasets, optimizers -------------------------------------


@case(words=["x_test", "y_test", "4", "3"])
def robust_evaluation_length_mismatch():
    from keras_rpat import callbacks

    callbacks.RobustEvaluation(images(), labels(3))


@case(words=["every=0"])
def robust_evaluation_every_0():
    from keras_rpat import callbacks

    callbacks.RobustEvaluation(images(), labels(), every=0)


@case(words=["'pgd_att'", "pgd_at"])
def presets_unknown():
    from keras_rpat import presets

    presets.get("pgd_att")


@case(words=["n_train=0"])
def synthetic_n_train_0():
    import keras_rpat

    keras_rpat.datasets.load("synthetic", n_train=0, n_test=8, image_size=8)


@case(words=["image_size=0"])
def synthetic_image_size_0():
    import keras_rpat

    keras_rpat.datasets.load("synthetic", n_train=8, n_test=8, image_size=0)


@case(words=["batch_size=0"])
def train_sequence_batch_size_0():
    import keras_rpat

    keras_rpat.datasets.TrainSequence(images_uint8(), labels(), batch_size=0)


@case(words=["learning_rate=-0.1"])
def sgd_negative_learning_rate():
    import keras_rpat

    keras_rpat.optimizers.SGD(-0.1)


@case(expect="ok")
def trainer_save_load_round_trip():
    import keras
    import numpy as np

    t = trainer()
    path = os.path.join(tempfile.mkdtemp(), "trainer.keras")
    t.save(path)
    loaded = keras.saving.load_model(path)
    assert np.allclose(loaded.predict(images(), verbose=0), t.predict(images(), verbose=0), atol=1e-6)


@case(words=["pgd_steps"])
def robust_evaluation_unknown_argument():
    from keras_rpat import callbacks

    callbacks.RobustEvaluation(images(), labels(), pgd_steps=5)


# ---------------------------------------------------------------------------
# The worker and the driver
# ---------------------------------------------------------------------------

_INTERNAL = (KeyError, AttributeError, IndexError, RuntimeError, ZeroDivisionError, AssertionError, NotImplementedError)


def classify(spec, error, caught, output):
    """(class, detail) of one case's answer."""
    words = spec["words"]
    said = " ".join([str(w.message) for w in caught] + [output])
    if error is not None:
        message = f"{type(error).__name__}: {error}"
        if spec["expect"] == "ok":
            return "traceback" if not isinstance(error, (ValueError, TypeError)) else "unclear", message
        if isinstance(error, (ValueError, TypeError, FileNotFoundError, ImportError)) and all(
            w in str(error) for w in words
        ):
            return "clear", message
        internal = isinstance(error, _INTERNAL) or type(error).__module__.split(".")[0] in ("torch", "tensorflow")
        if internal or not isinstance(error, (ValueError, TypeError, OSError)):
            return "traceback", message
        return "unclear", message
    relevant = [str(w.message) for w in caught if all(word in str(w.message) for word in words)]
    if spec["expect"] == "ok":
        return ("fine", "accepted") if not caught else ("unclear", f"warned: {caught[0].message}")
    if relevant or (words and all(w in output for w in words)):
        return "clear", "warned: " + (relevant[0] if relevant else output.strip().splitlines()[-1])
    return "silent", "accepted" + (f" (said: {said.strip()[:120]})" if said.strip() else "")


def worker():
    """Reads case names from stdin, answers one JSON line per case on stdout."""
    real_stdout = sys.stdout
    for line in sys.stdin:
        name = line.strip()
        spec = CASES[name]
        error, output = None, io.StringIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                try:
                    spec["fn"]()
                except Exception as e:  # the answer being classified
                    error = e
                    if os.environ.get("CENSUS_DEBUG"):
                        traceback.print_exc(file=sys.__stderr__)
        caught = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
        kind, detail = classify(spec, error, caught, output.getvalue())
        real_stdout.write(json.dumps({"case": name, "class": kind, "detail": detail[:300]}) + "\n")
        real_stdout.flush()


def run(backend, names, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend, CENSUS_WORKER="1", TF_CPP_MIN_LOG_LEVEL="3")
    results, proc = {}, None
    pending = list(names)
    while pending:
        if proc is None:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        name = pending.pop(0)
        proc.stdin.write(name + "\n")
        proc.stdin.flush()
        # the first case also waits for the imports
        ready, _, _ = select.select([proc.stdout], [], [], timeout + (120 if not results else 0))
        line = proc.stdout.readline() if ready else ""
        if line:
            results[name] = json.loads(line)
            continue
        kind = "hang" if not ready else "traceback"
        results[name] = {"case": name, "class": kind, "detail": "timeout" if not ready else "the process died"}
        proc.kill()
        proc.wait()
        proc = None
    if proc is not None:
        proc.stdin.close()
        proc.wait()
    return results


GOOD = ("clear", "fine")


def table(rows, columns):
    widths = [max(len(str(r[i])) for r in rows + [columns]) for i in range(len(columns))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def counts(results):
    out = {}
    for r in results.values():
        out[r["class"]] = out.get(r["class"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(out.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=["torch", "tensorflow"])
    parser.add_argument("--timeout", type=float, default=120, help="seconds per case")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print both tables side by side")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.load(open(p)) for p in args.compare)
        rows = [
            (n, CASES[n]["expect"] if n in CASES else "?", before[n]["class"], after.get(n, {}).get("class", "-"))
            for n in before
        ]
        print(table(rows, ("case", "expect", "before", "after")))
        print(f"\nbefore: {counts(before)}\nafter:  {counts(after)}")
        return
    names = [n for n, s in CASES.items() if args.backend in s["backends"]]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    start = time.time()
    results = run(args.backend, names, args.timeout)
    rows = [(n, CASES[n]["expect"], r["class"], r["detail"].splitlines()[0][:110]) for n, r in results.items()]
    print(table(rows, ("case", "expect", "class", "answer")))
    print(f"\n{args.backend}: {len(results)} cases in {time.time() - start:.0f} s: {counts(results)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    if os.environ.get("CENSUS_WORKER"):
        worker()
    else:
        main()
