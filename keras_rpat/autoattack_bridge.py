"""AutoAttack for Keras models, through PyTorch.

`pyautoattack` attacks `torch.nn.Module`s that take NCHW float tensors in
[0, 1] and return logits. `TorchBridge` presents a Keras model running on the
torch backend that way (no weight copies; a transpose view when the model is
channels-last), and `run_autoattack` runs the AutoAttack cascade on it. Under
any other backend (TensorFlow) `run_autoattack` saves the model to a temporary
`.keras` file (Keras files are backend-independent) and evaluates it in a
subprocess with `KERAS_BACKEND=torch`; the caller does nothing different.

The cascade is the one of `AutoAttack.run_standard_evaluation` (every attack
runs on the points still correctly classified, in batches of `batch_size`,
each batch re-seeded with `seed`), so results equal pyautoattack's. It is
driven here, one attack and one batch at a time, so that progress can be
written to a state file after every batch and an interrupted evaluation
resumes exactly where it stopped: pyautoattack 0.2.0's own `state_path`
cannot resume (it writes the attack set as a string, so reloading always
fails its consistency check, and its resume branch leaves `y_adv` undefined).

AutoAttack's sanity checks (probability outputs, randomised or dynamic
defences, too many target classes, zero gradients, Square beating the
gradient attacks) are logged by pyautoattack; here they are re-issued as
`AutoAttackWarning`s, also from the subprocess, so they always reach the user.

References:
    - Croce & Hein, Reliable evaluation of adversarial robustness with an
      ensemble of diverse parameter-free attacks, ICML 2020.
"""

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

import keras
import numpy as np
import torch

from keras_rpat import attacks as attacks_lib
from keras_rpat.evaluation import _atomic_write_json
from keras_rpat.evaluation import _check_data
from keras_rpat.evaluation import infer_data_format

__all__ = [
    "AA_ATTACKS",
    "AA_VERSIONS",
    "AutoAttackWarning",
    "TorchBridge",
    "resolve_attacks",
    "run_autoattack",
]

AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
_VERSION_ATTACKS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
}
_AA_NORMS = {"linf": "Linf", "l2": "L2"}
_COMPONENTS = {
    "apgd": "apgd",
    "apgd-ce": "apgd",
    "apgd-dlr": "apgd",
    "apgd_targeted": "apgd_targeted",
    "apgd-t": "apgd_targeted",
    "fab": "fab",
    "fab-t": "fab",
    "square": "square",
}
_STATE_FORMAT = "keras_rpat.autoattack_state"
_LOGGER_NAME = "auto-attack"  # pyautoattack's logger


class AutoAttackWarning(UserWarning):
    """A sanity-check warning of AutoAttack (see its `flags_doc.md`)."""


def _import_autoattack():
    try:
        import pyautoattack
    except ImportError as e:
        raise ImportError(
            "AutoAttack evaluation needs the `pyautoattack` package. Install it "
            "with `pip install pyautoattack`."
        ) from e
    return pyautoattack


# ---------------------------------------------------------------------------
# The bridge module
# ---------------------------------------------------------------------------


def _model_device(model):
    for v in getattr(model, "weights", []):
        value = getattr(v, "value", None)
        if isinstance(value, torch.Tensor):
            return value.device
    from keras.src.backend.torch.core import get_device

    return torch.device(get_device())


