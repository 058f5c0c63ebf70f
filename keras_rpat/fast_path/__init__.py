"""The torch fast path: Keras models lowered into torch kernels over their own variables.

Every torch consumer of a model runs the lowered one: training
(`RPATTrainer`, whose engine `trainer_engine` makes), PGD evaluation and the AutoAttack
bridge (through `inference_model`). The modules:

- `lowering`: `lower(model)`, the compiler of a functional Keras model into
  a `LoweredModel` (exact: the same arithmetic, fewer kernels), with the
  per-layer kernels in `kernels`;
- `runtime`: a trainer's `FastRuntime` (its lowered models and train step)
  and the cached lowered models of evaluation;
- `capture`: whole-step CUDA-graph capture (`RPATTrainer(capture=True)`).

Those import torch. The two functions here do not: on the tensorflow backend
(where `tf.function` already traces the step into one graph) they answer
`None` / the model itself without importing torch.
"""

import keras

__all__ = ["inference_model", "trainer_engine"]


def trainer_engine(trainer):
    """A new `runtime.FastRuntime` for `trainer` (the engine of its steps: its lowered models
    and train step), or `None` where its Keras models run (tensorflow, `fast_path=False`, a
    classifier that cannot be lowered: one log line names the reason)."""
    if keras.config.backend() != "torch":
        return None
    from keras_rpat.fast_path import runtime

    return runtime.fast_runtime(trainer)


def inference_model(model, enabled=True):
    """`model` as evaluation and AutoAttack run it: on torch lowered into torch kernels
    (exact; cached per model). `enabled=False`, the tensorflow backend or a model that
    cannot be lowered returns `model` itself."""
    if not enabled or keras.config.backend() != "torch":
        return model
    from keras_rpat.fast_path import runtime

    return runtime.inference_model(model)
