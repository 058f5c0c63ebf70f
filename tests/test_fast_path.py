"""The torch fast path: lowered models and the fast train step equal the Keras path."""

import logging
import os
import random

import keras_rpat  # noqa: F401  (sets the default backend)

import keras
import numpy as np
import pytest

from keras_rpat import attacks, layers, losses, models, optimizers, presets
from keras_rpat.trainer import RPATTrainer
from testing import float64_precision  # noqa: E402

BACKEND = keras.config.backend()
HERE = os.path.dirname(os.path.abspath(__file__))
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the fast path is the torch backend's")

PRESETS = ["pgd_at", "trades", "mart", "consistency_at"]
PRESETS += ["pgd_at+rpat", "trades+rpat", "mart+rpat", "consistency_at+rpat", "rebat", "rpat_plus_plus"]
MODELS = ["resnet18", "resnet18_bottleneck", "preact_resnet18", "wide_resnet10_2"]


def build(name, size=16, data_format="channels_last", seed=0):
    """A model with non-trivial BatchNorm parameters and statistics.

    Default BatchNorm values (gamma 1, beta 0, mean 0, variance 1) would hide
    a swapped or ignored parameter, and betas starting at 0 are updated by
    gradients that are mostly cancellation noise, which no two float32
    implementations reproduce to 1e-5 relative.
    """
    keras.utils.set_random_seed(seed)
    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    if name.startswith("wide_resnet10"):
        model = models.wide_resnet(depth=10, widen_factor=2, num_classes=10, input_shape=shape, data_format=data_format)
    else:
        model = models.get(name, num_classes=10, input_shape=shape, data_format=data_format)
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNorm):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.uniform(-0.2, 0.2, n))
            layer.moving_mean.assign(rng.uniform(-0.2, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n))
    return model


def batches(n_batches, batch=8, size=16, seed=1):
    rng = np.random.default_rng(seed)
    return [
        (rng.uniform(size=(batch, size, size, 3)).astype("float32"), rng.integers(0, 10, size=(batch,)))
        for _ in range(n_batches)
    ]


def rel(a, b):
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def np_(t):
    return keras.ops.convert_to_numpy(t)


