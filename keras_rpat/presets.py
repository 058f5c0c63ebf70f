"""Named presets: the paper's methods with their hyper-parameters, as data.

`keras_rpat.presets.get("trades+rpat", norm="l2")` returns a `Preset`: the
attack, the losses, weight averaging, the data pipeline and the optimisation
schedule of docs/algorithms.md#optimisation and Appendix A. `preset.build_trainer(classifier)` and
`preset.optimizer(steps_per_epoch)` turn it into objects. Each method is a row
of `keras_rpat.method_presets` (a table without Keras); this module builds the
row's objects.

| preset | attack | losses | pipeline |
|---|---|---|---|
| `clean` | none | CE on `x` | Bench |
| `random_noise` | `U[-eps, eps]` | CE on `x + noise` | Bench |
| `pgd_at` | PGD-10 (advertorch) | CE on `x'` | Bench |
| `trades` | TRADES KL attack | TRADES (beta 6) | Bench |
| `mart` | MART CE attack | MART (beta 6) | Bench |
| `consistency_at` | PGD-10 on two views | CE + JS (lambda 1, T 0.5) | Bench, two views |
| `<any above>+rpat` | same | + RobustPerception(alpha 0.5, lambda 1) | same |
| `rebat` | PGD-10 (SOTAs, training mode) | CE + BoAT (beta 1 from epoch 105), WA 0.999 | SOTAs |
| `rpat_plus_plus` | as ReBAT | CE + RPAT++ (beta 1 from epoch 105), WA 0.999 | SOTAs |
| `wa` | as ReBAT | CE, WA 0.999 | SOTAs |

Budgets: L-inf epsilon 8/255, step 2/255; L2 epsilon 128/255, step 32/255 (the
paper; docs/algorithms.md#l2-step-size: `l2_step_size=15/255` gives the upstream convention).

`preset.with_ingredients(...)` adds the leaderboard's training ingredients to any
preset: label smoothing, the cosine schedule with warm-up, Nesterov momentum, no
weight decay on BatchNorm (and bias) variables, the dynamic-decay EMA
(docs/guides/leaderboard.md).
"""

import copy
import dataclasses
from typing import Optional
import warnings

from keras_rpat import _checks
from keras_rpat import attacks as attacks_lib
from keras_rpat import losses as losses_lib
from keras_rpat import method_presets as table
from keras_rpat import optimizers
from keras_rpat._names import LR_SCHEDULES
from keras_rpat._names import WEIGHT_DECAY_EXCLUSIONS
from keras_rpat.method_presets import BENCH_SETTINGS
from keras_rpat.method_presets import BUDGETS  # noqa: F401  (public: the threat models' budgets)
from keras_rpat.method_presets import L2_STEP_SIZE  # noqa: F401  (public: the paper's L2 step)
from keras_rpat.method_presets import canonical_preset_name as canonical_name
from keras_rpat.method_presets import list_presets  # noqa: F401  (public: `presets.list_presets()`)
from keras_rpat.trainer import RPATTrainer
from keras_rpat.trainer import WeightAveraging