class TorchBridge(torch.nn.Module):
    """A Keras model (torch backend) as a `torch.nn.Module` for AutoAttack.

    Takes NCHW float tensors in [0, 1] and returns the Keras model's logits.
    The input is permuted to NHWC (a view, not a copy) only when the model is
    channels-last. The Keras model is always called with `training=False`, so
    `.eval()` / `.train()` on the bridge change nothing, and it runs on the
    device of the model's weights (`bridge.device`). The Keras model is not
    registered as a submodule, so `bridge.to(...)` does not move it.

    Args:
        model: a Keras model mapping images in [0, 1] to logits, built under
            `KERAS_BACKEND=torch`.
        data_format: `"channels_last"` or `"channels_first"`; `None` infers it
            from the first convolution (or the input shape).

    Example:

    ```python
    bridge = keras_rpat.autoattack_bridge.TorchBridge(model)
    logits = bridge(torch.rand(8, 3, 32, 32))
    ```
    """

    def __init__(self, model, data_format=None):
        super().__init__()
        if keras.config.backend() != "torch":
            raise ValueError(
                "TorchBridge needs a Keras model on the torch backend; the active "
                f"backend is {keras.config.backend()!r}. Use "
                "keras_rpat.autoattack_bridge.run_autoattack, which evaluates "
                "models of other backends in a PyTorch subprocess."
            )
        inner = getattr(model, "evaluation_model", None)
        if isinstance(inner, keras.Model):
            model = inner
        # Not a registered submodule: `.train()`, `.eval()` and `.to()` leave
        # the Keras model alone.
        object.__setattr__(self, "keras_model", model)
        self.data_format = infer_data_format(model, data_format)

    @property
    def device(self):
        """The device of the model's weights."""
        return _model_device(self.keras_model)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(
                f"TorchBridge expects NCHW image batches. Received a tensor of shape {tuple(x.shape)}"
            )
        if self.data_format == "channels_last":
            x = x.permute(0, 2, 3, 1)
        return self.keras_model(x, training=False)

    def extra_repr(self):
        return f"keras_model={self.keras_model.name!r}, data_format={self.data_format!r}"


@contextlib.contextmanager
def _frozen_weights(model):
    """Stops gradients into the weights (AutoAttack needs input gradients only)."""
    frozen = []
    try:
        for v in getattr(model, "weights", []):
            value = getattr(v, "value", None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                value.requires_grad_(False)
                frozen.append(value)
        yield
    finally:
        for value in frozen:
            value.requires_grad_(True)


# ---------------------------------------------------------------------------
# Warnings and output of AutoAttack
# ---------------------------------------------------------------------------


class _WarningsHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)

    def emit(self, record):
        warnings.warn(record.getMessage(), AutoAttackWarning, stacklevel=2)


@contextlib.contextmanager
def _autoattack_output(verbose):
    """Turns AutoAttack's logged warnings into Python warnings; prints progress if verbose."""
    logger = logging.getLogger(_LOGGER_NAME)
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
# Arguments
# ---------------------------------------------------------------------------


