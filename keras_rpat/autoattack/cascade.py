"""The AutoAttack cascade on the torch backend (imports torch and pyautoattack).

The cascade is the one of `AutoAttack.run_standard_evaluation`: every attack
runs on the points still correctly classified, in batches of `batch_size`,
each batch re-seeded with `seed`, so results equal pyautoattack's. It is
driven here one attack and one batch at a time so that progress is written to
the state file (`keras_rpat._resume`) after every batch.
"""

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings

import keras
import numpy as np
import torch

import keras_rpat.layers  # noqa: F401  (registers keras_rpat classes for the subprocess)
import keras_rpat.models  # noqa: F401
import keras_rpat.trainer  # noqa: F401
from keras_rpat import _io
from keras_rpat import _resume
from keras_rpat._progress import Progress
from keras_rpat.autoattack.config import AA_NORMS
from keras_rpat.autoattack.config import AutoAttackConfig
from keras_rpat.autoattack.config import AutoAttackWarning
from keras_rpat.autoattack.config import import_autoattack
from keras_rpat.autoattack.torch_bridge import TorchBridge
from keras_rpat.autoattack.torch_bridge import frozen_weights
from keras_rpat.backend import torch_distributed

__all__ = ["perturb", "run", "subprocess_main"]

LOGGER_NAME = "auto-attack"  # pyautoattack's logger


# ---------------------------------------------------------------------------
# Warnings and output of AutoAttack
# ---------------------------------------------------------------------------


class _WarningsHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)

    def emit(self, record):
        warnings.warn(record.getMessage(), AutoAttackWarning, stacklevel=2)


@contextlib.contextmanager
def autoattack_output(verbose):
    """Turns AutoAttack's logged warnings into Python warnings; prints progress if verbose."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.level, logger.propagate)
    handlers = [_WarningsHandler()]
    if verbose:
        stream = logging.StreamHandler(sys.stdout)
        stream.setLevel(logging.INFO)
        stream.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(stream)
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield logger
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ---------------------------------------------------------------------------
# Building AutoAttack
# ---------------------------------------------------------------------------


def build_autoattack(bridge, config, device, logger):
    """A `pyautoattack.AutoAttack` on `bridge` with the config's version, attacks and options."""
    pyautoattack = import_autoattack()
    aa = pyautoattack.AutoAttack(
        bridge,
        norm=AA_NORMS[config.norm],
        eps=config.epsilon,
        version="standard" if config.version == "custom" else config.version,
        seed=config.seed,
        device=device,
    )
    # "custom" runs the listed attacks with the standard version's settings.
    aa.version = config.version
    aa.attacks_to_run = list(config.attacks)
    for component, values in config.options.items():
        _apply_options(getattr(aa, component), component, values)
    aa.logger = logger
    aa.apgd.logger = logger
    aa.apgd_targeted.logger = logger
    return aa


def _apply_options(target, component, values):
    for name, value in values.items():
        if not hasattr(target, name):
            raise ValueError(f"AutoAttack's {component} has no setting {name!r}.")
        setattr(target, name, value)
    if component in ("apgd", "apgd_targeted") and "n_iter" in values:
        # Derived in APGD's constructor from n_iter.
        n_iter = target.n_iter
        target.n_iter_orig = n_iter
        target.n_iter_2 = max(int(0.22 * n_iter), 1)
        target.n_iter_min = max(int(0.06 * n_iter), 1)
        target.size_decr = max(int(0.03 * n_iter), 1)