# The methods of the Bench pipeline (public: the base methods `+rpat` extends).
BASE_METHODS = tuple(m for m, spec in table.method_presets.items() if spec["settings"]["pipeline"] == "bench")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A method's full configuration. See the module docstring for the table.

    A preset is frozen: derive another one with `with_epochs` or
    `with_options`. `get` returns a fresh preset each call (its attack, losses
    and weight averaging are new objects), so building from one never changes
    another.

    Attributes:
        name: canonical preset name.
        attack: the training attack (or `None`).
        losses: list of `keras_rpat.losses.ViewLoss`.
        weight_averaging: a `WeightAveraging` or `None`.
        awp: a `keras_rpat.AWP` (adversarial weight perturbation) or `None`
            (no paper method uses it: set it with `with_options(awp=...)`).
        post_step_clean_forward: the ReBAT pipeline's extra clean forward.
        pipeline: `"bench"` (zero padding, no normalisation) or `"sotas"`
            (reflect padding, CIFAR-10 mean/std inside the model).
        two_view: Consistency-AT's two augmented views per image.
        epochs: the paper's schedule length (110 Bench, 200 SOTAs).
        schedule: `"multistep"` (x0.1 per epoch at milestones),
            `"piecewise"` (per-iteration division by `lr_factor`) or
            `"cosine"` (`optimizers.WarmupCosineDecay`: cosine decay after a
            warm-up of `warmup_fraction` of the run, per epoch).
        milestones: learning-rate milestones (epochs).
        lr_factor: divisor of the piecewise schedule (1.5).
        learning_rate, momentum, weight_decay: SGD settings.
        norm: `"linf"` or `"l2"`.
        arch: the paper's default architecture for this method.
        normalize: input normalisation inside the model (`"cifar10"` or None).
        label_smoothing: of every cross-entropy term (`CrossEntropy`,
            `AdversarialCrossEntropy`, TRADES' and MART's CE); 0: none.
        nesterov: Nesterov momentum in the SGD.
        weight_decay_exclude: `None`, `"batchnorm"` or
            `"batchnorm_and_bias"` (`optimizers.SGD(weight_decay_exclude=...)`).
        warmup_fraction: the cosine schedule's warm-up share of the run.
        ema_warmup_fraction: a dynamic-decay weight averaging copies the
            online model for this share of the run's steps
            (`WeightAveraging(warmup_steps=...)`, set by `build_trainer`).
    """

    name: str
    attack: Optional[attacks_lib.Attack]
    losses: list
    weight_averaging: object = None
    awp: object = None
    post_step_clean_forward: bool = BENCH_SETTINGS["post_step_clean_forward"]
    pipeline: str = BENCH_SETTINGS["pipeline"]
    two_view: bool = BENCH_SETTINGS["two_view"]
    epochs: int = BENCH_SETTINGS["epochs"]
    schedule: str = BENCH_SETTINGS["schedule"]
    milestones: tuple = BENCH_SETTINGS["milestones"]
    lr_factor: float = BENCH_SETTINGS["lr_factor"]
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm: str = "linf"
    arch: str = BENCH_SETTINGS["arch"]
    normalize: Optional[str] = BENCH_SETTINGS["normalize"]
    label_smoothing: float = BENCH_SETTINGS["label_smoothing"]
    nesterov: bool = BENCH_SETTINGS["nesterov"]
    weight_decay_exclude: Optional[str] = BENCH_SETTINGS["weight_decay_exclude"]
    warmup_fraction: float = BENCH_SETTINGS["warmup_fraction"]
    ema_warmup_fraction: float = BENCH_SETTINGS["ema_warmup_fraction"]

    # -- builders -----------------------------------------------------------
    def build_trainer(self, classifier, steps_per_epoch=None, **overrides):
        """Returns an `RPATTrainer` for `classifier` (not compiled).

        `steps_per_epoch` is needed by a dynamic-decay weight averaging's
        warm-up (`ema_warmup_fraction`).
        """
        kwargs = dict(
            attack=copy.deepcopy(self.attack),
            losses=[_with_label_smoothing(l, self.label_smoothing or None) for l in self.losses],
            weight_averaging=self._weight_averaging(steps_per_epoch),
            awp=copy.deepcopy(self.awp),
            post_step_clean_forward=self.post_step_clean_forward,
        )
        kwargs.update(overrides)
        return RPATTrainer(classifier, **kwargs)

    def _weight_averaging(self, steps_per_epoch):
        wa = copy.deepcopy(self.weight_averaging)
        if wa is None or not wa.dynamic_decay:
            return wa
        if steps_per_epoch is None:
            raise ValueError(
                f"The preset {self.name!r} warms its EMA up for {self.ema_warmup_fraction:g} of the run's steps: "
                "pass `steps_per_epoch` to `build_trainer` (e.g. len(train_seq))."
            )
        steps_per_epoch = _checks.check_positive_int(steps_per_epoch, "steps_per_epoch")
        wa.warmup_steps = self.ema_warmup_fraction * self.epochs * steps_per_epoch
        return wa

    def learning_rate_schedule(self, steps_per_epoch):
        if self.schedule == "piecewise":
            return optimizers.PiecewiseDecay(
                self.learning_rate, steps_per_epoch, milestones=self.milestones, factor=self.lr_factor
            )
        if self.schedule == "cosine":
            return optimizers.WarmupCosineDecay(
                self.learning_rate, self.epochs, steps_per_epoch, warmup_fraction=self.warmup_fraction
            )
        return optimizers.MultiStepDecay(self.learning_rate, self.milestones, steps_per_epoch, gamma=0.1)

    def optimizer(self, steps_per_epoch):
        """Torch-style SGD with this preset's schedule, momentum and weight decay."""
        return optimizers.SGD(
            self.learning_rate_schedule(steps_per_epoch),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
            weight_decay_exclude=self.weight_decay_exclude,
        )

    # -- derived presets ----------------------------------------------------
    def with_options(self, **changes):
        """The same preset with some fields replaced (the objects are copies).

        Example:

        ```python
        preset = keras_rpat.presets.get("rebat").with_options(lr_factor=2.0)
        ```
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"Unknown preset field(s) {unknown}. Valid fields: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(copy.deepcopy(self), **copy.deepcopy(changes))

    def with_ingredients(
        self, label_smoothing=None, lr_schedule=None, nesterov=None, weight_decay_exclude=None, ema=None
    ):
        """The same preset with the leaderboard's training ingredients (`None`: unchanged).

        Args:
            label_smoothing: float in `[0, 1)`, of every cross-entropy term
                (0.1 in Wang et al. 2023).
            lr_schedule: `"multistep"`, `"piecewise"` or `"cosine"` (cosine
                decay after a warm-up of 2.5 % of the run, per epoch).
            nesterov: bool, Nesterov momentum.
            weight_decay_exclude: `"batchnorm"` or `"batchnorm_and_bias"`.
            ema: float in `(0, 1)`, the `tau` of a weight average with the
                dynamic decay `min(tau, (1 + t) / (10 + t))` after a warm-up
                of 2.5 % of the run (0.995 in Wang et al. 2023). A preset
                with weight averaging (ReBAT, RPAT++, WA) keeps its start
                epoch and teacher mode; the others get one from epoch 0,
                which `evaluate()` reports.

        Example:

        ```python
        preset = keras_rpat.presets.get("trades+rpat").with_ingredients(
            label_smoothing=0.1, lr_schedule="cosine", nesterov=True,
            weight_decay_exclude="batchnorm", ema=0.995,
        )
        ```
        """
        changes = {}
        if label_smoothing is not None:
            changes["label_smoothing"] = _checks.check_range(label_smoothing, "label_smoothing", 0, 1, high_open=True)
            changes["losses"] = [_with_label_smoothing(l, changes["label_smoothing"]) for l in self.losses]
        if lr_schedule is not None:
            changes["schedule"] = _checks.check_choice(lr_schedule, "lr_schedule", LR_SCHEDULES)
        if nesterov is not None:
            changes["nesterov"] = _checks.check_bool(nesterov, "nesterov")
        if weight_decay_exclude is not None:
            changes["weight_decay_exclude"] = _checks.check_choice(
                weight_decay_exclude, "weight_decay_exclude", WEIGHT_DECAY_EXCLUSIONS
            )
        if ema is not None:
            tau = _checks.check_range(ema, "ema", 0, 1, low_open=True, high_open=True)
            config = {"start_epoch": 0} if self.weight_averaging is None else self.weight_averaging.get_config()
            config.update(decay=tau, dynamic_decay=True)
            changes["weight_averaging"] = WeightAveraging(**config)
        return self.with_options(**changes)

    def with_epochs(self, epochs):
        """The same preset on a shorter (or longer) schedule.

        Learning-rate milestones, the weight-averaging start, the AWP warm-up, loss
        start epochs and attack schedule epochs scale by `epochs / self.epochs` with
        `keras_rpat.optimizers.scale_epoch` (ties go to the earlier epoch),
        kept inside the run (at most `epochs - 1`), so that every phase the
        preset schedules still happens.
        """
        epochs = int(epochs)
        if epochs <= 0:
            raise ValueError(f"`epochs` must be a positive integer. Received: epochs={epochs}")
        if epochs == self.epochs:
            return copy.deepcopy(self)

        def scale(e):
            return min(optimizers.scale_epoch(e, epochs, self.epochs), max(epochs - 1, 0))

        new = copy.deepcopy(self)
        if new.weight_averaging is not None:
            new.weight_averaging.start_epoch = scale(new.weight_averaging.start_epoch)
        if new.awp is not None:
            new.awp.warmup_epochs = scale(new.awp.warmup_epochs)
        for loss in new.losses:
            if loss.start_epoch:
                loss.start_epoch = scale(loss.start_epoch)
        if new.attack is not None and new.attack.schedule:
            new.attack.schedule = {scale(k): v for k, v in new.attack.schedule.items()}
        return dataclasses.replace(new, epochs=epochs, milestones=tuple(scale(m) for m in self.milestones))

    def describe(self):
        """A one-line human description."""
        attack = "none" if self.attack is None else repr(self.attack)
        losses = " + ".join(f"{l.__class__.__name__}" for l in self.losses)
        extras = [f"label smoothing {self.label_smoothing:g}"] if self.label_smoothing else []
        extras += ["Nesterov"] if self.nesterov else []
        extras += [f"no weight decay on {self.weight_decay_exclude}"] if self.weight_decay_exclude else []
        wa = self.weight_averaging
        if wa is not None and wa.dynamic_decay:
            extras.append(f"EMA tau {wa.decay:g} (dynamic decay, warm-up {self.ema_warmup_fraction:g} of the run)")
        return f"{self.name}: attack={attack}; losses={losses}; {self.epochs} epochs, {self.schedule} LR" + "".join(
            f"; {e}" for e in extras
        )


def _with_label_smoothing(loss, label_smoothing):
    """A copy of `loss`, with `label_smoothing` (unless None) if it is a cross-entropy term."""
    config = loss.get_config()
    if label_smoothing is not None and hasattr(loss, "label_smoothing"):
        config["label_smoothing"] = label_smoothing
    return loss.__class__.from_config(config)


# ---------------------------------------------------------------------------
# Building a preset from its row of `keras_rpat.method_presets`
# ---------------------------------------------------------------------------


def _serialized(spec, **config):
    """A row's `{"class_name", "config"}` entry as Keras serialises a keras_rpat object, `config` added."""
    return {
        "class_name": spec["class_name"],
        "registered_name": f"keras_rpat>{spec['class_name']}",
        "config": {**spec["config"], **config},
    }