def resolve_attacks(version="standard", attacks_to_run=None):
    """Returns the list of AutoAttack attacks of a version (or a custom list).

    Args:
        version: `"standard"`, `"plus"`, `"rand"` or `"custom"`.
        attacks_to_run: for `"custom"`, a list (or comma-separated string) of
            `"apgd-ce"`, `"apgd-t"`, `"fab-t"`, `"square"`, `"apgd-dlr"`,
            `"fab"`.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f"Unknown AutoAttack `version`: {version!r}. Expected one of {AA_VERSIONS}.")
    if isinstance(attacks_to_run, str):
        attacks_to_run = [a for a in attacks_to_run.replace(" ", "").split(",") if a]
    if attacks_to_run is not None:
        names = []
        for name in attacks_to_run:
            key = str(name).lower()
            if key not in AA_ATTACKS:
                raise ValueError(f"Unknown AutoAttack attack {name!r}. Valid: {list(AA_ATTACKS)}.")
            if key not in names:
                names.append(key)
        if not names:
            raise ValueError(f"`attacks_to_run` must name at least one of {list(AA_ATTACKS)}.")
        attacks_to_run = names
    if version == "custom":
        if attacks_to_run is None:
            raise ValueError(
                "version='custom' needs `attacks_to_run`, e.g. "
                "attacks_to_run=['apgd-ce', 'apgd-t']. Valid names: " + ", ".join(AA_ATTACKS)
            )
        return attacks_to_run
    if attacks_to_run is not None and attacks_to_run != _VERSION_ATTACKS[version]:
        raise ValueError(
            f"AutoAttack version={version!r} runs {_VERSION_ATTACKS[version]}; to run "
            f"{attacks_to_run}, pass version='custom'."
        )
    return list(_VERSION_ATTACKS[version])


def _check_options(options):
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(
            "`options` must be a dict such as {'apgd': {'n_iter': 10}}. "
            f"Received: options={options!r}"
        )
    out = {}
    for key, values in options.items():
        component = _COMPONENTS.get(str(key).lower())
        if component is None or not isinstance(values, dict):
            raise ValueError(
                f"`options` maps one of {sorted(set(_COMPONENTS))} to a dict of attack "
                f"attributes. Received: {key!r}: {values!r}"
            )
        out.setdefault(component, {}).update(values)
    return out


def _build_autoattack(bridge, norm, epsilon, version, attacks, seed, options, device):
    pyautoattack = _import_autoattack()
    aa = pyautoattack.AutoAttack(
        bridge,
        norm=norm,
        eps=epsilon,
        version="standard" if version == "custom" else version,
        seed=seed,
        device=device,
    )
    # "custom" runs the listed attacks with the standard version's settings.
    aa.version = version
    aa.attacks_to_run = list(attacks)
    for component, values in options.items():
        target = getattr(aa, component)
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
    return aa


def _perturb(aa, attack, x, y):
    """One AutoAttack attack on one batch, as in `run_standard_evaluation`."""
    if attack == "apgd-ce":
        aa.apgd.loss = "ce"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if attack == "apgd-dlr":
        aa.apgd.loss = "dlr"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x, y)
    if attack == "fab":
        aa.fab.targeted = False
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    if attack == "square":
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x, y)
    if attack == "apgd-t":
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x, y)
    if attack == "fab-t":
        aa.fab.targeted = True
        aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    raise ValueError(f"Unknown AutoAttack attack {attack!r}")


# ---------------------------------------------------------------------------
# State file
# ---------------------------------------------------------------------------


def _sha256_arrays(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _new_state(key):
    return {
        "format": _STATE_FORMAT,
        "version": 1,
        **key,
        "clean_accuracy": None,
        "robust": None,
        "done": [],
        "accuracy": {},
        "current": None,
        "complete": False,
    }


def _load_state(path, key):
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Could not read the AutoAttack state file {path}: {e}. Delete it to start "
            "the evaluation afresh."
        ) from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(
            f"{path} is not a keras_rpat AutoAttack state file. Delete it or pass "
            "another `state_path`."
        )
    different = [k for k in key if state.get(k) != key[k]]
    if different:
        details = ", ".join(f"{k}: file {state.get(k)!r} vs now {key[k]!r}" for k in different if k not in ("data_sha256", "model_sha256"))
        if "data_sha256" in different:
            details += (", " if details else "") + "different images or labels"
        if "model_sha256" in different:
            details += (", " if details else "") + "different model weights"
        raise ValueError(
            f"The AutoAttack state file {path} belongs to another evaluation ({details}). "
            "Delete it to start afresh, or pass another `state_path`."
        )
    return state


# ---------------------------------------------------------------------------
# The cascade (torch backend)
# ---------------------------------------------------------------------------


def _fraction(flags):
    """Exact fraction of True flags (not a float32 mean)."""
    return int(flags.sum()) / len(flags)


def _run_torch(
    model, x, y, norm, epsilon, version, attacks, batch_size, state_path, seed, verbose, options, data_format,
    return_adversarial,
):
    from pyautoattack import checks

    bridge = TorchBridge(model, data_format=data_format)
    device = bridge.device
    channels_last = bridge.data_format == "channels_last"
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2) if channels_last else x, dtype=np.float32)
    x_t = torch.from_numpy(x_nchw)
    y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    n = len(x_t)

    state, resumed = None, False
    if state_path is not None:
        state_path = os.path.abspath(os.fspath(state_path))
        key = {
            "norm": norm,
            "epsilon": float(epsilon),
            "attacks": list(attacks),
            "version": version,
            "seed": seed,
            "n": int(n),
            "batch_size": int(batch_size),
            "options": options,
            "data_sha256": _sha256_arrays([x, y]),
            "model_sha256": _sha256_arrays(model.get_weights()),
        }
        if os.path.exists(state_path):
            state = _load_state(state_path, key)
            resumed = state["robust"] is not None
        else:
            state = _new_state(key)
    if state is None:
        state = _new_state({})

    def save():
        if state_path is not None:
            _atomic_write_json(state_path, state)

    with _autoattack_output(verbose) as logger, _frozen_weights(bridge.keras_model):
        if state["complete"]:
            acc = 100.0 * sum(state["robust"]) / n
            logger.info(f"AutoAttack state {state_path} is complete: robust accuracy {acc / 100:.2%}")
            return acc, None
        with torch.no_grad():
            head = x_t[:batch_size].to(device)
            aa = _build_autoattack(bridge, _AA_NORMS[norm], epsilon, version, attacks, seed, options, device)
            aa.logger = logger
            aa.apgd.logger = logger
            aa.apgd_targeted.logger = logger
            logger.info(f"using {version} version including {', '.join(attacks)}")
            if version != "rand":
                checks.check_randomized(aa.get_logits, head, y_t[:batch_size].to(device), bs=batch_size, logger=logger)
            num_classes = checks.check_range_output(aa.get_logits, head, logger=logger)
            checks.check_dynamic(aa.model, head, False, logger=logger)
            checks.check_n_classes(num_classes, attacks, aa.apgd_targeted.n_target_classes, aa.fab.n_target_classes, logger=logger)
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
                    stacklevel=4,
                )

            if state["robust"] is None:
                robust = torch.zeros(n, dtype=torch.bool)
                for start in range(0, n, batch_size):
                    end = min(start + batch_size, n)
                    out = aa.get_logits(x_t[start:end].to(device)).max(dim=1)[1]
                    robust[start:end] = y_t[start:end].to(device).eq(out).cpu()
                state["clean_accuracy"] = _fraction(robust)
                state["accuracy"]["clean"] = state["clean_accuracy"]
                state["robust"] = robust.tolist()
                save()
                logger.info(f"initial accuracy: {state['clean_accuracy']:.2%}")
            else:
                robust = torch.tensor(state["robust"], dtype=torch.bool)
                logger.info(
                    f"resuming from {state_path}: clean accuracy {state['clean_accuracy']:.2%}, "
                    f"robust accuracy {_fraction(robust):.2%}, done: {state['done']}"
                )

            x_adv = x_t.clone() if return_adversarial and not resumed else None
            started = time.time()
            for attack in attacks:
                if attack in state["done"]:
                    continue
                current = state["current"]
                if current is None or current["attack"] != attack:
                    order = torch.nonzero(robust, as_tuple=False).flatten().tolist()
                    current = state["current"] = {"attack": attack, "order": order, "next_batch": 0}
                    save()
                order = torch.tensor(current["order"], dtype=torch.long)
                n_batches = math.ceil(len(order) / batch_size)
                if len(order) == 0:
                    logger.info("no robust datapoints left, skipping remaining attacks")
                for b in range(current["next_batch"], n_batches):
                    idx = order[b * batch_size : (b + 1) * batch_size]
                    xb = x_t[idx].to(device)
                    yb = y_t[idx].to(device)
                    adv = _perturb(aa, attack, xb, yb)
                    out = aa.get_logits(adv).max(dim=1)[1]
                    fooled = (~yb.eq(out)).cpu()
                    robust[idx[fooled]] = False
                    if x_adv is not None:
                        x_adv[idx[fooled]] = adv[fooled.to(adv.device)].detach().cpu()
                    current["next_batch"] = b + 1
                    state["robust"] = robust.tolist()
                    save()
                    logger.info(
                        f"{attack} - {b + 1}/{n_batches} - {int(fooled.sum())} out of "
                        f"{len(idx)} successfully perturbed"
                    )
                state["accuracy"][attack] = _fraction(robust)
                state["done"].append(attack)
                state["current"] = None
                save()
                logger.info(
                    f"robust accuracy after {attack.upper()}: {state['accuracy'][attack]:.2%} "
                    f"(total time {time.time() - started:.1f} s)"
                )
            checks.check_square_sr(state["accuracy"], logger=logger)
            state["complete"] = True
            save()
            accuracy = _fraction(robust)
            if x_adv is not None:
                if norm == "linf":
                    res = (x_adv - x_t).abs().reshape(n, -1).max(1)[0]
                else:
                    res = ((x_adv - x_t) ** 2).reshape(n, -1).sum(-1).sqrt()
                logger.info(
                    f"max {_AA_NORMS[norm]} perturbation: {res.max().item():.5f}, nan in tensor: "
                    f"{int((x_adv != x_adv).sum())}, max: {x_adv.max().item():.5f}, "
                    f"min: {x_adv.min().item():.5f}"
                )
            logger.info(f"robust accuracy: {accuracy:.2%}")

    if x_adv is None:
        return 100.0 * accuracy, None
    x_adv = x_adv.numpy()
    if channels_last:
        x_adv = np.ascontiguousarray(x_adv.transpose(0, 2, 3, 1))
    return 100.0 * accuracy, x_adv


# ---------------------------------------------------------------------------
# Other backends: a PyTorch subprocess
# ---------------------------------------------------------------------------


def _run_subprocess(model, x, y, config, verbose, return_adversarial):
    with tempfile.TemporaryDirectory(prefix="keras_rpat_autoattack_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        try:
            model.save(model_path)
        except Exception as e:
            raise ValueError(
                f"AutoAttack under the {keras.config.backend()} backend evaluates the model "
                "in a PyTorch subprocess and needs to save it as a .keras file, which "
                f"failed: {type(e).__name__}: {e}. Make the model serialisable (register "
                "custom layers with keras.saving.register_keras_serializable) or run with "
                "KERAS_BACKEND=torch."
            ) from e
        np.savez(os.path.join(tmp, "data.npz"), x=x, y=y)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({**config, "return_adversarial": bool(return_adversarial)}, f)
        env = dict(os.environ)
        env["KERAS_BACKEND"] = "torch"
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        entry = "import sys; from keras_rpat.autoattack_bridge import _subprocess_main; sys.exit(_subprocess_main(sys.argv[1]))"
        cmd = [sys.executable, "-c", entry, tmp]
        # stdout (AutoAttack's progress) is forwarded line by line when verbose,
        # through `sys.stdout` so notebooks and Click runners see it.
        tail = collections.deque(maxlen=25)
        with open(os.path.join(tmp, "stderr.txt"), "w+") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if verbose:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
            err.seek(0)
            tail.extend(err.read().strip().splitlines()[-25:])
        result_path = os.path.join(tmp, "result.json")
        if not os.path.exists(result_path):
            lines = "\n".join(tail)
            raise RuntimeError(
                "AutoAttack failed in its PyTorch subprocess (exit code "
                f"{proc.returncode}). Its output ends with:\n{lines}"
            )
        with open(result_path) as f:
            result = json.load(f)
        for message in result.get("warnings", []):
            warnings.warn(message, AutoAttackWarning, stacklevel=3)
        if result.get("error"):
            kind = {"ValueError": ValueError, "ImportError": ImportError}.get(result.get("error_type"), RuntimeError)
            raise kind(result["error"])
        x_adv = None
        adv_path = os.path.join(tmp, "x_adv.npy")
        if result.get("has_adversarial") and os.path.exists(adv_path):
            x_adv = np.load(adv_path)
        return float(result["accuracy"]), x_adv


def _subprocess_main(folder):
    """Entry point of the PyTorch subprocess: evaluates the files in `folder`."""
    import keras_rpat.trainer  # noqa: F401  (registers keras_rpat classes)
    import keras_rpat.layers  # noqa: F401
    import keras_rpat.models  # noqa: F401

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    data = np.load(os.path.join(folder, "data.npz"))
    result = {"warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AutoAttackWarning)
        try:
            model = keras.saving.load_model(os.path.join(folder, "model.keras"), compile=False, safe_mode=False)
            accuracy, x_adv = run_autoattack(
                model,
                data["x"],
                data["y"],
                norm=config["norm"],
                epsilon=config["epsilon"],
                version=config["version"],
                attacks_to_run=config["attacks_to_run"],
                batch_size=config["batch_size"],
                state_path=config["state_path"],
                seed=config["seed"],
                verbose=config["verbose"],
                options=config["options"],
                data_format=config["data_format"],
                return_adversarial=config["return_adversarial"],
            )
            result["accuracy"] = accuracy
            result["has_adversarial"] = x_adv is not None
            if x_adv is not None:
                np.save(os.path.join(folder, "x_adv.npy"), x_adv)
        except (ValueError, ImportError) as e:
            result["error"], result["error_type"] = str(e), ("ImportError" if isinstance(e, ImportError) else "ValueError")
        except Exception as e:  # reported to the parent with its type
            result["error"], result["error_type"] = f"{type(e).__name__}: {e}", type(e).__name__
    # AutoAttack's own checks (and ours), not the subprocess' library noise.
    result["warnings"] = [str(w.message) for w in caught if w.category.__name__ == "AutoAttackWarning"]
    _atomic_write_json(os.path.join(folder, "result.json"), result)
    return 0


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def run_autoattack(
    model,
    x,
    y,
    norm="linf",
    epsilon=8 / 255,
    version="standard",
    attacks_to_run=None,
    batch_size=250,
    state_path=None,
    seed=0,
    verbose=False,
    options=None,
    data_format=None,
    return_adversarial=True,
):
    """Runs AutoAttack on a Keras model; returns `(robust_accuracy, x_adv)`.

    Args:
        model: a Keras model mapping images in [0, 1] to logits (an
            `RPATTrainer` is evaluated through its `evaluation_model`).
        x: images in the model's layout (NHWC for channels-last models),
            float in [0, 1].
        y: integer labels `(N,)`.
        norm: `"linf"` or `"l2"`.
        epsilon: budget (`8/255`, L2 `128/255`).
        version: `"standard"` (APGD-CE, APGD-T, FAB-T, Square; REFERENCE §4),
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
    acc, x_adv = keras_rpat.autoattack_bridge.run_autoattack(
        model, x_test[:1000], y_test[:1000], norm="linf", epsilon=8/255)
    ```

    Under TensorFlow on a GPU, let TensorFlow grow its memory
    (`TF_FORCE_GPU_ALLOW_GROWTH=true`) so the PyTorch subprocess has room.

    References:
        - Croce & Hein, Reliable evaluation of adversarial robustness with an
          ensemble of diverse parameter-free attacks, ICML 2020.
    """
    inner = getattr(model, "evaluation_model", None)
    if isinstance(inner, keras.Model):
        model = inner
    norm = attacks_lib._canonical_norm(norm)
    epsilon = attacks_lib._positive(epsilon, "epsilon")
    attacks = resolve_attacks(version, attacks_to_run)
    options = _check_options(options)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    batch_size = int(batch_size)
    seed = None if seed is None else int(seed)
    # Images in [0, 1] of the model's input shape, labels within its classes.
    x, y, _, data_format = _check_data(model, x, y, data_format)
    if keras.config.backend() == "torch":
        _import_autoattack()
        return _run_torch(
            model, x, y, norm, epsilon, version, attacks, batch_size, state_path, seed, verbose, options,
            data_format, return_adversarial,
        )
    import importlib.util

    if importlib.util.find_spec("pyautoattack") is None:
        _import_autoattack()  # raises the ImportError that names the package
    config = {
        "norm": norm,
        "epsilon": epsilon,
        "version": version,
        "attacks_to_run": attacks if version == "custom" else None,
        "batch_size": batch_size,
        "state_path": None if state_path is None else os.path.abspath(os.fspath(state_path)),
        "seed": seed,
        "verbose": bool(verbose),
        "options": options,
        "data_format": data_format,
    }
    return _run_subprocess(model, x, y, config, verbose, return_adversarial)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m keras_rpat.autoattack_bridge FOLDER\n")
        sys.exit(2)
    sys.exit(_subprocess_main(sys.argv[1]))
