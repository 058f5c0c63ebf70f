"""Epoch arithmetic shared by the schedules, the presets and the recipes' cost estimate (internal, a leaf).

Plain Python, no Keras: a recipe's dry run uses it without loading a framework. Public as
`keras_rpat.optimizers.scale_epoch`.
"""

import fractions
import math


def scale_epoch(epoch, epochs, reference_epochs):
    """The epoch of a `reference_epochs` schedule that corresponds to `epoch` in an `epochs`-long run.

    `epoch * epochs / reference_epochs`, rounded to the nearest integer, with
    ties going to the earlier epoch: an event exactly halfway between two
    epochs (a learning-rate decay, the start of weight averaging or of a
    stronger attack) happens at the earlier one, so the phase it starts is
    never the one cut from a short run. This is the one rounding rule of
    keras_rpat (`scale_milestones`, `keras_rpat.presets.Preset.with_epochs`).
    Computed exactly (no floating-point round-off decides a tie).

    Example:

    ```python
    >>> keras_rpat.optimizers.scale_epoch(105, 11, 110)  # 10.5: the tie goes to 10
    10
    >>> keras_rpat.optimizers.scale_epoch(150, 20, 200)
    15
    ```
    """
    exact = fractions.Fraction(epoch) * epochs / reference_epochs
    return math.ceil(exact - fractions.Fraction(1, 2))
