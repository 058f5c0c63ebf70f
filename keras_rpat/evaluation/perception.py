"""The perception analysis of the paper's Figures 2 and 5: logit MSE between benign and perturbed inputs."""

import dataclasses
import time

import numpy as np

from keras_rpat import _data_checks
from keras_rpat import attacks as attacks_lib
from keras_rpat import backend as rpat_backend
from keras_rpat._names import EVAL_BATCH_SIZE
from keras_rpat._names import PERTURBATIONS
from keras_rpat._names import PGD_EVAL_STEPS
from keras_rpat.evaluation.metrics import attack_function
from keras_rpat.evaluation.metrics import batches
from keras_rpat.evaluation.metrics import check_logits
from keras_rpat.evaluation.metrics import evaluation_pgd
from keras_rpat.evaluation.metrics import percent
from keras_rpat.evaluation.provenance import JSONResult
from keras_rpat.evaluation.provenance import provenance


@dataclasses.dataclass
class PerceptionResult(JSONResult):
    """The result of `keras_rpat.evaluation.perception_analysis`.

    `mse_*` are `MSE(z(x), z(x_pert))` averaged over all `n_subset * C` logit
    elements of a subset; a subset with no sample gives `None` (never NaN).

    Attributes:
        perturbation: `"random"`, `"pgd20"` or the attack's class name.
        epsilon, step_size, num_steps: the perturbation (`step_size` and
            `num_steps` are `None` for random noise).
        n: number of samples; `num_classes`: `C`.
        n_success: perturbed input still classified correctly.
        n_failure: perturbed input misclassified.
        clean_accuracy, perturbed_accuracy: percent.
        mse_success, mse_failure, mse_all: logit MSE per subset.
        averaging: `"global"` or `"per_batch"`.
        provenance: versions, backend, device, time.
    """

    perturbation: str = "random"
    epsilon: float = 8 / 255
    step_size: float = None
    num_steps: int = None
    n: int = 0
    num_classes: int = None
    n_success: int = 0
    n_failure: int = 0
    clean_accuracy: float = None
    perturbed_accuracy: float = None
    mse_success: float = None
    mse_failure: float = None
    mse_all: float = None
    averaging: str = "global"
    provenance: dict = dataclasses.field(default_factory=dict)


def perception_analysis(
    model,
    x,
    y,
    perturbation="random",
    epsilon=8 / 255,
    step_size=2 / 255,
    num_steps=PGD_EVAL_STEPS,
    batch_size=EVAL_BATCH_SIZE,
    seed=0,
    averaging="global",
):
    """Logit MSE between benign and perturbed inputs, split by outcome.

    The proof-of-concept analysis of the paper's Figures 2 and 5 (see
    docs/algorithms.md#figure2-figure5): perturb every test input (uniform noise `U[-eps, eps]` clipped to
    [0, 1], or PGD-20 with a random start in inference mode), split the
    samples by whether the perturbed input is still classified correctly
    ("success") or not ("failure"), and report `MSE(z(x), z(x_pert))` for each
    subset, plus the clean and perturbed accuracies. The expected pattern:
    failure MSE > success MSE for clean and noise-trained models, failure <
    success for PGD-AT.

    Args:
        model: a Keras model (or an `RPATTrainer`).
        x: images, float in [0, 1].
        y: integer labels.
        perturbation: `"random"`, `"pgd20"`, or any `keras_rpat.attacks.Attack`
            (then `epsilon`, `step_size` and `num_steps` are ignored).
        epsilon: L-inf budget of the perturbation.
        step_size: PGD step (ignored for `"random"`).
        num_steps: PGD steps (ignored for `"random"`).
        batch_size: batch size.
        seed: seed of the noise / PGD start.
        averaging: `"global"` (default, docs/algorithms.md#figure2-averaging): the mean over all
            elements of a subset; `"per_batch"`: the reference code's average
            of per-batch subset means weighted by the full batch size (then a
            subset that is empty in some batch gives `None`, where the
            reference code gives NaN).

    Returns:
        A `PerceptionResult`.

    Example:

    ```python
    res = keras_rpat.evaluation.perception_analysis(model, x_test, y_test, "pgd20")
    print(res.mse_success, res.mse_failure)
    ```

    References:
        - Wang & Liu, Failure Cases Are Better Learned But Boundary Says Sorry,
          ICCV 2025.
    """
    start = time.time()
    if not isinstance(perturbation, attacks_lib.Attack) and perturbation not in PERTURBATIONS:
        raise ValueError(
            f"Unknown `perturbation`: {perturbation!r}. Expected one of {PERTURBATIONS} or a keras_rpat.attacks.Attack."
        )
    if averaging not in ("global", "per_batch"):
        raise ValueError(f"`averaging` must be 'global' or 'per_batch'. Received: averaging={averaging!r}")
    model = _data_checks.evaluation_model(model)
    epsilon = attacks_lib.parse_epsilon(epsilon)
    if isinstance(perturbation, attacks_lib.Attack):
        attack = perturbation
        perturbation = type(attack).__name__
        epsilon = getattr(attack, "epsilon", None)
        step_size = getattr(attack, "step_size", None)
        num_steps = getattr(attack, "num_steps", None)
    elif perturbation == "random":
        attack = attacks_lib.RandomNoise(epsilon=epsilon, seed=seed)
        step_size, num_steps = None, None
    else:
        attack = evaluation_pgd("linf", epsilon, step_size, num_steps, seed)
        step_size, num_steps = attack.step_size, attack.num_steps
    x, y, num_classes, _ = _data_checks.check_data(model, x, y)

    n = len(x)
    clean_ok = np.zeros(n, dtype=bool)
    pert_ok = np.zeros(n, dtype=bool)
    sq_err = np.zeros(n, dtype=np.float64)  # per-sample sum over classes
    batch_ids = np.zeros(n, dtype=np.int64)
    attacked = attack_function(model, attack, clean=True)
    for b, sl in enumerate(batches(n, batch_size)):
        # A data-parallel job splits the batch.
        z, z_pert = rpat_backend.map_rows(attacked, (x[sl], y[sl]), model, (attack.seed_generator,))
        if b == 0:
            check_logits(z)
        clean_ok[sl] = np.argmax(z, -1) == y[sl]
        pert_ok[sl] = np.argmax(z_pert, -1) == y[sl]
        sq_err[sl] = np.sum((z.astype(np.float64) - z_pert.astype(np.float64)) ** 2, axis=-1)
        batch_ids[sl] = b

    def subset_mse(mask):
        if averaging == "global":
            count = int(mask.sum())
            return None if count == 0 else float(sq_err[mask].sum() / (count * num_classes))
        total, weight = 0.0, 0
        for b in np.unique(batch_ids):
            in_batch = batch_ids == b
            sel = mask & in_batch
            count = int(sel.sum())
            if count == 0:
                return None
            total += float(sq_err[sel].sum() / (count * num_classes)) * int(in_batch.sum())
            weight += int(in_batch.sum())
        return total / weight

    return PerceptionResult(
        perturbation=perturbation,
        epsilon=epsilon,
        step_size=step_size,
        num_steps=num_steps,
        n=int(n),
        num_classes=int(num_classes),
        n_success=int(pert_ok.sum()),
        n_failure=int(n - pert_ok.sum()),
        clean_accuracy=percent(clean_ok, n),
        perturbed_accuracy=percent(pert_ok, n),
        mse_success=subset_mse(pert_ok),
        mse_failure=subset_mse(~pert_ok),
        mse_all=subset_mse(np.ones(n, dtype=bool)),
        averaging=averaging,
        provenance=provenance(model, elapsed=time.time() - start),
    )