@contextlib.contextmanager
def _float32_default_dtype():
    """pyautoattack's attacks cast the images to float32 and draw their random starts in torch's default
    dtype: under a float64 default (`torch.set_default_dtype`) they mix the two and fail. A float64
    model still gives them float64 logits and gradients (the iterates stay float32)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def perturb(aa, attack, x, y):
    """One AutoAttack attack on one batch, as in `run_standard_evaluation`."""
    with _float32_default_dtype():
        return _perturb(aa, attack, x, y)


def _perturb(aa, attack, x, y):
    if attack in ("apgd-ce", "apgd-dlr"):
        aa.apgd.loss = "ce" if attack == "apgd-ce" else "dlr"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if attack in ("fab", "fab-t"):
        aa.fab.targeted = attack == "fab-t"
        if attack == "fab-t":
            aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    if attack == "square":
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x, y)
    if attack == "apgd-t":
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x, y)
    raise ValueError(f"Unknown AutoAttack attack {attack!r}")


def sanity_checks(aa, config, head, y_head, logger):
    """AutoAttack's checks on the first batch; caps the target classes at `num_classes - 1`."""
    from pyautoattack import checks  # a submodule of the optional dependency

    attacks, batch_size = config.attacks, config.batch_size
    if config.version != "rand":
        checks.check_randomized(aa.get_logits, head, y_head, bs=batch_size, logger=logger)
    num_classes = checks.check_range_output(aa.get_logits, head, logger=logger)
    checks.check_dynamic(aa.model, head, False, logger=logger)
    checks.check_n_classes(
        num_classes, attacks, aa.apgd_targeted.n_target_classes, aa.fab.n_target_classes, logger=logger
    )
    height, width = head.shape[-2], head.shape[-1]
    if "square" in attacks and height != width:
        # pyautoattack only prints this one.
        logger.warning(
            f"Square Attack may not work properly for non-square images ({height}x{width}); "
            "see https://github.com/fra31/auto-attack/issues/95"
        )
    targeted = [c for a, c in (("apgd-t", aa.apgd_targeted), ("fab-t", aa.fab)) if a in attacks]
    if num_classes > 1 and any(c.n_target_classes > num_classes - 1 for c in targeted):
        for component in targeted:
            component.n_target_classes = min(component.n_target_classes, num_classes - 1)
        warnings.warn(
            f"The model has {num_classes} classes, so the targeted attacks use "
            f"{num_classes - 1} target classes (AutoAttack's standard version uses 9).",
            AutoAttackWarning,
            stacklevel=5,
        )


# ---------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------


def fraction(flags):
    """Exact fraction of True flags (not a float32 mean)."""
    return int(flags.sum()) / len(flags)


