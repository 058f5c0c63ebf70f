"""`WeightAveraging`: the exponential moving average of the online model (the teacher of ReBAT and RPAT++)."""

import keras
from keras import ops

from keras_rpat import _checks


@keras.saving.register_keras_serializable(package="keras_rpat")
class WeightAveraging:
    """Weight averaging (EMA) of the online model, the teacher of ReBAT/RPAT++.

    After every optimiser step (and the optional post-step clean forward),
    `theta_wa <- decay * theta_wa + (1 - decay) * theta` for every variable,
    BatchNorm moving statistics included, no bias correction. Before
    `start_epoch` the decay is 0, so the average is an exact copy of the online
    model (docs/algorithms.md#weight-averaging).

    `dynamic_decay=True` is the EMA of the leaderboard's recipes (Gowal et al.
    2020, Rebuffi et al. 2021, Wang et al. 2023: `ema_update` in
    `gowal21uncovering/utils/watrain.py` of github.com/wzekai99/DM-Improves-AT):
    with `t` the number of optimizer steps taken (this update's step
    included, 1 after the first) and `delta = t - warmup_steps`,

    ```python
    decay_t = min(decay, (1 + delta) / (10 + delta)) if delta >= 0 else 0
    ```

    so the average copies the online model during the warm-up, then follows
    it closely and settles at `decay` (0.995 there) after a few hundred
    steps. The reference warms up for `0.025 * epochs * steps_per_epoch`
    steps (`keras_rpat.presets.Preset(ema_warmup_fraction=0.025)`). The decay
    is a tensor computed inside the train step from the optimizer's
    `iterations`, so it resumes with the optimizer. Unlike the reference,
    which averages the parameters only and copies the online BatchNorm
    statistics at the end of each epoch (`update_bn`), the moving statistics
    are averaged too, as for every `WeightAveraging`.

    Args:
        decay: EMA decay (0.999), the ceiling `tau` of a dynamic decay.
        start_epoch: first (0-based) epoch with a non-zero decay (105).
        teacher_training: the BatchNorm mode of the teacher's forward
            passes. `False` (default): inference mode (moving statistics).
            `True`: training mode, as `model.train()` in PyTorch: each
            forward normalises with its batch statistics and moves the
            teacher's moving statistics, which are then averaged after the
            step. `"first_epoch"`: training mode in epoch `start_epoch` only,
            inference mode after, as the reference ReBAT / RPAT++ code
            (docs/algorithms.md#forward-order, #teacher-mode).
        evaluate_average: evaluate (and report) the averaged model in
            `evaluate()`, as the paper does for ReBAT and RPAT++.
        dynamic_decay: use the dynamic decay above (from `start_epoch` on).
        warmup_steps: float >= 0, the dynamic decay's warm-up in optimizer
            steps (may be fractional, as `0.025 * 400 * 97.66`).
    """

    def __init__(
        self,
        decay=0.999,
        start_epoch=105,
        teacher_training=False,
        evaluate_average=True,
        dynamic_decay=False,
        warmup_steps=0.0,
    ):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1). Received: decay={decay}")
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ValueError(f"`start_epoch` must be a non-negative integer. Received: start_epoch={start_epoch!r}")
        if teacher_training not in (False, True, "first_epoch"):
            raise ValueError(
                "`teacher_training` must be False (inference mode), True (training mode) or "
                f"'first_epoch' (training mode in epoch start_epoch only). Received: teacher_training={teacher_training!r}"
            )
        self.decay = decay
        self.start_epoch = int(start_epoch)
        self.teacher_training = teacher_training if teacher_training == "first_epoch" else bool(teacher_training)
        self.evaluate_average = bool(evaluate_average)
        self.dynamic_decay = _checks.check_bool(dynamic_decay, "dynamic_decay")
        self.warmup_steps = _checks.check_range(warmup_steps, "warmup_steps", low=0)

    def decay_at(self, epoch):
        return self.decay if epoch >= self.start_epoch else 0.0

    def step_decay(self, epoch_decay, iterations):
        """The decay of the update after the optimizer step that made `iterations` (a tensor) steps.

        `epoch_decay` is `decay_at(epoch)`: returned as is (a Python float) unless the decay is dynamic and
        the epoch averages; else the dynamic decay, a float32 scalar tensor (no branch on its value).
        """
        if not self.dynamic_decay or epoch_decay == 0.0:
            return epoch_decay
        delta = ops.cast(iterations, "float32") - self.warmup_steps
        since = ops.maximum(delta, 0.0)
        dynamic = ops.minimum(self.decay, (1.0 + since) / (10.0 + since))
        return ops.where(ops.greater_equal(delta, 0.0), dynamic, ops.zeros_like(dynamic))

    def teacher_training_at(self, epoch):
        """Whether the teacher's forwards run in training mode in a (0-based) epoch."""
        if self.teacher_training == "first_epoch":
            return epoch == self.start_epoch
        return self.teacher_training

    def get_config(self):
        config = {
            "decay": self.decay,
            "start_epoch": self.start_epoch,
            "teacher_training": self.teacher_training,
            "evaluate_average": self.evaluate_average,
        }
        if self.dynamic_decay:  # only then: a constant decay's config is the one it always was
            config.update(dynamic_decay=True, warmup_steps=self.warmup_steps)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def get(identifier):
    """A `WeightAveraging` from `identifier`: one, `True` (the defaults), a dict of its arguments, or
    `None` / `False` (none)."""
    if identifier is True:
        return WeightAveraging()
    if isinstance(identifier, dict):
        return WeightAveraging(**identifier)
    if identifier is None or identifier is False:
        return None
    if isinstance(identifier, WeightAveraging):
        return identifier
    raise ValueError(
        "`weight_averaging` must be a keras_rpat.WeightAveraging, True (the defaults), a dict of its "
        f"arguments, or None. Received: weight_averaging={identifier!r}"
    )