def _attack(row, norm, l2_step_size, schedule):
    if row["attack"] is None:
        return None
    threat = {}
    if row["attack_takes_budget"]:
        threat = {"norm": norm, **row["budgets"][norm]}
        if norm == "l2" and l2_step_size is not None:
            threat["step_size"] = _checks.check_budget(l2_step_size, "l2_step_size", "l2")
    if schedule is not None:
        threat["schedule"] = schedule
    return attacks_lib.get(_serialized(row["attack"], **threat))


def get(name, norm="linf", l2_step_size=None, stronger_attack=False, teacher_training=False):
    """Returns the `Preset` for a method (a new one at every call).

    The method's attack, losses and settings are its row of
    `keras_rpat.method_presets.method_presets`.

    Args:
        name: one of `list_presets()` (e.g. `"pgd_at"`, `"trades+rpat"`,
            `"rebat"`, `"rpat_plus_plus"`).
        norm: `"linf"` (8/255, step 2/255) or `"l2"` (128/255, step 32/255).
        l2_step_size: override the L2 step (e.g. `15/255`, the upstream
            convention).
        stronger_attack: Table 6's "$": from epoch 100 on, epsilon 10/255 and
            12 steps (L-inf, SOTAs methods).
        teacher_training: the weight-averaged presets' (`rebat`,
            `rpat_plus_plus`, `wa`) `WeightAveraging(teacher_training=...)`:
            `False` (inference mode), `True`, or `"first_epoch"`, the
            reference code's training mode in the first averaging epoch only.

    Example:

    ```python
    preset = keras_rpat.presets.get("pgd_at+rpat")
    trainer = preset.build_trainer(keras_rpat.models.get(preset.arch))
    trainer.compile(optimizer=preset.optimizer(steps_per_epoch=391))
    ```
    """
    full = canonical_name(name)
    norm = _checks.canonical_norm(norm)
    if l2_step_size is not None and norm != "l2":
        warnings.warn(
            f"`l2_step_size` applies to norm='l2' only, and is ignored for norm={norm!r}. "
            f"Received: l2_step_size={l2_step_size!r}; pass norm='l2' or drop it.",
            UserWarning,
            stacklevel=2,
        )
    row = table.row(full)
    if stronger_attack and "stronger_attack" not in row["options"]:
        raise ValueError(
            f"`stronger_attack` applies to the presets {table.methods_with_option('stronger_attack')} (Table 6)."
        )
    if stronger_attack and norm != "linf":
        raise ValueError("`stronger_attack` is defined for the L-inf threat model only (Table 6).")
    weight_averaged = [m for m, spec in table.method_presets.items() if spec["weight_averaging"] is not None]
    if teacher_training is not False and row["weight_averaging"] is None:
        raise ValueError(
            f"`teacher_training` sets the weight-averaged teacher's mode: it applies to the presets "
            f"{weight_averaged}, not {full!r}. Received: teacher_training={teacher_training!r}"
        )
    attack = _attack(row, norm, l2_step_size, copy.deepcopy(table.STRONGER_ATTACK) if stronger_attack else None)
    losses = [losses_lib.get(_serialized(spec)) for spec in row["losses"]]
    if row["rpat"] and full.endswith("+rpat"):
        losses.append(losses_lib.get(_serialized(table.RPAT_LOSS)))
    weight_averaging = None
    if row["weight_averaging"] is not None:
        weight_averaging = WeightAveraging(**row["weight_averaging"], teacher_training=teacher_training)
    return Preset(full, attack, losses, weight_averaging=weight_averaging, norm=norm, **row["settings"])
