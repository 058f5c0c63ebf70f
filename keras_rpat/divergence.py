"""Divergence: a non-finite loss stops training at once with an error naming the epoch, step and likely cause.

`RPATTrainer.fit` attaches a `DivergenceGuard` by default
(`stop_on_divergence=True`); the recipes attach their own, with the run's
learning rate and budget in the message. Here, not in `callbacks`, so that
the trainer can use it (`callbacks` imports the evaluation, which imports the
trainer); `keras_rpat.callbacks` exports both names.
"""

import math

import keras

__all__ = ["DivergenceError", "DivergenceGuard"]

# What a bare `fit` keeps: nothing but what the user's own callbacks saved.
BARE_FIT_STATE = (
    "The model's weights are now non-finite: reload the last checkpoint your callbacks saved (e.g. "
    "keras_rpat.callbacks.RobustEvaluation's best.keras / final.keras)."
)


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss (see `DivergenceGuard`)."""

    def __init__(self, message, epoch, step, loss):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite logged loss with a `DivergenceError`.

    It reads `logs["loss"]` (the epoch's running mean, which stays non-finite
    once one step's loss is) after each batch, from the logs Keras moves to
    the host for its callbacks. It is safe for Keras' asynchronous callback
    dispatch (`async_safe`): when no other callback needs the batch logs on
    the main thread, the check runs beside the training loop and adds no
    synchronisation to it; its error then surfaces after the next step, at
    the latest at the end of the epoch, before the epoch-end callbacks save
    anything. Put it first among the callbacks: with synchronous callbacks
    (a progress bar, a mid-epoch backup) it raises before the others save
    anything at that step, so the checkpoints and the backup keep the last
    good state.

    Args:
        hint: extra words for the error (e.g. the run's learning rate and epsilon).
        kept: the sentence that ends the error: what still holds the last
            good state (default: the model's weights do not).

    Example:

    ```python
    trainer.fit(data, epochs=10, callbacks=[keras_rpat.callbacks.DivergenceGuard(hint="lr 0.1")])
    ```
    """

    @property
    def async_safe(self):
        # Keras' JAX trainer donates the step's buffers to the next step, which a check beside the training
        # loop can still be reading: on jax the check runs after each step, on the main thread.
        return keras.config.backend() != "jax"

    def __init__(self, hint="", kept=BARE_FIT_STATE):
        super().__init__()
        self.hint = hint
        self.kept = kept
        self.batch_offset = 0  # batches of the epoch trained before this `fit` (a mid-epoch resume)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.batch_offset = 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if hasattr(loss, "shape") and tuple(loss.shape) == ():
            loss = float(loss)  # a 0-d array: Keras' JAX trainer hands callbacks its logs unconverted
        if loss is None or not isinstance(loss, (int, float)) or math.isfinite(loss):
            return
        self.model.stop_training = True
        raise DivergenceError(
            f"Training diverged: the loss is {loss} at epoch {self._epoch + 1}, step {self.batch_offset + batch + 1}. "
            "Likely causes: a learning rate too high, or an attack epsilon / step size too large"
            + (f" ({self.hint})" if self.hint else "")
            + f"; lower them and rerun. {self.kept}",
            epoch=self._epoch + 1,
            step=self.batch_offset + batch + 1,
            loss=loss,
        )