class _Cascade:
    """One AutoAttack evaluation: tensors, state file, AutoAttack object, logger."""

    def __init__(self, model, x, y, config):
        self.config = config
        self.bridge = TorchBridge(model, data_format=config.data_format)
        self.device = self.bridge.device
        self.channels_last = self.bridge.data_format == "channels_last"
        x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self.channels_last else x, dtype=np.float32)
        self.x = torch.from_numpy(x_nchw)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.n = len(self.x)
        key = {} if config.state_path is None else _resume.autoattack_key(config, model, x, y)
        self.file = _resume.StateFile(config.state_path, _resume.AUTOATTACK, key)
        self.state = self.file.state
        self.agree_with_other_ranks()

    def agree_with_other_ranks(self):
        """In a data-parallel job, every rank continues from the furthest state any rank saved.

        Every rank saves the same state after each round (its own file, in its
        own folder under the CLI), so after an interruption they are at most
        one round apart.
        """
        state = self.state
        current = state["current"] or {}
        progress = (state["complete"], len(state["done"]), state["robust"] is not None, current.get("next_batch", -1))
        self.state = self.file.state = torch_distributed.most_advanced(progress, state)
        self.resumed = self.state["robust"] is not None  # earlier progress (the clean pass at least) loaded

    def batch(self, idx):
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def clean_pass(self, aa, logger):
        """Flags of the correctly classified images (from the state file when resuming)."""
        state, bs = self.state, self.config.batch_size
        if state["robust"] is not None:
            robust = torch.tensor(state["robust"], dtype=torch.bool)
            logger.info(
                f"resuming from {self.config.state_path}: clean accuracy {state['clean_accuracy']:.2%}, "
                f"robust accuracy {fraction(robust):.2%}, done: {state['done']}"
            )
            return robust
        robust = torch.zeros(self.n, dtype=torch.bool)
        for _, mine in torch_distributed.dealt_batches(0, math.ceil(self.n / bs)):
            if mine is not None:
                xb, yb = self.batch(slice(mine * bs, min((mine + 1) * bs, self.n)))
                robust[mine * bs : mine * bs + len(xb)] = yb.eq(aa.get_logits(xb).max(dim=1)[1]).cpu()
            robust = torch_distributed.any_rank(robust)
        state["clean_accuracy"] = fraction(robust)
        state["accuracy"]["clean"] = state["clean_accuracy"]
        state["robust"] = robust.tolist()
        self.file.save()
        logger.info(f"initial accuracy: {state['clean_accuracy']:.2%}")
        return robust

    def run_attack(self, aa, attack, robust, x_adv, logger):
        """Runs one attack on the still-robust images, batch by batch, saving after each.

        In a data-parallel job the batches are dealt to the ranks in turn
        (`torch_distributed.dealt_batches`) and the fooled flags gathered after
        every round, so each batch, and each image's outcome, is the
        one-process one. Returns the rows of `x_adv` this rank wrote.
        """
        state, bs = self.state, self.config.batch_size
        current = state["current"]
        if current is None or current["attack"] != attack:
            order = torch.nonzero(robust, as_tuple=False).flatten().tolist()
            current = state["current"] = {"attack": attack, "order": order, "next_batch": 0}
            self.file.save()
        order = torch.tensor(current["order"], dtype=torch.long)
        n_batches = math.ceil(len(order) / bs)
        if len(order) == 0:
            logger.info("no robust datapoints left, skipping remaining attacks")
        first = current["next_batch"]
        progress = Progress(f"AutoAttack {attack}", len(order) - min(first * bs, len(order)))
        written = torch.zeros(self.n, dtype=torch.bool)
        done = first
        for stop, mine in torch_distributed.dealt_batches(first, n_batches):
            fooled = torch.zeros(self.n, dtype=torch.bool)
            if mine is not None:
                idx = order[mine * bs : (mine + 1) * bs]
                xb, yb = self.batch(idx)
                adv = perturb(aa, attack, xb, yb)
                hit = (~yb.eq(aa.get_logits(adv).max(dim=1)[1])).cpu()
                fooled[idx[hit]] = True
                if x_adv is not None:
                    x_adv[idx[hit]] = adv[hit.to(adv.device)].detach().cpu()
                    written[idx[hit]] = True
            fooled = torch_distributed.any_rank(fooled)
            robust &= ~fooled
            current["next_batch"] = stop
            state["robust"] = robust.tolist()
            self.file.save()
            images = min(stop * bs, len(order)) - min(done * bs, len(order))
            batches = f"{stop}/{n_batches}" if stop == done + 1 else f"{done + 1}-{stop}/{n_batches}"
            logger.info(f"{attack} - {batches} - {int(fooled.sum())} out of {images} successfully perturbed")
            logger.info(progress.line(min(stop * bs, len(order)) - first * bs, fraction(robust)))
            done = stop
        state["accuracy"][attack] = fraction(robust)
        state["done"].append(attack)
        state["current"] = None
        self.file.save()
        return written

    def log_perturbation(self, x_adv, logger):
        delta = (x_adv - self.x).reshape(self.n, -1)
        res = delta.abs().max(1)[0] if self.config.norm == "linf" else (delta**2).sum(-1).sqrt()
        logger.info(
            f"max {AA_NORMS[self.config.norm]} perturbation: {res.max().item():.5f}, nan in tensor: "
            f"{int((x_adv != x_adv).sum())}, max: {x_adv.max().item():.5f}, "
            f"min: {x_adv.min().item():.5f}"
        )

    def to_numpy_layout(self, x_adv):
        x_adv = x_adv.numpy()
        return np.ascontiguousarray(x_adv.transpose(0, 2, 3, 1)) if self.channels_last else x_adv


def run(model, x, y, config):
    """Runs the cascade in this (torch) process; returns `(robust_accuracy_percent, x_adv)`.

    Args:
        model: a Keras model on the torch backend.
        x, y: checked images (the model's layout) and int64 labels.
        config: an `AutoAttackConfig`.

    In a data-parallel job (torchrun) every rank calls it on the whole set:
    the batches are dealt to the ranks and the flags gathered after each
    round, every rank returns the one-process result, rank 0 prints.
    """
    primary = torch_distributed.is_primary()
    with warnings.catch_warnings():
        if not primary:  # rank 0 prints AutoAttack's progress and warnings
            warnings.simplefilter("ignore", AutoAttackWarning)
        return _run(model, x, y, config, primary)