# --------------------------------------------------------------------------
# The lowered model computes the Keras model's function
# --------------------------------------------------------------------------
@torch_only
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", MODELS)
def test_lowered_model_matches_keras(name, data_format):
    import torch

    from keras_rpat.backend import torch_lowering

    model = build(name, data_format=data_format)
    features = models.feature_model(model)
    lowered = torch_lowering.lower(features)
    torch_lowering.relayout_kernels(model)
    x = torch.rand((8,) + tuple(model.inputs[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    stats = [np_(v) for v in model.non_trainable_weights]

    def run(fn, training):
        for v, s in zip(model.non_trainable_weights, stats):
            v.assign(s)
        outputs = fn(x, training=training)
        total = sum((o.double() ** 2).sum() * (i + 1) for i, o in enumerate(outputs))
        grads = torch.autograd.grad(total, [v.value for v in model.trainable_weights])
        after = [np_(v) for v in model.non_trainable_weights]
        return [o.detach().numpy() for o in outputs], [g.numpy() for g in grads], after

    for training in (False, True):
        ours, ours_grads, ours_stats = run(lowered, training)
        theirs, theirs_grads, theirs_stats = run(features, training)
        assert [o.shape for o in ours] == [o.shape for o in theirs]  # logits, penultimate, third_to_last
        for a, b in zip(theirs + theirs_stats, ours + ours_stats):
            assert rel(a, b) < 2e-5
        if training:
            # A conv followed by train-mode BN has a weight gradient that is
            # mostly cancellation; torch's fused BN backward (the authors'
            # numerics, checked per variable in
            # test_lowered_gradients_match_plain_pytorch) and Keras' op-by-op
            # one round it differently, so here they agree as a whole.
            flat = lambda gs: np.concatenate([g.ravel() for g in gs]).astype("float64")  # noqa: E731
            a, b = flat(theirs_grads), flat(ours_grads)
            assert np.linalg.norm(a - b) / np.linalg.norm(a) < 2e-2
            assert any(rel(s, t) > 1e-3 for s, t in zip(stats, ours_stats))  # the statistics moved
        else:
            for a, b in zip(theirs_grads, ours_grads):
                assert rel(a, b) < 2e-5
            assert all(rel(s, t) == 0 for s, t in zip(stats, ours_stats))


@torch_only
@pytest.mark.parametrize("name", MODELS)
def test_lowered_gradients_match_plain_pytorch(name):
    """Training-mode logits and every weight gradient vs the plain-PyTorch module."""
    import sys

    import torch

    from keras_rpat.backend import torch_lowering

    sys.path.insert(0, HERE)
    from test_models import _copy_keras_to_torch
    from torch_reference_models import TorchBasicBlock, TorchBottleneck, TorchPreActBlock, TorchResNet, TorchWideResNet

    reference = {
        "resnet18": lambda: TorchResNet(TorchBasicBlock, 10),
        "resnet18_bottleneck": lambda: TorchResNet(TorchBottleneck, 10),
        "preact_resnet18": lambda: TorchResNet(TorchPreActBlock, 10, preact=True),
        "wide_resnet10_2": lambda: TorchWideResNet(10, 2, 10),
    }[name]()
    model = build(name)
    modules = _copy_keras_to_torch(model, reference)
    lowered = torch_lowering.lower(model)
    torch_lowering.relayout_kernels(model)
    x = torch.rand((8, 16, 16, 3), generator=torch.Generator().manual_seed(0))
    reference.train()
    theirs = reference(x.permute(0, 3, 1, 2).contiguous())
    ours = lowered(x, training=True)
    assert rel(theirs.detach(), ours.detach()) < 1e-5
    ours_grads = torch.autograd.grad((ours.double() ** 2).sum(), [v.value for v in model.trainable_weights])
    theirs_grads = dict(
        zip(
            [n for n, _ in reference.named_parameters()],
            torch.autograd.grad((theirs.double() ** 2).sum(), list(reference.parameters())),
        )
    )
    for variable, grad in zip(model.trainable_weights, ours_grads):
        layer, kind = variable.path.split("/")[-2:]
        module = [n for n, m in modules.items() if n == layer or (layer == "logits" and n in ("linear", "fc"))][0]
        torch_name = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}[kind]
        expected = theirs_grads[
            f"{module.replace('_', '.') if module not in ('linear', 'fc') else module}.{torch_name}"
        ]
        if kind == "kernel" and expected.dim() == 4:
            expected = expected.permute(2, 3, 1, 0)
        elif kind == "kernel":
            expected = expected.T
        assert rel(expected, grad) < 1e-4, variable.path
    for layer in model.layers:
        if isinstance(layer, layers.BatchNorm):
            bn = dict(reference.named_modules())[layer.name.replace("_", ".")] if "." not in layer.name else None
            if bn is not None:
                assert rel(bn.running_var.detach(), np_(layer.moving_variance)) < 1e-5


@torch_only
def test_relayout_keeps_values_shapes_and_saving(tmp_path):
    from keras_rpat.backend import torch_lowering

    model = build("resnet18")
    before = [np_(v) for v in model.weights]
    torch_lowering.relayout_kernels(model)
    kernel = model.get_layer("layer1_0_conv1").kernel
    assert tuple(kernel.shape) == (3, 3, 64, 64) and kernel.value.permute(3, 2, 0, 1).is_contiguous()
    assert all(np.array_equal(a, np_(v)) for a, v in zip(before, model.weights))
    param_ids = {id(p) for p in model.parameters()}
    assert id(kernel.value) in param_ids  # the nn.Module view follows the new storage
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert all(np.array_equal(a, np_(v)) for a, v in zip(before, loaded.weights))


@torch_only
def test_forward_many_equals_one_forward_per_block():
    """Views in one forward: per-block BatchNorm statistics, the same outputs,
    moving statistics and weight gradients as one forward per view."""
    import torch

    from keras_rpat.backend import torch_lowering

    model = build("wide_resnet10_2", size=8)
    torch_lowering.relayout_kernels(model)
    lowered = torch_lowering.lower(model)
    rng = np.random.default_rng(3)
    # Blocks of different scales: statistics over the whole batch would differ a lot.
    xs = [torch.tensor(rng.uniform(size=(4, 8, 8, 3)) * s, dtype=torch.float32) for s in (1.0, 0.3, 3.0)]
    start = [np_(v) for v in model.non_trainable_weights]
    kernels = [v.value for v in model.trainable_weights]

    def run(forward):
        for v, value in zip(model.non_trainable_weights, start):
            v.assign(value)
        with torch_lowering.shared_kernel_views():
            outputs = forward()
        loss = sum((o * (i + 1)).square().mean() for i, o in enumerate(outputs))
        grads = torch.autograd.grad(loss, kernels)
        return [np_(o.detach()) for o in outputs], [np_(v) for v in model.non_trainable_weights], grads

    separate = run(lambda: [lowered(x, training=True) for x in xs])
    many = run(lambda: lowered.forward_many(xs, training=True))
    for a, b in zip(separate[0], many[0]):
        assert a.shape == b.shape == (4, 10) and rel(a, b) < 1e-5
    for a, b in zip(separate[1], many[1]):
        assert rel(a, b) < 1e-6  # moving statistics updated block after block
    assert max(rel(np_(a), np_(b)) for a, b in zip(separate[2], many[2])) < 1e-4
    whole = run(lambda: torch.split(lowered(torch.cat(xs), training=True), 4))
    assert rel(separate[0][1], whole[0][1]) > 1e-2  # whole-batch statistics are not what forward_many does


# --------------------------------------------------------------------------
# The fast train step equals the Keras train step
# --------------------------------------------------------------------------
def _trainer(name, classifier, fast_path, attack=None, **options):
    preset = presets.get(name)
    if attack is not None:
        preset = preset.with_options(attack=attack)
    if preset.weight_averaging is not None:
        preset.weight_averaging.start_epoch = 0
        for loss in preset.losses:
            loss.start_epoch = 0
    trainer = preset.build_trainer(classifier, fast_path=fast_path, **options)
    # A small learning rate keeps the one ill-conditioned gradient family (a
    # conv feeding train-mode BN, see test_lowered_model_matches_keras) from
    # dominating the comparison of the updated weights.
    trainer.compile(optimizer=optimizers.SGD(1e-3, momentum=0.9, weight_decay=5e-4))
    return trainer


def _train(name, model_name, fast_path, attack_fn, steps=3, **options):
    classifier = build(model_name)
    preset_attack = presets.get(name).attack
    trainer = _trainer(name, classifier, fast_path, attack=attack_fn(preset_attack), **options)
    if trainer.teacher is not None:
        trainer.teacher.set_weights(classifier.get_weights())
    logs = [trainer.train_on_batch(x, y, return_dict=True) for x, y in batches(steps)]
    return trainer, logs, [np_(v) for v in trainer.weights]


def _compare(slow, fast, tol=1e-5):
    """Every logged value and every variable agree to `tol` relative.

    Deep conv -> train-mode BN chains make some weight gradients mostly
    cancellation, which torch's fused BN backward (the fast path, and the
    authors' plain-PyTorch step: test_lowered_gradients_match_plain_pytorch)
    and Keras' op-by-op BN round differently; the difference grows over steps.
    """
    (t0, logs0, w0), (t1, logs1, w1) = slow, fast
    assert t0._fast_runtime is False and t1._fast_runtime
    assert [v.path for v in t0.weights] == [v.path for v in t1.weights]
    for step, (a, b) in enumerate(zip(logs0, logs1)):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= tol * max(abs(a[key]), 1e-6) + 1e-6, (step, key, a[key], b[key])
    for a, b, v in zip(w0, w1, t1.weights):
        assert rel(a, b) <= tol, (v.path, rel(a, b))


def _with_steps(num_steps):
    """The preset's attack (random start, style, loss, mode) with `num_steps`."""
    return lambda attack: attack.__class__.from_config({**attack.get_config(), "num_steps": num_steps})


# Every preset on the wide ResNet (the presets' code paths); each model of the
# ResNet-18 family once, with an RPAT preset of each pipeline (the lowering's
# code paths; each case trains 3 steps twice: make test's budget).
STEP_CASES = [(name, "wide_resnet10_2") for name in PRESETS] + [
    ("trades+rpat", "resnet18"),
    ("pgd_at+rpat", "resnet18_bottleneck"),
    ("rebat", "preact_resnet18"),
]
# The ResNet-18 family's float32 floor: scaling one kernel of the Keras path
# by 1 + 1e-7 moves its weights by 1e-3 (preact) to 1.5e-2 (bottleneck) after
# these 3 steps (the RPAT term, a small difference, moves alike); the fast
# path stays within that floor.
STEP_TOLERANCE = {"wide_resnet10_2": 1e-5, "resnet18": 5e-3, "resnet18_bottleneck": 2e-2, "preact_resnet18": 5e-3}


@torch_only
@pytest.mark.parametrize("name, model_name", STEP_CASES)
def test_fast_step_equals_keras_step(name, model_name):
    """3 steps: loss terms, metrics, weights, BN statistics, WA teacher.

    Relative 1e-5 on the wide ResNet; on the ResNet-18 family within its
    float32 floor (`STEP_TOLERANCE`; see `_compare`). The attack keeps the
    preset's random start (same device generator) but takes no sign step: a
    sign of a gradient component at rounding level flips between any two
    float32 implementations and then dominates the comparison. The attack
    loop itself is compared below.
    """
    slow = _train(name, model_name, False, _with_steps(0))
    fast = _train(name, model_name, True, _with_steps(0))
    _compare(slow, fast, tol=STEP_TOLERANCE[model_name])


@torch_only
@pytest.mark.parametrize("name", ["pgd_at+rpat", "mart+rpat", "consistency_at+rpat", "rebat", "rpat_plus_plus"])
def test_fast_step_with_the_full_attack_equals_keras_step(name):
    """The presets' own PGD (sign steps, each style) on a small wide ResNet.

    TRADES is left out here: its KL attack starts at x + 0.001 N(0, I),
    where the KL gradient is at rounding level, so its first sign step is
    noise for any two implementations (it is covered above and in
    test_attacks_through_the_lowered_model).
    """
    slow = _train(name, "wide_resnet10_2", False, _with_steps(2))
    fast = _train(name, "wide_resnet10_2", True, _with_steps(2))
    _compare(slow, fast)


def _seeded_run(fast_path, seeds, random_ops_before_fit=False):
    """3 steps of PGD-2 (random start) + RPAT with Beta-sampled alphas, float64; the weights.

    `seeds="given"`: the attack and the trainer get seeds; `"global"`: they get
    none and draw one each, when made, from the global seed.
    """
    with float64_precision():
        classifier = build("small_cnn", size=8)
        keras.utils.set_random_seed(3)
        seed = {"given": 1, "global": None, "other": 2}[seeds]
        trainer = RPATTrainer(
            classifier,
            attack=attacks.PGD("linf", 8 / 255, 2 / 255, num_steps=2, seed=seed),
            losses=[losses.AdversarialCrossEntropy(), losses.RobustPerception(alpha_sampling="beta-")],
            seed=seed,
            fast_path=fast_path,
        )
        trainer.compile(optimizer=optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-4))
        if random_ops_before_fit:
            random.random()
            np.random.rand()
            keras.random.uniform((3,))
        for x, y in batches(3, size=8):
            trainer.train_on_batch(x.astype("float64"), y)
        assert bool(trainer._fast_runtime) == fast_path and trainer.weights[0].dtype == "float64"
        return [np_(v) for v in trainer.weights]


@torch_only
@pytest.mark.parametrize("seeds", ["given", "global"])
def test_fast_path_off_reproduces_a_fast_path_run(seeds):
    """With the same seeds both paths draw the same random starts and alphas
    (one device generator per seed), so `fast_path=False` reproduces the fast
    path's weights to float64 rounding; random ops run between making the
    trainer and training change nothing."""
    fast = _seeded_run(True, seeds, random_ops_before_fit=True)
    keras_path = _seeded_run(False, seeds)
    assert max(rel(a, b) for a, b in zip(fast, keras_path)) < 1e-9
    if seeds == "given":  # another seed trains otherwise (the draws matter)
        other = _seeded_run(False, "other")
        assert max(rel(a, b) for a, b in zip(other, keras_path)) > 1e-6


@torch_only
@pytest.mark.parametrize(
    "attack",
    [
        attacks.PGD("l2", 0.5, 0.1, 3, style="advertorch", seed=0),
        attacks.PGD("l2", 0.5, 0.1, 3, style="trades", loss="kl", seed=0),
        attacks.PGD("l2", 0.5, 0.1, 3, style="sotas", training=True, seed=0),
        attacks.PGD("linf", 8 / 255, 2 / 255, 1, style="advertorch", seed=0),
    ],
    ids=["l2_advertorch", "l2_trades_kl", "l2_sotas_training", "linf_one_step"],
)
def test_attacks_through_the_lowered_model(attack):
    import torch

    from keras_rpat.backend import torch_lowering

    model = build("resnet18")
    lowered = torch_lowering.lower(model)
    torch_lowering.relayout_kernels(model)
    ((x, y),) = batches(1)
    x, y = torch.tensor(x), torch.tensor(y)
    stats = [np_(v) for v in model.non_trainable_weights]
    results = []
    for fn in (model, lowered):
        for v, s in zip(model.non_trainable_weights, stats):
            v.assign(s)
        fresh = attack.__class__.from_config(attack.get_config())  # a new stream from seed 0: the same random start
        results.append((np_(fresh(fn, x, y)), [np_(v) for v in model.non_trainable_weights]))
    (a, sa), (b, sb) = results
    if attack.norm == "l2":
        # The KL gradient at x + 0.001 N(0, I) and input gradients through
        # train-mode BN are cancellation-dominated: float32 agreement is looser.
        assert rel(a, b) < (1e-5 if attack.style == "advertorch" else 5e-3)
    else:  # one sign step: equal wherever the gradient is not at rounding level
        assert np.mean(np.abs(a - b) < 1e-6) > 0.99
    assert all(rel(s, t) < 5e-3 for s, t in zip(sa, sb))  # training-mode attacks move BN stats alike


# --------------------------------------------------------------------------
# When the fast path runs, falls back, and its options
# --------------------------------------------------------------------------
class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(10)

    def call(self, x, training=False):
        return self.dense(self.pool(self.conv(x)))


def _small_trainer(classifier=None, **options):
    classifier = classifier if classifier is not None else build("wide_resnet10_2", size=8)
    trainer = (
        presets.get("pgd_at+rpat")
        .with_options(attack=attacks.PGD("linf", 8 / 255, 2 / 255, 1))
        .build_trainer(classifier, **options)
    )
    trainer.compile(optimizer=optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-4))
    return trainer


