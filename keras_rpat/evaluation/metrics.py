"""Robust accuracy: clean, PGD-20, AutoAttack, Mean / NRR, and `evaluate` that runs them.

Everything here is `keras.ops` and NumPy, so it runs unchanged on every
supported backend. AutoAttack runs through `keras_rpat.autoattack`
(PyTorch; models trained under TensorFlow are evaluated in a PyTorch
subprocess automatically).

In a data-parallel job (torchrun) every rank calls these functions on the
whole test set and gets the one-process numbers: the clean, PGD and
perception batches are split into the ranks' rows (random starts drawn for
the whole batch, each rank keeping its rows) and gathered; AutoAttack deals
whole batches to the ranks (`keras_rpat.autoattack.cascade`).

The protocol (docs/algorithms.md#evaluation-protocol):

* **clean**: top-1 accuracy, inference mode.
* **PGD-20**: 20-step PGD with a random start, in the run's norm, budget and
  step (`step_size` defaults to `epsilon / 4`: 2/255 for L-inf 8/255, 32/255
  for L2 128/255), inference mode, one restart, the advertorch algorithm.
  Beyond the protocol, `cw20` is the same PGD on the CW margin loss
  (`attacks.cw_loss`) and `pgd20x5` (`cw20x5`) its worst case over 5 random
  starts per image (`attacks.RestartedPGD`).
* **AutoAttack**: the standard version (APGD-CE, APGD-T, FAB-T, Square) in the
  run's norm.
* **Mean** = `(clean + robust) / 2` and **NRR** = `2 clean robust / (clean +
  robust)`, with `robust` the AutoAttack accuracy when it was run, else the
  lowest PGD accuracy (PGD-20, CW-20, ...).

All accuracies are in percent.
"""

import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np
from keras import ops

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import _resume
from keras_rpat import attacks as attacks_lib
from keras_rpat import autoattack
from keras_rpat import backend as rpat_backend
from keras_rpat import config as rpat_config
from keras_rpat import fast_path
from keras_rpat._names import EVAL_BATCH_SIZE
from keras_rpat._names import PGD_EVAL_STEPS
from keras_rpat._names import parse_attacks
from keras_rpat._names import pgd_evaluation
from keras_rpat._names import pgd_label
from keras_rpat._progress import Progress
from keras_rpat.evaluation.provenance import JSONResult
from keras_rpat.evaluation.provenance import provenance


def check_logits(logits, atol=1e-5):
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
        logits = _fast(model)(ops.convert_to_tensor(xb, dtype=_data_checks.pixel_dtype(model)), training=False)
    return ops.convert_to_numpy(logits)


def batches(n, batch_size):
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
    for i, sl in enumerate(batches(len(x), batch_size)):
        # In a data-parallel job each rank (replica) takes its rows of the batch.
        (logits,) = rpat_backend.map_rows(logits_of, (x[sl],), owner=model)
        if i == 0 and check:
            check_logits(logits)
        correct[sl] = np.argmax(logits, axis=-1) == y[sl]
    return correct


def _logits_function(model):
    """`x -> (logits,)` in inference mode, for `rpat_backend.map_rows`."""

    def logits_of(xb):
        with rpat_backend.no_grad():
            return (_fast(model)(ops.cast(xb, _data_checks.pixel_dtype(model)), training=False),)

    logits_of.jit_key = ("logits",)  # on jax: one compiled function per model (see `attack_function`)
    return logits_of


def attack_function(model, attack, clean=False):
    """`(x, y) -> (logits of attack(x),)` (with the clean logits first if `clean`), for `map_rows`."""

    def attacked(xb, yb):
        xb = ops.cast(xb, _data_checks.pixel_dtype(model))
        x_adv = ops.stop_gradient(attack.perturb(_fast(model), xb, ops.cast(yb, "int32")))
        with rpat_backend.no_grad():
            logits = (_fast(model)(x_adv, training=False),)
            return ((_fast(model)(xb, training=False),) + logits) if clean else logits

    # On jax `map_rows` compiles `attacked`, whose Python then runs once per batch shape: keras_rpat's attacks
    # are functions of their tensors and SeedGenerator (their settings in the key: one compiled function for
    # all evaluations with them); another `Attack` may keep Python state, so runs eagerly.
    attacked.jit_compile = type(attack).__module__ == attacks_lib.__name__ and "perturb" not in vars(attack)
    settings = {k: v for k, v in attack.get_config().items() if k != "seed"}  # the seed: the generator's value
    attacked.jit_key = ("attack", clean, type(attack).__name__, json.dumps(settings, sort_keys=True, default=repr))
    return attacked


