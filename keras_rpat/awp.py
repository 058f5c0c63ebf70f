"""`AWP`: adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020), composable with any loss.

The train step (`RPATTrainer.step`) uses it in every epoch from `warmup_epochs` on
(docs/algorithms.md#adversarial-weight-perturbation):

1. the ascent direction: the gradient `g` of the step's own total loss (any
   losses, RPAT included) on the current adversarial views, with the
   BatchNorm statistics that forward moved restored exactly afterwards;
2. per variable `w` of two or more dimensions (convolution and dense kernels):
   `v = gamma * ||w|| * d / (||d|| + 1e-20)` with `d = 0.01 * g`, and `w <- w + v`;
3. the step's forwards, gradients and optimizer update on the perturbed weights;
4. `w <- w - v`, before the post-step clean forward and the EMA teacher's update.

This follows the authors' code (github.com/csdongxian/AWP): `AdvWeightPerturb` /
`TradesAWP` in `AT_AWP/utils_awp.py` and `trades_AWP/utils_awp.py`, called by
`AT_AWP/train_cifar10.py` and `trades_AWP/train_trades_cifar.py`. There a proxy
copy of the model (`load_state_dict`, training mode) takes one
`SGD(lr=0.01)` step on the negated loss; `diff_in_weights` scales the proxy's
weight change `d` per layer to `||w|| * d / (||d|| + 1e-20)` for the state
entries named `weight` with more than one dimension; `perturb` adds `gamma`
times it, and `restore`, after `optimizer.step()`, subtracts the same. The proxy's
BatchNorm statistics are thrown away with the proxy: here they are restored.
"""

import contextlib
import warnings

import keras
from keras import ops

from keras_rpat import _checks

# The proxy optimizer's learning rate of the reference's `AT_AWP/train_cifar10.py`: `d = 0.01 * g`
# (the per-layer scaling removes it, up to the 1e-20 in the denominator).
PROXY_LEARNING_RATE = 0.01
# `EPS` of the reference's `diff_in_weights`.
NORM_EPSILON = 1e-20
# Above the published settings (0.005 TRADES, 0.01 PGD-AT) by an order of magnitude.
_LARGE_GAMMA = 0.1


@keras.saving.register_keras_serializable(package="keras_rpat")
class AWP:
    """Adversarial weight perturbation: the train step runs on weights moved up the loss.

    Each step from epoch `warmup_epochs` on perturbs every trainable variable
    of two or more dimensions by `gamma * ||w|| * g / ||g||`, where `g` is the
    gradient of the step's total loss on its adversarial views (BatchNorm
    statistics untouched), trains on the perturbed weights, and removes the
    perturbation after the optimizer's update (docs/algorithms.md#adversarial-weight-perturbation).

    Args:
        gamma: the perturbation's size relative to each weight's norm
            (0.005: the reference's TRADES setting and the RPAT++ reproduction's;
            0.01 for PGD-AT).
        warmup_epochs: the first (0-based) epoch with AWP (the reference's
            `--awp-warmup`: `epoch >= awp_warmup`).

    References:
        - Wu, Xia & Wang, Adversarial Weight Perturbation Helps Robust
          Generalization, NeurIPS 2020 (github.com/csdongxian/AWP).
    """

    def __init__(self, gamma=0.005, warmup_epochs=0):
        gamma = _checks.check_finite_number(gamma, "gamma")
        if gamma <= 0:
            raise ValueError(
                f"`gamma` must be > 0 (the perturbation's size relative to each weight's norm, e.g. 0.005). "
                f"Received: gamma={gamma}. To train without AWP, pass awp=None."
            )
        if gamma > _LARGE_GAMMA:
            warnings.warn(
                f"AWP `gamma`={gamma} moves every weight by more than {_LARGE_GAMMA:g} of its norm; the published "
                "settings are 0.005 (TRADES) and 0.01 (PGD-AT). Training may not converge.",
                UserWarning,
                stacklevel=2,
            )
        self.gamma = gamma
        self.warmup_epochs = _checks.check_non_negative_int(warmup_epochs, "warmup_epochs")

    def active_at(self, epoch):
        """Whether the step perturbs the weights in a (0-based) epoch."""
        return epoch >= self.warmup_epochs

    def perturbed(self, variables):
        """The indices of the variables AWP perturbs: those of two or more dimensions."""
        return [i for i, v in enumerate(variables) if len(v.shape) > 1]

    def perturbation(self, weight, gradient):
        """`gamma * ||w|| * d / (||d|| + 1e-20)` with `d = 0.01 * gradient` (the reference's
        `diff_in_weights` times `gamma`)."""
        d = PROXY_LEARNING_RATE * gradient
        scale = _norm(weight) / (_norm(d) + NORM_EPSILON)
        return self.gamma * (scale * d)

    def perturb(self, variables, gradients, context=None):
        """Adds to each perturbed variable (`perturbed`) with a gradient its `perturbation`, in `context`
        (the engine's update context); returns them (`{index: perturbation}`) for `restore`.

        In a data-parallel job `gradients` must be the global batch's (summed over the devices), so that
        every replica moves its copy of the weights by the same amount."""
        perturbation = {}
        with context or contextlib.nullcontext():
            for i in self.perturbed(variables):
                if gradients[i] is not None:
                    perturbation[i] = self.perturbation(variables[i].value, gradients[i])
                    variables[i].assign_add(perturbation[i])
        return perturbation

    def restore(self, variables, perturbation):
        """Removes the `perturbation` that `perturb` added (after the optimizer's update, in its context)."""
        for i, delta in perturbation.items():
            variables[i].assign_sub(delta)

    def get_config(self):
        return {"gamma": self.gamma, "warmup_epochs": self.warmup_epochs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"AWP(gamma={self.gamma:g}, warmup_epochs={self.warmup_epochs})"


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


def get(identifier):
    """An `AWP` from `identifier`: one, `True` (the defaults), a dict of its arguments, or `None` / `False`."""
    if identifier is True:
        return AWP()
    if isinstance(identifier, dict):
        return AWP(**identifier)
    if identifier is None or identifier is False:
        return None
    if isinstance(identifier, AWP):
        return identifier
    raise ValueError(
        "`awp` must be a keras_rpat.AWP, True (the defaults), a dict of its arguments, or None. "
        f"Received: awp={identifier!r}"
    )