def _run(model, x, y, config, primary):
    from pyautoattack import checks  # a submodule of the optional dependency

    cascade = _Cascade(model, x, y, config)
    state = cascade.state
    with autoattack_output(config.verbose and primary) as logger, frozen_weights(cascade.bridge.keras_model):
        if state["complete"]:
            acc = 100.0 * sum(state["robust"]) / cascade.n
            logger.info(f"AutoAttack state {config.state_path} is complete: robust accuracy {acc / 100:.2%}")
            return acc, None
        with torch.no_grad():
            aa = build_autoattack(cascade.bridge, config, cascade.device, logger)
            logger.info(f"using {config.version} version including {', '.join(config.attacks)}")
            head, y_head = cascade.batch(slice(0, config.batch_size))
            sanity_checks(aa, config, head, y_head, logger)
            robust = cascade.clean_pass(aa, logger)
            x_adv = cascade.x.clone() if config.return_adversarial and not cascade.resumed else None
            started = time.time()
            written = torch.zeros(cascade.n, dtype=torch.bool)
            for attack in config.attacks:
                if attack in state["done"]:
                    continue
                written |= cascade.run_attack(aa, attack, robust, x_adv, logger)
                logger.info(
                    f"robust accuracy after {attack.upper()}: {state['accuracy'][attack]:.2%} "
                    f"(total time {time.time() - started:.1f} s)"
                )
            checks.check_square_sr(state["accuracy"], logger=logger)
            state["complete"] = True
            cascade.file.save()
            accuracy = fraction(robust)
            if x_adv is not None:
                x_adv = torch_distributed.merge_rows(x_adv, written)
                cascade.log_perturbation(x_adv, logger)
            logger.info(f"robust accuracy: {accuracy:.2%}")
    return 100.0 * accuracy, None if x_adv is None else cascade.to_numpy_layout(x_adv)


# ---------------------------------------------------------------------------
# The PyTorch subprocess (started by keras_rpat.autoattack.subprocess)
# ---------------------------------------------------------------------------


def subprocess_main(folder, inputs=None):
    """Entry point of the PyTorch subprocess: evaluates the files in `folder`.

    Reads `config.json` (an `AutoAttackConfig`) in `folder`, `model.keras` and
    `data.npz` in `inputs` (default `folder`), writes `result.json` (accuracy,
    AutoAttack's warnings, an error if any) and `x_adv.npy` in `folder`. With
    torchrun's variables set (one subprocess per replica of a tf.distribute
    job) it first joins their `torch.distributed` job.
    """
    inputs = folder if inputs is None else inputs
    with open(os.path.join(folder, "config.json")) as f:
        config = AutoAttackConfig.from_dict(json.load(f))
    data = np.load(os.path.join(inputs, "data.npz"))
    result = {"warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AutoAttackWarning)
        try:
            torch_distributed.initialize()  # before the model is loaded: nccl picks the GPU
            model = keras.saving.load_model(os.path.join(inputs, "model.keras"), compile=False, safe_mode=False)
            import_autoattack()
            accuracy, x_adv = run(model, data["x"], data["y"], config)
            result["accuracy"] = accuracy
            result["has_adversarial"] = x_adv is not None
            if x_adv is not None:
                np.save(os.path.join(folder, "x_adv.npy"), x_adv)
        except (ValueError, ImportError) as e:
            result["error"], result["error_type"] = (
                str(e),
                ("ImportError" if isinstance(e, ImportError) else "ValueError"),
            )
        except Exception as e:  # reported to the parent with its type
            result["error"], result["error_type"] = f"{type(e).__name__}: {e}", type(e).__name__
    # AutoAttack's own checks (and ours), not the subprocess' library noise.
    result["warnings"] = [str(w.message) for w in caught if w.category.__name__ == "AutoAttackWarning"]
    _io.atomic_write_json(os.path.join(folder, "result.json"), result)
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.stderr.write("usage: python -m keras_rpat.autoattack.cascade FOLDER [INPUTS]\n")
        sys.exit(2)
    sys.exit(subprocess_main(*sys.argv[1:]))