@torch_only
def test_unsupported_classifier_falls_back_with_one_log_line(caplog):
    classifier = _Subclassed()
    classifier.build((None, 8, 8, 3))
    trainer = _small_trainer(classifier)
    (x, y), (x2, y2) = batches(2, size=8)
    with caplog.at_level(logging.WARNING, logger="keras_rpat"):
        trainer.train_on_batch(x, y)
        trainer.train_on_batch(x2, y2)
    lines = [r.getMessage() for r in caplog.records if "fast path is off" in r.getMessage()]
    assert len(lines) == 1 and "is not a functional model" in lines[0] and "fast_path=False" in lines[0]
    assert trainer._fast_runtime is False


@torch_only
def test_unsupported_layer_is_named():
    from keras_rpat.backend import torch_lowering

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="odd")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    with pytest.raises(torch_lowering.Unsupported, match="'odd' has the activation 'tanh'"):
        torch_lowering.lower(model)
    h = keras.layers.LayerNormalization(name="ln")(inputs)
    model = keras.Model(inputs, h)
    with pytest.raises(torch_lowering.Unsupported, match="'ln' of type LayerNormalization"):
        torch_lowering.lower(model)


@torch_only
def test_fast_path_false_and_the_global_default_use_the_keras_path():
    from keras_rpat import trainer as trainer_lib

    ((x, y),) = batches(1, size=8)
    trainer = _small_trainer(fast_path=False)
    trainer.train_on_batch(x, y)
    assert trainer._fast_runtime is False
    trainer_lib.set_fast_path_default(False)
    try:
        assert _small_trainer().fast_path is False
    finally:
        trainer_lib.set_fast_path_default(True)
    assert _small_trainer().fast_path is True