def evaluation_pgd(norm, epsilon, step_size, num_steps, seed, loss="ce", restarts=1):
    """The evaluation PGD: advertorch style, random start, inference mode (docs/algorithms.md#evaluation-protocol);
    CE (`loss="cw"`: the CW margin), one random start (`restarts=R`: `attacks.RestartedPGD`)."""
    if loss not in ("ce", "cw"):
        raise ValueError(f"The evaluation PGD's `loss` is 'ce' or 'cw' (the CW margin). Received: loss={loss!r}")
    settings = dict(norm=norm, epsilon=epsilon, step_size=step_size, num_steps=num_steps, random_start=True)
    settings.update(style="advertorch", loss=loss, training=False, seed=seed)
    if _checks.check_positive_int(restarts, "restarts") > 1:
        return attacks_lib.RestartedPGD(**settings, restarts=restarts)
    return attacks_lib.PGD(**settings)


def pgd_state_file(path, name):
    """The state file of the PGD evaluation `name` of `evaluate(..., pgd_state_path=path)`: `path` for `"pgd20"`,
    the file beside it with `.<name>` before the extension for the others (`pgd_state.json` -> `pgd_state.cw20.json`)."""
    if path is None or name == "pgd20":
        return path
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.{name}{ext}"


def attack_correct(model, attack, x, y, batch_size, progress=None, state_path=None):
    """Per-sample correctness on `attack(model, x, y)`, batch by batch (`progress`: a `Progress`).

    With `state_path` the results so far and the attack's random state are saved after every batch
    (`keras_rpat._resume`), and a rerun with the same file resumes after the last finished batch.
    """
    correct = np.zeros(len(x), dtype=bool)
    file = None
    if state_path is not None:
        file = _resume.StateFile(state_path, _resume.PGD, _resume.pgd_key(attack, batch_size, model, x, y))
        # In a data-parallel job each rank keeps its own file; all resume from rank 0's
        # (ranks killed between different batches would otherwise attack different rows).
        file.state = rpat_backend.from_primary(file.state)
        correct[: file.state["done"]] = file.state["correct"]
        if file.state["done"]:
            rpat_backend.set_generator_state(attack.seed_generator, file.state["random_state"])
    attacked = attack_function(model, attack)
    for sl in batches(len(x), batch_size):
        if file is not None and sl.stop <= file.state["done"]:
            continue
        (logits,) = rpat_backend.map_rows(attacked, (x[sl], y[sl]), model, (attack.seed_generator,))
        correct[sl] = np.argmax(logits, axis=-1) == y[sl]
        if file is not None:
            random_state = rpat_backend.get_generator_state(attack.seed_generator)
            file.state.update(done=sl.stop, correct=correct[: sl.stop].tolist(), random_state=random_state)
            file.save()
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
    model = _data_checks.evaluation_model(model)
    x, y, _, _ = _data_checks.check_data(model, x, y)
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
    loss="ce",
    restarts=1,
):
    """Robust accuracy (percent) under PGD with a random start (PGD-20).

    The Bench evaluation attack (advertorch `PGDAttack`, docs/algorithms.md#attacks,
    #evaluation-protocol): uniform random start in the ball, `num_steps` steps of size
    `step_size` on the batch-mean cross-entropy, projection and [0, 1] clip
    after every step, one restart, BatchNorm in inference mode. `loss="cw"`
    maximises the CW margin instead (PGD-CW); `restarts=R` counts an image as
    robust only if it survives R random starts (`attacks.RestartedPGD`).

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
        loss: `"ce"` (cross-entropy) or `"cw"` (the CW margin loss).
        restarts: random starts per image (the worst case counts).

    Returns:
        The robust accuracy in percent.

    Example:

    ```python
    rob = keras_rpat.evaluation.pgd_accuracy(model, x_test, y_test, "linf", 8/255)
    cw_x5 = keras_rpat.evaluation.pgd_accuracy(model, x_test, y_test, "linf", 8/255, loss="cw", restarts=5)
    ```

    References:
        - Madry et al., Towards Deep Learning Models Resistant to Adversarial
          Attacks, ICLR 2018.
    """
    model = _data_checks.evaluation_model(model)
    attack = evaluation_pgd(norm, epsilon, step_size, num_steps, seed, loss, restarts)
    x, y, _, _ = _data_checks.check_data(model, x, y)
    check_logits(_forward(model, x[: min(len(x), 64)]))
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
    model = _data_checks.evaluation_model(model)
    x, y, _, _ = _data_checks.check_data(model, x, y)
    check_logits(_forward(model, x[: min(len(x), 64)]))
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
# Results
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResult(JSONResult):
    """The result of `keras_rpat.evaluation.evaluate`.

    Accuracies are in percent; a metric that was not computed is `None`.
    `mean` and `nrr` are computed from `clean` and the strongest robust
    accuracy available (AutoAttack if run, else the lowest PGD accuracy);
    `robust_source` says which.

    Attributes:
        clean: clean accuracy.
        pgd20: PGD-`num_steps` accuracy.
        autoattack: AutoAttack accuracy.
        pgd_variants: the other PGD evaluations (`cw20`, `pgd20x5`, `pgd50`...):
            `{name: {"accuracy", "loss", "num_steps", "restarts"}}`.
        mean: `(clean + robust) / 2`.
        nrr: `2 clean robust / (clean + robust)`.
        norm, epsilon, step_size, num_steps: the threat model (`step_size`
            and `num_steps` are the PGD ones).
        n: number of evaluated examples.
        attacks: the evaluations run, e.g. `["clean", "pgd20"]`.
        autoattack_version: AutoAttack version (`"standard"`, `"custom"`...).
        autoattack_attacks: the AutoAttack attacks run.
        robust_source: `"autoattack"`, `"pgd20"`, a `pgd_variants` name or `None`.
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
    pgd_variants: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        robust, source = None, None
        pgd = [("pgd20", self.pgd20)] if self.pgd20 is not None else []
        pgd += [(name, v["accuracy"]) for name, v in (self.pgd_variants or {}).items()]
        if self.autoattack is not None:
            robust, source = self.autoattack, "autoattack"
        elif pgd:
            source, robust = min(pgd, key=lambda item: item[1])
        if self.robust_source is None:
            self.robust_source = source
        if self.clean is not None and robust is not None and (self.mean is None or self.nrr is None):
            self.mean, self.nrr = mean_nrr(self.clean, robust)

    def summary(self):
        """A one-line human-readable summary."""
        parts = [f"n={self.n}", f"{self.norm} eps={self.epsilon * 255:.4g}/255"]
        for name in ("clean", "pgd20", "variants", "autoattack", "mean", "nrr"):
            if name == "variants":
                for v in (self.pgd_variants or {}).values():
                    parts.append(f"{pgd_label(v['loss'], v['num_steps'], v['restarts'])} {v['accuracy']:.2f}")
                continue
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
    num_steps=None,
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
        attacks: any of `"clean"`, `"pgd20"`, `"autoattack"` and the PGD
            variants `"cwN"` (N steps on the CW margin loss), `"pgdNxR"` and
            `"cwNxR"` (R random starts, the worst case per image), `"pgdN"`
            (a list or a comma-separated string: `"clean,pgd20,cw20,pgd20x5"`).
            The clean accuracy is always computed (Mean and NRR need it).
        norm: `"linf"` or `"l2"` (the run's threat model).
        epsilon: budget (`8/255`, L2 `128/255`).
        step_size: PGD step; `None` is `epsilon / 4`.
        num_steps: the steps of every PGD evaluation; `None`: the number in
            its name (`pgd20`, `cw20`: 20). The names stay as given.
        n: evaluate on `n` evenly strided test examples (test sets may be
            sorted by class); `None` uses all.
        batch_size: batch size of the clean and PGD evaluations.
        seed: seed of the PGD random starts (each PGD evaluation draws its own
            from it) and of AutoAttack.
        aa_version, aa_attacks, aa_batch_size, aa_state_path, aa_options:
            AutoAttack's `version`, `attacks_to_run`, `batch_size`,
            `state_path` and `options` (see `autoattack_accuracy`).
        verbose: print PGD's progress (elapsed, ETA, robust accuracy so
            far, one line per batch when not on a terminal) and forward
            AutoAttack's progress output.
        pgd_state_path: JSON file recording PGD's finished batches (see
            `pgd_accuracy`'s `state_path`): a killed evaluation rerun with it
            (and `aa_state_path`) loses at most one batch of each. It is
            `pgd20`'s; another PGD evaluation keeps its own beside it
            (`pgd_state.json` -> `pgd_state.cw20.json`: `pgd_state_file`).

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
    model = _data_checks.evaluation_model(model)
    norm = _checks.canonical_norm(norm)
    epsilon = _checks.check_budget(epsilon, "epsilon", norm)
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    num_steps = _checks.check_positive_int(num_steps, "num_steps", allow_none=True)
    if "autoattack" in names:
        aa_batch_size = _checks.check_positive_int(aa_batch_size, "aa_batch_size")
        autoattack.resolve_attacks(aa_version, aa_attacks)
        aa_options = autoattack.check_options(aa_options)
        _resume.check_state_file(aa_state_path, _resume.AUTOATTACK)
    pgd_attacks = _pgd_attacks(names, norm, epsilon, step_size, num_steps, seed)
    for name in pgd_attacks:
        _resume.check_state_file(pgd_state_file(pgd_state_path, name), _resume.PGD)
    x, y, _, fmt = _data_checks.check_data(model, x, y)
    idx = _checks.strided_indices(len(x), n)
    if idx is not None:
        x, y = x[idx], y[idx]
    correct = clean_correct(model, x, y, batch_size)
    result = {"clean": percent(correct, len(x))}
    variants = {}
    job = rpat_backend.distributed_context()
    shown = verbose and (job is None or job.is_primary)  # one progress line in a data-parallel job
    for name, attack in pgd_attacks.items():
        restarts = getattr(attack, "restarts", 1)
        progress = Progress(pgd_label(attack.loss, attack.num_steps, restarts), len(x)) if shown else None
        state_path = pgd_state_file(pgd_state_path, name)
        accuracy = percent(attack_correct(model, attack, x, y, batch_size, progress, state_path=state_path), len(x))
        if name == "pgd20":
            result["pgd20"] = accuracy
        else:
            variants[name] = dict(accuracy=accuracy, loss=attack.loss, num_steps=attack.num_steps, restarts=restarts)
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
        step_size=next(iter(pgd_attacks.values())).step_size if pgd_attacks else None,
        num_steps=pgd_attacks["pgd20"].num_steps if "pgd20" in pgd_attacks else None,
        n=int(len(x)),
        attacks=names,
        autoattack_version=aa_version if "autoattack" in names else None,
        autoattack_attacks=aa_attack_list,
        provenance=provenance(model, elapsed=time.time() - start),
        pgd_variants=variants,
    )


def _pgd_attacks(names, norm, epsilon, step_size, num_steps, seed):
    """`{name: attack}` of the PGD evaluations among `names`, in order (`num_steps` overrides the names' steps)."""
    evaluation_pgd(norm, epsilon, step_size, num_steps or PGD_EVAL_STEPS, seed)  # checks the values even without PGD
    out, seen = {}, {}
    for name in names:
        spec = pgd_evaluation(name)
        if spec is None:
            continue
        loss, steps, restarts = spec
        spec = (loss, num_steps or steps, restarts)
        if spec in seen:
            warnings.warn(
                f"With num_steps={num_steps}, the evaluations {seen[spec]!r} and {name!r} are the same attack "
                f"({pgd_label(*spec)}) and run twice.",
                UserWarning,
                stacklevel=3,
            )
        seen.setdefault(spec, name)
        out[name] = evaluation_pgd(norm, epsilon, step_size, spec[1], seed, loss, restarts)
    return out
