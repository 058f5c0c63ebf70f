"""Named presets: the paper's methods with their hyper-parameters, as data.

`keras_rpat.presets.get("trades+rpat", norm="l2")` returns a `Preset`: the
attack, the losses, weight averaging, the data pipeline and the optimisation
schedule of REFERENCE §3 and Appendix A. `preset.build_trainer(classifier)` and
`preset.optimizer(steps_per_epoch)` turn it into objects.

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

Budgets: L-inf epsilon 8/255, step 2/255; L2 epsilon 128/255, step 32/255 (the
paper; REFERENCE §8 #7: `l2_step_size=15/255` gives the upstream convention).
"""

import copy
import dataclasses
from typing import Optional
import warnings

from keras_rpat import _checks
from keras_rpat import attacks as attacks_lib
from keras_rpat import losses as losses_lib
from keras_rpat import optimizers
from keras_rpat._names import BASE_METHODS  # noqa: F401  (public: the preset names)
from keras_rpat._names import BENCH_SETTINGS
from keras_rpat._names import L2_STEP_SIZE
from keras_rpat._names import PRESET_SETTINGS
from keras_rpat._names import SOTA_BETA
from keras_rpat._names import SOTA_METHODS
from keras_rpat._names import WA_START_EPOCH
from keras_rpat._names import WEIGHT_AVERAGED
from keras_rpat._names import base_method
from keras_rpat._names import canonical_preset_name as canonical_name
from keras_rpat._names import list_presets  # noqa: F401  (public: `presets.list_presets()`)
from keras_rpat.trainer import RPATTrainer
from keras_rpat.trainer import WeightAveraging

