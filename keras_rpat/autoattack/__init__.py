"""AutoAttack for Keras models on every backend (the torch-free facade).

`pyautoattack` attacks `torch.nn.Module`s that take NCHW float tensors in
[0, 1] and return logits. `run_autoattack` validates its arguments here and
then either

* runs the cascade in this process when the backend is torch or jax
  (`keras_rpat.autoattack.cascade`, through the
  `keras_rpat.autoattack.torch_bridge.TorchBridge` view of the Keras model;
  on jax its logits and input gradients are jitted JAX functions, the tensors
  handed over through DLPack), or
* saves the model to a temporary `.keras` file (Keras files are
  backend-independent) and runs the cascade in a PyTorch subprocess
  (`keras_rpat.autoattack.subprocess`); the caller does nothing different.

Progress is written to a state file after every batch
(`keras_rpat._resume`), so an interrupted evaluation resumes exactly
where it stopped: pyautoattack 0.2.0's own `state_path` cannot resume (it
writes the attack set as a string, so reloading always fails its consistency
check, and its resume branch leaves `y_adv` undefined).

AutoAttack's sanity checks (probability outputs, randomised or dynamic
defences, too many target classes, zero gradients, Square beating the
gradient attacks) are logged by pyautoattack; they are re-issued as
`AutoAttackWarning`s, also from the subprocess, so they always reach the user.

This module imports neither torch nor pyautoattack: the constants and the
argument checks are usable under TensorFlow without them.

References:
    - Croce & Hein, Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks, ICML 2020.
"""

import importlib.util
import os
import numbers

import keras

from keras_rpat import _checks
from keras_rpat import _data_checks
from keras_rpat import backend as rpat_backend
from keras_rpat.autoattack import subprocess as aa_subprocess
from keras_rpat.autoattack.config import AA_ATTACKS
from keras_rpat.autoattack.config import AA_BATCH_SIZE
from keras_rpat.autoattack.config import AA_NORMS
from keras_rpat.autoattack.config import AA_VERSIONS
from keras_rpat.autoattack.config import VERSION_ATTACKS
from keras_rpat.autoattack.config import AutoAttackConfig
from keras_rpat.autoattack.config import AutoAttackWarning
from keras_rpat.autoattack.config import check_options
from keras_rpat.autoattack.config import default_version
from keras_rpat.autoattack.config import import_autoattack
from keras_rpat.autoattack.config import resolve_attacks

__all__ = [
    "AA_ATTACKS",
    "AA_BATCH_SIZE",
    "AA_NORMS",
    "AA_VERSIONS",
    "VERSION_ATTACKS",
    "check_options",
    "default_version",
    "AutoAttackConfig",
    "AutoAttackWarning",
    "import_autoattack",
    "resolve_attacks",
    "run_autoattack",
]