@torch_only
def test_capture_on_cpu_runs_the_same_step_uncaptured():
    (x, y), (x2, y2) = batches(2, size=8)
    results = []
    for capture in (False, True):
        trainer = _small_trainer(capture=capture)
        logs = [
            trainer.train_on_batch(x, y, return_dict=True),
            trainer.train_on_batch(x2[:5], y2[:5], return_dict=True),
        ]
        results.append((logs, [np_(v) for v in trainer.weights]))
    (logs0, w0), (logs1, w1) = results
    assert logs0 == logs1  # bitwise: the same function, uncaptured on CPU
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1))


@torch_only
def test_channels_last_and_bf16_options():
    ((x, y),) = batches(1, size=8)
    reference = _small_trainer()
    ref_logs = reference.train_on_batch(x, y, return_dict=True)
    channels_last = _small_trainer(memory_format="channels_last")
    assert channels_last.train_on_batch(x, y, return_dict=True)["loss"] == pytest.approx(ref_logs["loss"], rel=1e-4)
    assert channels_last._fast_runtime.classifier.memory_format == "channels_last"  # what it changes: the storage
    bf16 = _small_trainer(precision="bf16")
    assert bf16.precision == "bfloat16"
    logs = bf16.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] == pytest.approx(ref_logs["loss"], rel=0.05)  # not exact
    assert logs["loss"] != ref_logs["loss"]  # bf16 arithmetic did run


