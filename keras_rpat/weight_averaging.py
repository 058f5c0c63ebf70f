"""`WeightAveraging`: the exponential moving average of the online model (the teacher of ReBAT and RPAT++)."""

import keras


@keras.saving.register_keras_serializable(package="keras_rpat")
class WeightAveraging:
    """Weight averaging (EMA) of the online model, the teacher of ReBAT/RPAT++.

    After every optimiser step (and the optional post-step clean forward),
    `theta_wa <- decay * theta_wa + (1 - decay) * theta` for every variable,
    BatchNorm moving statistics included, no bias correction. Before
    `start_epoch` the decay is 0, so the average is an exact copy of the online
    model (docs/algorithms.md#weight-averaging).

    Args:
        decay: EMA decay (0.999).
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
    """

    def __init__(self, decay=0.999, start_epoch=105, teacher_training=False, evaluate_average=True):
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

    def decay_at(self, epoch):
        return self.decay if epoch >= self.start_epoch else 0.0

    def teacher_training_at(self, epoch):
        """Whether the teacher's forwards run in training mode in a (0-based) epoch."""
        if self.teacher_training == "first_epoch":
            return epoch == self.start_epoch
        return self.teacher_training

    def get_config(self):
        return {
            "decay": self.decay,
            "start_epoch": self.start_epoch,
            "teacher_training": self.teacher_training,
            "evaluate_average": self.evaluate_average,
        }

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