def run_autoattack(
    model,
    x,
    y,
    norm="linf",
    epsilon=8 / 255,
    version="standard",
    attacks_to_run=None,
    batch_size=AA_BATCH_SIZE,
    state_path=None,
    seed=0,
    verbose=False,
    options=None,
    data_format=None,
    return_adversarial=True,
):
    """Runs AutoAttack on a Keras model; returns `(robust_accuracy, x_adv)`.

    The many arguments are AutoAttack's own settings, kept flat so that the
    call reads like `AutoAttack(...)`; they are validated here once and passed
    on as one `AutoAttackConfig`.

    Args:
        model: a Keras model mapping images in [0, 1] to logits (an
            `RPATTrainer` is evaluated through its `evaluation_model`).
        x: images in the model's layout (NHWC for channels-last models),
            float in [0, 1].
        y: integer labels `(N,)`.
        norm: `"linf"` or `"l2"`.
        epsilon: budget (`8/255`, L2 `128/255`).
        version: `"standard"` (APGD-CE, APGD-T, FAB-T, Square; docs/algorithms.md#evaluation-protocol),
            `"plus"`, `"rand"`, or `"custom"`: the attacks in
            `attacks_to_run`, with the standard version's settings.
        attacks_to_run: for `version="custom"`: names from `"apgd-ce"`,
            `"apgd-t"`, `"fab-t"`, `"square"`, `"apgd-dlr"`, `"fab"`.
        batch_size: AutoAttack batch size (250).
        state_path: JSON file updated after every batch; calling again with
            the same file (same model, data and settings) resumes an
            interrupted evaluation, and a finished one returns at once.
        seed: AutoAttack's seed (every batch of every attack is re-seeded).
        verbose: print AutoAttack's progress (to stdout).
        options: per-attack settings applied after the version's, e.g.
            `{"apgd": {"n_iter": 10}, "apgd-t": {"n_target_classes": 3},
            "square": {"n_queries": 100}}` (keys: `apgd`, `apgd_targeted`,
            `fab`, `square` or attack names).
        data_format: the model's data format; `None` infers it.
        return_adversarial: return the adversarial examples.

    Returns:
        `(robust_accuracy_percent, x_adv)`. `x_adv` has the layout of `x`: an
        adversarial example where an attack succeeded, the clean image
        elsewhere. It is `None` if `return_adversarial=False` or the run
        resumed from a state file (earlier sessions' examples are not kept).

    Example:

    ```python
    acc, x_adv = keras_rpat.autoattack.run_autoattack(
        model, x_test[:1000], y_test[:1000], norm="linf", epsilon=8/255)
    ```

    Under TensorFlow on a GPU, let TensorFlow grow its memory
    (`TF_FORCE_GPU_ALLOW_GROWTH=true`) so the PyTorch subprocess has room.

    On jax, AutoAttack runs in this process: on a GPU, let JAX leave memory to PyTorch
    (`XLA_PYTHON_CLIENT_PREALLOCATE=false`) and install a CUDA build of torch so that the
    tensors are shared, not copied through the CPU.

    Under a tf.distribute strategy of several replicas (the CLI's `--strategy`,
    the current one, or the one `model` was built in) every worker calls it
    alike: it starts a PyTorch subprocess per local replica, which together deal
    the batches among themselves (see `keras_rpat.autoattack.subprocess`), and
    returns the one-device result on every worker.

    References:
        - Croce & Hein, Reliable evaluation of adversarial robustness with an
          ensemble of diverse parameter-free attacks, ICML 2020.
    """
    model = _data_checks.evaluation_model(model)
    norm = _checks.canonical_norm(norm)
    epsilon = _checks.check_budget(epsilon, "epsilon", norm)
    attacks = resolve_attacks(version, attacks_to_run)
    options = check_options(options)
    config = dict(
        norm=norm,
        epsilon=epsilon,
        version=version,
        attacks=tuple(attacks),
        batch_size=_checks.check_positive_int(batch_size, "batch_size"),
        seed=_check_seed(seed),
        options=options,
        state_path=None if state_path is None else os.path.abspath(os.fspath(state_path)),
        verbose=bool(verbose),
        return_adversarial=bool(return_adversarial),
    )
    # Images in [0, 1] of the model's input shape, labels within its classes.
    x, y, _, data_format = _data_checks.check_data(model, x, y, data_format)
    config = AutoAttackConfig(data_format=data_format, **config)
    if keras.config.backend() in ("torch", "jax"):
        import_autoattack()
        # Imported here: the cascade imports torch, which this facade must not. (On jax, in this
        # process too: `TorchBridge` hands the tensors to JAX and back through DLPack.)
        from keras_rpat.autoattack import cascade

        return cascade.run(model, x, y, config)
    if importlib.util.find_spec("pyautoattack") is None:
        import_autoattack()  # raises the ImportError that names the package
    # In a tf.distribute job of several replicas: a subprocess per local replica, one torch.distributed job.
    return aa_subprocess.run(model, x, y, config, rpat_backend.replica_processes(model))


def _check_seed(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
    return None if seed is None else int(seed)