def test_fast_path_options_are_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="`precision` must be one of"):
        _small_trainer(precision="fp16")
    with pytest.raises(ValueError, match="`memory_format` must be one of"):
        _small_trainer(memory_format="nhwc")
    with pytest.raises(ValueError, match="`capture` must be True or False"):
        _small_trainer(capture="yes")
    trainer = _small_trainer(fast_path=False, capture=True, precision="bf16", memory_format="channels_last")
    config = trainer.get_config()
    assert (config["fast_path"], config["capture"], config["precision"], config["memory_format"]) == (
        False,
        True,
        "bfloat16",
        "channels_last",
    )
    again = RPATTrainer.from_config(config)
    assert (again.fast_path, again.capture, again.precision, again.memory_format) == (
        False,
        True,
        "bfloat16",
        "channels_last",
    )


@torch_only
def test_fit_evaluate_and_keras_file_round_trip_on_the_fast_path(tmp_path):
    trainer = _small_trainer(eval_attack=attacks.PGD("linf", 8 / 255, 2 / 255, 2, seed=0))
    slow = _small_trainer(eval_attack=attacks.PGD("linf", 8 / 255, 2 / 255, 2, seed=0), fast_path=False)
    data = batches(2, size=8)
    x = np.concatenate([b[0] for b in data])
    y = np.concatenate([b[1] for b in data])
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert trainer._fast_runtime
    slow.classifier.set_weights(trainer.classifier.get_weights())
    ours, theirs = trainer.evaluate(x, y, verbose=0, return_dict=True), slow.evaluate(x, y, verbose=0, return_dict=True)
    assert ours["clean_acc"] == theirs["clean_acc"] and ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    trainer.save(tmp_path / "t.keras")
    loaded = keras.saving.load_model(tmp_path / "t.keras")
    assert loaded.fast_path is True
    for a, b in zip(trainer.classifier.weights, loaded.classifier.weights):
        np.testing.assert_array_equal(np_(a), np_(b))


@torch_only
def test_evaluation_runs_the_lowered_model_with_the_same_results():
    from keras_rpat import evaluation
    from keras_rpat import trainer as trainer_lib

    model = build("wide_resnet10_2", size=8)
    ((x, y),) = batches(1, batch=16, size=8)
    fast = evaluation.pgd_accuracy(model, x, y, num_steps=2, seed=0)
    assert keras_rpat.backend.inference_model(model) is not model
    trainer_lib.set_fast_path_default(False)
    try:
        slow = evaluation.pgd_accuracy(model, x, y, num_steps=2, seed=0)
    finally:
        trainer_lib.set_fast_path_default(True)
    assert fast == slow


def test_cli_no_fast_path_flag_sets_the_default():
    from click.testing import CliRunner

    from keras_rpat import trainer as trainer_lib
    from keras_rpat.cli import main

    try:
        result = CliRunner().invoke(main, ["--no-fast-path", "recipe", "list"])
        assert result.exit_code == 0, result.output
        assert trainer_lib.fast_path_default() is False
        assert _small_trainer().fast_path is False
    finally:
        trainer_lib.set_fast_path_default(True)
    assert "--no-fast-path" in CliRunner().invoke(main, ["--help"]).output