BUDGETS = {
    "linf": {"epsilon": 8 / 255, "step_size": 2 / 255, "num_steps": 10},
    "l2": {"epsilon": 128 / 255, "step_size": L2_STEP_SIZE, "num_steps": 10},
}


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
        post_step_clean_forward: the ReBAT pipeline's extra clean forward.
        pipeline: `"bench"` (zero padding, no normalisation) or `"sotas"`
            (reflect padding, CIFAR-10 mean/std inside the model).
        two_view: Consistency-AT's two augmented views per image.
        epochs: the paper's schedule length (110 Bench, 200 SOTAs).
        schedule: `"multistep"` (x0.1 per epoch at milestones) or
            `"piecewise"` (per-iteration division by `lr_factor`).
        milestones: learning-rate milestones (epochs).
        lr_factor: divisor of the piecewise schedule (1.5).
        learning_rate, momentum, weight_decay: SGD settings.
        norm: `"linf"` or `"l2"`.
        arch: the paper's default architecture for this method.
        normalize: input normalisation inside the model (`"cifar10"` or None).
    """

    name: str
    attack: Optional[attacks_lib.Attack]
    losses: list
    weight_averaging: object = None
    post_step_clean_forward: bool = False
    pipeline: str = BENCH_SETTINGS["pipeline"]
    two_view: bool = False
    epochs: int = BENCH_SETTINGS["epochs"]
    schedule: str = BENCH_SETTINGS["schedule"]
    milestones: tuple = BENCH_SETTINGS["milestones"]
    lr_factor: float = BENCH_SETTINGS["lr_factor"]
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm: str = "linf"
    arch: str = "resnet18_bottleneck"
    normalize: Optional[str] = None

    # -- builders -----------------------------------------------------------
    def build_trainer(self, classifier, **overrides):
        """Returns an `RPATTrainer` for `classifier` (not compiled)."""
        kwargs = dict(
            attack=copy.deepcopy(self.attack),
            losses=[l.__class__.from_config(l.get_config()) for l in self.losses],
            weight_averaging=copy.deepcopy(self.weight_averaging),
            post_step_clean_forward=self.post_step_clean_forward,
        )
        kwargs.update(overrides)
        return RPATTrainer(classifier, **kwargs)

    def learning_rate_schedule(self, steps_per_epoch):
        if self.schedule == "piecewise":
            return optimizers.PiecewiseDecay(
                self.learning_rate, steps_per_epoch, milestones=self.milestones, factor=self.lr_factor
            )
        return optimizers.MultiStepDecay(self.learning_rate, self.milestones, steps_per_epoch, gamma=0.1)

    def optimizer(self, steps_per_epoch):
        """Torch-style SGD with this preset's schedule."""
        return optimizers.SGD(
            self.learning_rate_schedule(steps_per_epoch),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
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

    def with_epochs(self, epochs):
        """The same preset on a shorter (or longer) schedule.

        Learning-rate milestones, the weight-averaging start, loss start epochs
        and attack schedule epochs scale by `epochs / self.epochs` with
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
        return f"{self.name}: attack={attack}; losses={losses}; {self.epochs} epochs, {self.schedule} LR"


# ---------------------------------------------------------------------------
# The presets, as data
# ---------------------------------------------------------------------------

# method -> (attack kind, losses); its plain fields are `_names.PRESET_SETTINGS`.
# Attack kinds: None (no attack), "noise" (uniform noise), "pgd" / "trades" /
# "mart" (Bench, inference mode), "sotas" (ReBAT's PGD in training mode).
# `+rpat` adds RobustPerception(alpha 0.5, weight 1) to any Bench method.
PRESETS = {
    "clean": (None, lambda: [losses_lib.CrossEntropy(view="clean", name="ce")]),
    "random_noise": ("noise", lambda: [losses_lib.CrossEntropy(view="adv", name="ce")]),
    "pgd_at": ("pgd", lambda: [losses_lib.AdversarialCrossEntropy()]),
    "trades": ("trades", lambda: [losses_lib.TRADES(beta=6.0)]),
    "mart": ("mart", lambda: [losses_lib.MART(beta=6.0)]),
    "consistency_at": ("pgd", lambda: [losses_lib.AdversarialCrossEntropy(), losses_lib.Consistency(1.0, 0.5)]),
    "rebat": (
        "sotas",
        lambda: [losses_lib.AdversarialCrossEntropy(), losses_lib.BoAT(beta=SOTA_BETA, start_epoch=WA_START_EPOCH)],
    ),
    "rpat_plus_plus": (
        "sotas",
        lambda: [
            losses_lib.AdversarialCrossEntropy(),
            losses_lib.RPATPlusPlus(beta=SOTA_BETA, alpha=0.5, start_epoch=WA_START_EPOCH),
        ],
    ),
    "wa": ("sotas", lambda: [losses_lib.AdversarialCrossEntropy()]),
}
# Table 6's "$": from epoch 100 on, epsilon 10/255 and 12 steps (L-inf, SOTAs methods).
STRONGER_ATTACK = {100: {"epsilon": 10 / 255, "num_steps": 12}}


def _attack(kind, norm, l2_step_size):
    if kind is None:
        return None
    if kind == "noise":
        return attacks_lib.RandomNoise(BUDGETS["linf"]["epsilon"])
    b = dict(BUDGETS[norm])
    if norm == "l2" and l2_step_size is not None:
        b["step_size"] = _checks.check_budget(l2_step_size, "l2_step_size", "l2")
    if kind == "trades":
        return attacks_lib.TRADESAttack(norm, **b)
    if kind == "mart":
        return attacks_lib.MARTAttack(norm, **b)
    if kind == "sotas":
        return attacks_lib.PGD(norm, style="sotas", training=True, **b)
    return attacks_lib.PGD(norm, style="advertorch", training=False, **b)


def get(name, norm="linf", l2_step_size=None, stronger_attack=False):
    """Returns the `Preset` for a method (a new one at every call).

    Args:
        name: one of `list_presets()` (e.g. `"pgd_at"`, `"trades+rpat"`,
            `"rebat"`, `"rpat_plus_plus"`).
        norm: `"linf"` (8/255, step 2/255) or `"l2"` (128/255, step 32/255).
        l2_step_size: override the L2 step (e.g. `15/255`, the upstream
            convention).
        stronger_attack: Table 6's "$": from epoch 100 on, epsilon 10/255 and
            12 steps (L-inf, SOTAs methods).

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
    method = base_method(full)
    kind, make_losses = PRESETS[method]
    fields = dict(PRESET_SETTINGS[method])
    if stronger_attack and method not in SOTA_METHODS:
        raise ValueError("`stronger_attack` applies to the ReBAT and RPAT++ presets (Table 6).")
    if stronger_attack and norm != "linf":
        raise ValueError("`stronger_attack` is defined for the L-inf threat model only (Table 6).")
    attack = _attack(kind, norm, l2_step_size)
    if stronger_attack:
        attack.schedule = copy.deepcopy(STRONGER_ATTACK)
    losses = make_losses()
    if full.endswith("+rpat"):
        losses.append(losses_lib.RobustPerception(alpha=0.5, weight=1.0))
    if method in WEIGHT_AVERAGED:
        fields["weight_averaging"] = WeightAveraging(decay=0.999, start_epoch=WA_START_EPOCH)
    return Preset(full, attack, losses, norm=norm, **fields)
