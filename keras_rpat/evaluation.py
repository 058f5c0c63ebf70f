"""Robustness evaluation: clean, PGD-20, AutoAttack, Mean / NRR, perception.

Everything here is `keras.ops` and NumPy, so it runs unchanged on every
supported backend. AutoAttack runs through `keras_rpat.autoattack`
(PyTorch; models trained under TensorFlow are evaluated in a PyTorch
subprocess automatically).

In a data-parallel job (torchrun) every rank calls these functions on the
whole test set and gets the one-process numbers: the clean, PGD and
perception batches are split into the ranks' rows (random starts drawn for
the whole batch, each rank keeping its rows) and gathered; AutoAttack deals
whole batches to the ranks (`keras_rpat.autoattack.cascade`).

The protocol (REFERENCE §4):

* **clean**: top-1 accuracy, inference mode.
* **PGD-20**: 20-step PGD with a random start, in the run's norm, budget and
  step (`step_size` defaults to `epsilon / 4`: 2/255 for L-inf 8/255, 32/255
  for L2 128/255), inference mode, one restart, the advertorch algorithm.
* **AutoAttack**: the standard version (APGD-CE, APGD-T, FAB-T, Square) in the
  run's norm.
* **Mean** = `(clean + robust) / 2` and **NRR** = `2 clean robust / (clean +
  robust)`, with `robust` the AutoAttack accuracy when it was run, else PGD-20.

All accuracies are in percent.
"""

import dataclasses
import datetime
import json
import math
import os
import subprocess
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_rpat import _checks
from keras_rpat import _io
from keras_rpat import attacks as attacks_lib
from keras_rpat import autoattack
from keras_rpat.autoattack import state as aa_state
from keras_rpat import backend as rpat_backend
from keras_rpat import config as rpat_config
from keras_rpat import fast_path
from keras_rpat import pgd_state
from keras_rpat._checks import infer_data_format
from keras_rpat._names import EVAL_BATCH_SIZE
from keras_rpat._names import EVALUATION_ATTACKS
from keras_rpat._names import PERTURBATIONS
from keras_rpat._names import PGD_EVAL_STEPS
from keras_rpat._names import parse_attacks
from keras_rpat._progress import Progress
from keras_rpat._version import __version__

__all__ = [
    "EVALUATION_ATTACKS",
    "EVAL_BATCH_SIZE",
    "PGD_EVAL_STEPS",
    "EvalResult",
    "PerceptionResult",
    "Progress",
    "autoattack_accuracy",
    "clean_accuracy",
    "evaluate",
    "infer_data_format",
    "mean_nrr",
    "parse_attacks",
    "perception_analysis",
    "pgd_accuracy",
    "provenance",
]

_AA_REFERENCE = (
    "Croce & Hein, Reliable evaluation of adversarial robustness with an "
    "ensemble of diverse parameter-free attacks, ICML 2020."
)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _check_logits(logits, atol=1e-5):
    """Warns if the model's outputs look like probabilities (AutoAttack's check)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.size == 0:
        return
    if logits.min() > -atol and logits.max() < 1.0 + atol and np.all(np.abs(logits.sum(-1) - 1.0) < atol):
        warnings.warn(
            "The model's outputs look like probabilities (each row is in [0, 1] and "
            "sums to 1): it seems a softmax is applied. keras_rpat attacks and "
            "AutoAttack expect logits; with probabilities the attack gradients are "
            "weak and the robust accuracy is overestimated. Remove the final "
            "softmax (e.g. `Dense(num_classes)` without `activation='softmax'`).",
            UserWarning,
            stacklevel=3,
        )


def _fast(model):
    """The model as evaluation runs it (lowered on torch; see fast_path.inference_model)."""
    return fast_path.inference_model(model, rpat_config.fast_path_default())


def _forward(model, xb):
    with rpat_backend.no_grad():
        logits = _fast(model)(ops.convert_to_tensor(xb, dtype=_checks.pixel_dtype(model)), training=False)
    return ops.convert_to_numpy(logits)


def _batches(n, batch_size):
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def percent(correct, n):
    """Percentage of True values of a per-sample correctness array."""
    return 100.0 * float(np.sum(correct)) / float(n)


def clean_correct(model, x, y, batch_size, check=True):
    """Per-sample correctness on benign inputs, inference mode, batch by batch."""
    correct = np.zeros(len(x), dtype=bool)
    logits_of = _logits_function(model)
    for i, sl in enumerate(_batches(len(x), batch_size)):
        # In a data-parallel job each rank (replica) takes its rows of the batch.
        (logits,) = rpat_backend.map_rows(logits_of, (x[sl],), owner=model)
        if i == 0 and check:
            _check_logits(logits)
        correct[sl] = np.argmax(logits, axis=-1) == y[sl]
    return correct


def _logits_function(model):
    """`x -> (logits,)` in inference mode, for `rpat_backend.map_rows`."""

    def logits_of(xb):
        with rpat_backend.no_grad():
            return (_fast(model)(ops.cast(xb, _checks.pixel_dtype(model)), training=False),)

    return logits_of


def _attack_function(model, attack, clean=False):
    """`(x, y) -> (logits of attack(x),)` (with the clean logits first if `clean`), for `map_rows`."""

    def attacked(xb, yb):
        xb = ops.cast(xb, _checks.pixel_dtype(model))
        x_adv = ops.stop_gradient(attack.perturb(_fast(model), xb, ops.cast(yb, "int32")))
        with rpat_backend.no_grad():
            logits = (_fast(model)(x_adv, training=False),)
            return ((_fast(model)(xb, training=False),) + logits) if clean else logits

    return attacked


def evaluation_pgd(norm, epsilon, step_size, num_steps, seed):
    """The evaluation PGD: advertorch style, random start, CE, inference mode (REFERENCE §4)."""
    return attacks_lib.PGD(
        norm=norm,
        epsilon=epsilon,
        step_size=step_size,
        num_steps=num_steps,
        random_start=True,
        style="advertorch",
        loss="ce",
        training=False,
        seed=seed,
    )


def attack_correct(model, attack, x, y, batch_size, progress=None, state_path=None):
    """Per-sample correctness on `attack(model, x, y)`, batch by batch (`progress`: a `Progress`).

    With `state_path` the results so far and the attack's random state are saved after every batch
    (`keras_rpat.pgd_state`), and a rerun with the same file resumes after the last finished batch.
    """
    correct = np.zeros(len(x), dtype=bool)
    state = None
    if state_path is not None:
        state = pgd_state.StateFile(state_path, pgd_state.evaluation_key(attack, batch_size, model, x, y))
        state.restore(correct, attack.seed_generator)
    attacked = _attack_function(model, attack)
    for sl in _batches(len(x), batch_size):
        if state is not None and sl.stop <= state.done:
            continue
        (logits,) = rpat_backend.map_rows(attacked, (x[sl], y[sl]), model, (attack.seed_generator,))
        correct[sl] = np.argmax(logits, axis=-1) == y[sl]
        if state is not None:
            state.save(sl.stop, correct, attack.seed_generator)
        if progress is not None:
            progress.update(sl.stop, float(np.mean(correct[: sl.stop])))
    return correct


# ---------------------------------------------------------------------------
# Accuracies and summary metrics
# ---------------------------------------------------------------------------


def clean_accuracy(model, x, y, batch_size=EVAL_BATCH_SIZE):
    """Top-1 accuracy (percent) of a model on benign inputs, inference mode.

    Args:
        model: a Keras model mapping images in [0, 1] to logits (an
            `RPATTrainer` is evaluated through its `evaluation_model`).
        x: images in the model's layout, float in [0, 1].
        y: integer labels `(N,)` or `(N, 1)`.
        batch_size: evaluation batch size.

    Returns:
        The accuracy in percent, a Python float.

    Example:

    ```python
    acc = keras_rpat.evaluation.clean_accuracy(model, x_test, y_test)
    ```
    """
    model = _checks.evaluation_model(model)
    x, y, _, _ = _checks.check_data(model, x, y)
    return percent(clean_correct(model, x, y, batch_size), len(x))


def pgd_accuracy(
    model,
    x,
    y,
    norm="linf",
    epsilon=8 / 255,
    step_size=None,
    num_steps=PGD_EVAL_STEPS,
    batch_size=EVAL_BATCH_SIZE,
    seed=0,
    state_path=None,
):
    """Robust accuracy (percent) under PGD with a random start (PGD-20).

    The Bench evaluation attack (advertorch `PGDAttack`, REFERENCE §2.1 and
    §4): uniform random start in the ball, `num_steps` steps of size
    `step_size` on the batch-mean cross-entropy, projection and [0, 1] clip
    after every step, one restart, BatchNorm in inference mode.

    Args:
        model: a Keras model (or an `RPATTrainer`).
        x: images, float in [0, 1].
        y: integer labels.
        norm: `"linf"` or `"l2"`.
        epsilon: budget (`8/255` or `"8/255"`).
        step_size: step; `None` means `epsilon / 4` (2/255 for L-inf 8/255,
            32/255 for L2 128/255, the paper's values).
        num_steps: number of steps (20).
        batch_size: evaluation batch size.
        seed: seed of the random start.
        state_path: JSON file recording the finished batches (and the random
            state); an interrupted evaluation restarted with the same file
            resumes after its last finished batch, with the same result.

    Returns:
        The robust accuracy in percent.

    Example:

    ```python
    rob = keras_rpat.evaluation.pgd_accuracy(model, x_test, y_test, "linf", 8/255)
    ```

    References:
        - Madry et al., Towards Deep Learning Models Resistant to Adversarial
          Attacks, ICLR 2018.
    """
    model = _checks.evaluation_model(model)
    attack = evaluation_pgd(norm, epsilon, step_size, num_steps, seed)
    x, y, _, _ = _checks.check_data(model, x, y)
    _check_logits(_forward(model, x[: min(len(x), 64)]))
    return percent(attack_correct(model, attack, x, y, batch_size, state_path=state_path), len(x))


def autoattack_accuracy(
    model,
    x,
    y,
    norm="linf",
    epsilon=8 / 255,
    version="standard",
    attacks_to_run=None,
    batch_size=autoattack.AA_BATCH_SIZE,
    state_path=None,
    seed=0,
    verbose=False,
    options=None,
):
    """Robust accuracy (percent) under AutoAttack.

    Runs `pyautoattack` on the model through
    `keras_rpat.autoattack.run_autoattack` (a PyTorch subprocess when
    the active backend is not torch).

    Args:
        model: a Keras model (or an `RPATTrainer`).
        x: images in the model's layout, float in [0, 1].
        y: integer labels.
        norm: `"linf"` or `"l2"`.
        epsilon: budget.
        version: `"standard"` (APGD-CE, APGD-T, FAB-T, Square), `"plus"`,
            `"rand"` or `"custom"` (then pass `attacks_to_run`).
        attacks_to_run: for `version="custom"`: a list of `"apgd-ce"`,
            `"apgd-t"`, `"fab-t"`, `"square"`, `"apgd-dlr"`, `"fab"`.
        batch_size: AutoAttack batch size (250 in the reference).
        state_path: JSON file recording progress; an interrupted evaluation
            restarted with the same file resumes where it stopped.
        seed: AutoAttack seed.
        verbose: forward AutoAttack's progress output.
        options: optional per-attack settings, e.g.
            `{"apgd": {"n_iter": 10}, "square": {"n_queries": 100}}`.

    Returns:
        The robust accuracy in percent.

    References:
        - Croce & Hein, Reliable evaluation of adversarial robustness with an
          ensemble of diverse parameter-free attacks, ICML 2020.
    """
    model = _checks.evaluation_model(model)
    x, y, _, _ = _checks.check_data(model, x, y)
    _check_logits(_forward(model, x[: min(len(x), 64)]))
    accuracy, _ = autoattack.run_autoattack(
        model,
        x,
        y,
        norm=norm,
        epsilon=epsilon,
        version=version,
        attacks_to_run=attacks_to_run,
        batch_size=batch_size,
        state_path=state_path,
        seed=seed,
        verbose=verbose,
        options=options,
        return_adversarial=False,
    )
    return accuracy


def mean_nrr(clean, robust):
    """Returns `(Mean, NRR)` of a clean and a robust accuracy (percent).

    `Mean = (clean + robust) / 2`; `NRR = 2 clean robust / (clean + robust)`
    (the harmonic mean, "natural-robust ratio"; 0 when both are 0). The paper
    computes both from the best-checkpoint clean and AutoAttack accuracies.

    Args:
        clean: clean accuracy in percent.
        robust: robust accuracy in percent.

    Returns:
        `(mean, nrr)` in percent.

    Example:

    >>> keras_rpat.evaluation.mean_nrr(82.92, 46.74)  # Table 1, PGD-AT, CIFAR-10
    (64.83, 59.78...)
    """
    values = []
    for name, value in (("clean", clean), ("robust", robust)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a number (percent). Received: {name}={value!r}") from None
        if not math.isfinite(value) or value < 0 or value > 100:
            raise ValueError(f"`{name}` must be an accuracy in percent, in [0, 100]. Received: {name}={value:g}")
        values.append(value)
    c, r = values
    mean = (c + r) / 2.0
    nrr = 0.0 if c + r == 0 else 2.0 * c * r / (c + r)
    return mean, nrr


# ---------------------------------------------------------------------------
# Provenance and atomic files
# ---------------------------------------------------------------------------


def _package_version(name):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


def _git_sha():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def _device_of(model=None):
    if model is not None:
        try:
            weights = model.weights
            if weights:
                return str(weights[0].value.device)
        except Exception:
            pass
    try:
        devices = keras.distribution.list_devices()
        return str(devices[0]) if devices else None
    except Exception:
        return None


def provenance(model=None, elapsed=None, batch_size=None, sync_batchnorm=None):
    """Versions, backend, device, data-parallel engine, UTC time and git SHA, for results files.

    Args:
        model: optional model, to report the device its weights live on.
        elapsed: optional wall time in seconds.
        batch_size: optional global training batch, recorded with its
            per-replica share (`per_replica_batch`).
        sync_batchnorm: optional, whether BatchNorm took the global batch's
            statistics (recorded in a data-parallel job).

    Returns:
        A JSON-serialisable dict. `engine` is `"single-process"`, or the
        data-parallel job's: `"torch.distributed"` (with `process_group`,
        `"gloo"` or `"nccl"`), `"tf.distribute.MirroredStrategy"` or
        `"tf.distribute.MultiWorkerMirroredStrategy"`; `world_size` counts its
        ranks (torch) or replicas in sync (tensorflow).
    """
    info = {
        "keras_rpat": __version__,
        "keras": keras.__version__,
        "torch": _package_version("torch"),
        "tensorflow": _package_version("tensorflow") or _package_version("tensorflow-cpu"),
        "pyautoattack": _package_version("pyautoattack"),
        "numpy": np.__version__,
        "backend": keras.config.backend(),
        "device": _device_of(model),
        **_data_parallel(model, batch_size, sync_batchnorm),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
    }
    if elapsed is not None:
        info["elapsed_s"] = round(float(elapsed), 3)
    return info


_ENGINES = {
    "mirrored": "tf.distribute.MirroredStrategy",
    "multiworker": "tf.distribute.MultiWorkerMirroredStrategy",
}


def _data_parallel(model, batch_size, sync_batchnorm):
    """The `engine`, `world_size` (and `per_replica_batch`, `sync_batchnorm`) of `provenance`."""
    job = rpat_backend.distributed_context(model)
    info = {"engine": "single-process", "world_size": 1}
    if job is not None:
        info = {"engine": _ENGINES.get(job.backend, "torch.distributed"), "world_size": int(job.world_size)}
        if info["engine"] == "torch.distributed":
            info["process_group"] = job.backend
    if batch_size is not None:
        info["per_replica_batch"] = int(batch_size) // info["world_size"]
    if sync_batchnorm is not None and job is not None:
        info["sync_batchnorm"] = bool(sync_batchnorm)
    return info


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


class _ResultMixin:
    def to_dict(self):
        """Returns the result as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def to_json(self, indent=2):
        """Returns the result as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path):
        """Writes the result as JSON, atomically (temporary file + `os.replace`)."""
        _io.atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data):
        """Builds a result from `to_dict()` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path):
        """Reads a result written by `save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


@dataclasses.dataclass
class EvalResult(_ResultMixin):
    """The result of `keras_rpat.evaluation.evaluate`.

    Accuracies are in percent; a metric that was not computed is `None`.
    `mean` and `nrr` are computed from `clean` and the strongest robust
    accuracy available (AutoAttack if run, else PGD-20); `robust_source` says
    which.

    Attributes:
        clean: clean accuracy.
        pgd20: PGD-`num_steps` accuracy.
        autoattack: AutoAttack accuracy.
        mean: `(clean + robust) / 2`.
        nrr: `2 clean robust / (clean + robust)`.
        norm, epsilon, step_size, num_steps: the threat model (`step_size`
            and `num_steps` are the PGD ones).
        n: number of evaluated examples.
        attacks: the evaluations run, e.g. `["clean", "pgd20"]`.
        autoattack_version: AutoAttack version (`"standard"`, `"custom"`...).
        autoattack_attacks: the AutoAttack attacks run.
        robust_source: `"autoattack"`, `"pgd20"` or `None`.
        provenance: versions, backend, device, UTC time, git SHA, wall time.
    """

    clean: float = None
    pgd20: float = None
    autoattack: float = None
    mean: float = None
    nrr: float = None
    norm: str = "linf"
    epsilon: float = 8 / 255
    step_size: float = None
    num_steps: int = PGD_EVAL_STEPS
    n: int = 0
    attacks: list = dataclasses.field(default_factory=list)
    autoattack_version: str = None
    autoattack_attacks: list = None
    robust_source: str = None
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        robust, source = None, None
        if self.autoattack is not None:
            robust, source = self.autoattack, "autoattack"
        elif self.pgd20 is not None:
            robust, source = self.pgd20, "pgd20"
        if self.robust_source is None:
            self.robust_source = source
        if self.clean is not None and robust is not None and (self.mean is None or self.nrr is None):
            self.mean, self.nrr = mean_nrr(self.clean, robust)

    def summary(self):
        """A one-line human-readable summary."""
        parts = [f"n={self.n}", f"{self.norm} eps={self.epsilon * 255:.4g}/255"]
        for name in ("clean", "pgd20", "autoattack", "mean", "nrr"):
            value = getattr(self, name)
            if value is not None:
                label = {"pgd20": f"PGD-{self.num_steps}", "autoattack": "AA"}.get(name, name.capitalize())
                if name == "nrr":
                    label = "NRR"
                parts.append(f"{label} {value:.2f}")
        return ", ".join(parts)


def evaluate(
    model,
    x,
    y,
    attacks=("clean", "pgd20"),
    norm="linf",
    epsilon=8 / 255,
    step_size=None,
    num_steps=PGD_EVAL_STEPS,
    n=None,
    batch_size=EVAL_BATCH_SIZE,
    seed=0,
    aa_version="standard",
    aa_attacks=None,
    aa_batch_size=autoattack.AA_BATCH_SIZE,
    aa_state_path=None,
    aa_options=None,
    verbose=False,
    pgd_state_path=None,
):
    """Evaluates a model: clean, PGD-20 and/or AutoAttack, Mean and NRR.

    Args:
        model: a Keras model mapping images in [0, 1] to logits, or an
            `RPATTrainer` (evaluated through its `evaluation_model`, the
            weight-averaged model for ReBAT / RPAT++).
        x: test images in the model's layout, float in [0, 1].
        y: integer test labels.
        attacks: any of `"clean"`, `"pgd20"`, `"autoattack"` (a list or a
            comma-separated string). The clean accuracy is always computed
            (Mean and NRR need it).
        norm: `"linf"` or `"l2"` (the run's threat model).
        epsilon: budget (`8/255`, L2 `128/255`).
        step_size: PGD step; `None` is `epsilon / 4`.
        num_steps: PGD steps (20).
        n: evaluate on `n` evenly strided test examples (test sets may be
            sorted by class); `None` uses all.
        batch_size: batch size of the clean and PGD evaluations.
        seed: seed of the PGD random start and of AutoAttack.
        aa_version, aa_attacks, aa_batch_size, aa_state_path, aa_options:
            AutoAttack's `version`, `attacks_to_run`, `batch_size`,
            `state_path` and `options` (see `autoattack_accuracy`).
        verbose: print PGD's progress (elapsed, ETA, robust accuracy so
            far, one line per batch when not on a terminal) and forward
            AutoAttack's progress output.
        pgd_state_path: JSON file recording PGD's finished batches (see
            `pgd_accuracy`'s `state_path`): a killed evaluation rerun with it
            (and `aa_state_path`) loses at most one batch of each.

    Returns:
        An `EvalResult`.

    Example:

    ```python
    result = keras_rpat.evaluation.evaluate(
        trainer, ds.x_test / 255.0, ds.y_test,
        attacks=("clean", "pgd20", "autoattack"), norm="linf", epsilon=8/255,
    )
    result.save("result.json")
    ```

    References:
        - Croce & Hein, Reliable evaluation of adversarial robustness with an
          ensemble of diverse parameter-free attacks, ICML 2020.
    """
    start = time.time()
    names = parse_attacks(attacks)
    if "clean" not in names:
        names.insert(0, "clean")
    model = _checks.evaluation_model(model)
    norm = _checks.canonical_norm(norm)
    epsilon = _checks.check_budget(epsilon, "epsilon", norm)
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    if "pgd20" in names:
        _checks.check_positive_int(num_steps, "num_steps")
    if "autoattack" in names:
        aa_batch_size = _checks.check_positive_int(aa_batch_size, "aa_batch_size")
        autoattack.resolve_attacks(aa_version, aa_attacks)
        aa_options = autoattack.check_options(aa_options)
        aa_state.check_state_file(aa_state_path)
    attack = evaluation_pgd(norm, epsilon, step_size, num_steps, seed)
    x, y, _, fmt = _checks.check_data(model, x, y)
    idx = _checks.strided_indices(len(x), n)
    if idx is not None:
        x, y = x[idx], y[idx]
    correct = clean_correct(model, x, y, batch_size)
    result = {"clean": percent(correct, len(x))}
    if "pgd20" in names:
        job = rpat_backend.distributed_context()
        shown = verbose and (job is None or job.is_primary)  # one progress line in a data-parallel job
        progress = Progress(f"PGD-{attack.num_steps}", len(x)) if shown else None
        correct = attack_correct(model, attack, x, y, batch_size, progress, state_path=pgd_state_path)
        result["pgd20"] = percent(correct, len(x))
    aa_attack_list = None
    if "autoattack" in names:
        aa_attack_list = autoattack.resolve_attacks(aa_version, aa_attacks)
        result["autoattack"], _ = autoattack.run_autoattack(
            model,
            x,
            y,
            norm=norm,
            epsilon=epsilon,
            version=aa_version,
            attacks_to_run=aa_attacks,
            batch_size=aa_batch_size,
            state_path=aa_state_path,
            seed=seed,
            verbose=verbose,
            options=aa_options,
            data_format=fmt,
            return_adversarial=False,
        )
    return EvalResult(
        clean=result["clean"],
        pgd20=result.get("pgd20"),
        autoattack=result.get("autoattack"),
        norm=norm,
        epsilon=epsilon,
        step_size=attack.step_size if "pgd20" in names else None,
        num_steps=attack.num_steps if "pgd20" in names else None,
        n=int(len(x)),
        attacks=names,
        autoattack_version=aa_version if "autoattack" in names else None,
        autoattack_attacks=aa_attack_list,
        provenance=provenance(model, elapsed=time.time() - start),
    )


# ---------------------------------------------------------------------------
# Perception analysis (Figure 2 / Figure 5)
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PerceptionResult(_ResultMixin):
    """The result of `keras_rpat.evaluation.perception_analysis`.

    `mse_*` are `MSE(z(x), z(x_pert))` averaged over all `n_subset * C` logit
    elements of a subset; a subset with no sample gives `None` (never NaN).

    Attributes:
        perturbation: `"random"`, `"pgd20"` or the attack's class name.
        epsilon, step_size, num_steps: the perturbation (`step_size` and
            `num_steps` are `None` for random noise).
        n: number of samples; `num_classes`: `C`.
        n_success: perturbed input still classified correctly.
        n_failure: perturbed input misclassified.
        clean_accuracy, perturbed_accuracy: percent.
        mse_success, mse_failure, mse_all: logit MSE per subset.
        averaging: `"global"` or `"per_batch"`.
        provenance: versions, backend, device, time.
    """

    perturbation: str = "random"
    epsilon: float = 8 / 255
    step_size: float = None
    num_steps: int = None
    n: int = 0
    num_classes: int = None
    n_success: int = 0
    n_failure: int = 0
    clean_accuracy: float = None
    perturbed_accuracy: float = None
    mse_success: float = None
    mse_failure: float = None
    mse_all: float = None
    averaging: str = "global"
    provenance: dict = dataclasses.field(default_factory=dict)


def perception_analysis(
    model,
    x,
    y,
    perturbation="random",
    epsilon=8 / 255,
    step_size=2 / 255,
    num_steps=PGD_EVAL_STEPS,
    batch_size=EVAL_BATCH_SIZE,
    seed=0,
    averaging="global",
):
    """Logit MSE between benign and perturbed inputs, split by outcome.

    The proof-of-concept analysis of the paper's Figures 2 and 5 (REFERENCE
    §7.6): perturb every test input (uniform noise `U[-eps, eps]` clipped to
    [0, 1], or PGD-20 with a random start in inference mode), split the
    samples by whether the perturbed input is still classified correctly
    ("success") or not ("failure"), and report `MSE(z(x), z(x_pert))` for each
    subset, plus the clean and perturbed accuracies. The expected pattern:
    failure MSE > success MSE for clean and noise-trained models, failure <
    success for PGD-AT.

    Args:
        model: a Keras model (or an `RPATTrainer`).
        x: images, float in [0, 1].
        y: integer labels.
        perturbation: `"random"`, `"pgd20"`, or any `keras_rpat.attacks.Attack`
            (then `epsilon`, `step_size` and `num_steps` are ignored).
        epsilon: L-inf budget of the perturbation.
        step_size: PGD step (ignored for `"random"`).
        num_steps: PGD steps (ignored for `"random"`).
        batch_size: batch size.
        seed: seed of the noise / PGD start.
        averaging: `"global"` (default, REFERENCE §8 #30): the mean over all
            elements of a subset; `"per_batch"`: the reference code's average
            of per-batch subset means weighted by the full batch size (then a
            subset that is empty in some batch gives `None`, where the
            reference code gives NaN).

    Returns:
        A `PerceptionResult`.

    Example:

    ```python
    res = keras_rpat.evaluation.perception_analysis(model, x_test, y_test, "pgd20")
    print(res.mse_success, res.mse_failure)
    ```

    References:
        - Wang & Liu, Failure Cases Are Better Learned But Boundary Says Sorry,
          ICCV 2025.
    """
    start = time.time()
    if not isinstance(perturbation, attacks_lib.Attack) and perturbation not in PERTURBATIONS:
        raise ValueError(
            f"Unknown `perturbation`: {perturbation!r}. Expected one of {PERTURBATIONS} or a keras_rpat.attacks.Attack."
        )
    if averaging not in ("global", "per_batch"):
        raise ValueError(f"`averaging` must be 'global' or 'per_batch'. Received: averaging={averaging!r}")
    model = _checks.evaluation_model(model)
    epsilon = attacks_lib.parse_epsilon(epsilon)
    if isinstance(perturbation, attacks_lib.Attack):
        attack = perturbation
        perturbation = type(attack).__name__
        epsilon = getattr(attack, "epsilon", None)
        step_size = getattr(attack, "step_size", None)
        num_steps = getattr(attack, "num_steps", None)
    elif perturbation == "random":
        attack = attacks_lib.RandomNoise(epsilon=epsilon, seed=seed)
        step_size, num_steps = None, None
    else:
        attack = evaluation_pgd("linf", epsilon, step_size, num_steps, seed)
        step_size, num_steps = attack.step_size, attack.num_steps
    x, y, num_classes, _ = _checks.check_data(model, x, y)

    n = len(x)
    clean_ok = np.zeros(n, dtype=bool)
    pert_ok = np.zeros(n, dtype=bool)
    sq_err = np.zeros(n, dtype=np.float64)  # per-sample sum over classes
    batch_ids = np.zeros(n, dtype=np.int64)
    attacked = _attack_function(model, attack, clean=True)
    for b, sl in enumerate(_batches(n, batch_size)):
        # A data-parallel job splits the batch.
        z, z_pert = rpat_backend.map_rows(attacked, (x[sl], y[sl]), model, (attack.seed_generator,))
        if b == 0:
            _check_logits(z)
        clean_ok[sl] = np.argmax(z, -1) == y[sl]
        pert_ok[sl] = np.argmax(z_pert, -1) == y[sl]
        sq_err[sl] = np.sum((z.astype(np.float64) - z_pert.astype(np.float64)) ** 2, axis=-1)
        batch_ids[sl] = b

    def subset_mse(mask):
        if averaging == "global":
            count = int(mask.sum())
            return None if count == 0 else float(sq_err[mask].sum() / (count * num_classes))
        total, weight = 0.0, 0
        for b in np.unique(batch_ids):
            in_batch = batch_ids == b
            sel = mask & in_batch
            count = int(sel.sum())
            if count == 0:
                return None
            total += float(sq_err[sel].sum() / (count * num_classes)) * int(in_batch.sum())
            weight += int(in_batch.sum())
        return total / weight

    return PerceptionResult(
        perturbation=perturbation,
        epsilon=epsilon,
        step_size=step_size,
        num_steps=num_steps,
        n=int(n),
        num_classes=int(num_classes),
        n_success=int(pert_ok.sum()),
        n_failure=int(n - pert_ok.sum()),
        clean_accuracy=percent(clean_ok, n),
        perturbed_accuracy=percent(pert_ok, n),
        mse_success=subset_mse(pert_ok),
        mse_failure=subset_mse(~pert_ok),
        mse_all=subset_mse(np.ones(n, dtype=bool)),
        averaging=averaging,
        provenance=provenance(model, elapsed=time.time() - start),
    )
