"""The torch fast path: lowered models and the fast train step equal the Keras path.

Every comparison of the two paths runs in float64 (`testing.float64_precision`)
and is held to float64 rounding: in float32, PGD's sign steps and the
cancellation in conv -> train-mode BatchNorm gradients turn last-bit rounding
(which differs between CPUs) into differences of 1e-3 and more.
"""

import logging
import os
import random

import keras_rpat  # noqa: F401  (sets the default backend)

import keras
import numpy as np
import pytest

from keras_rpat import attacks, layers, losses, models, optimizers, presets
from keras_rpat.trainer import RPATTrainer
from testing import float64_precision

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
    gradients that are mostly cancellation noise.
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
        (rng.uniform(size=(batch, size, size, 3)).astype(keras.config.floatx()), rng.integers(0, 10, size=(batch,)))
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
@float64_precision()
def test_lowered_model_matches_keras(name, data_format):
    import torch

    from keras_rpat.fast_path import lowering

    model = build(name, size=8, data_format=data_format)
    features = models.feature_model(model)
    lowered = lowering.lower(features)
    lowering.relayout_kernels(model)
    x = torch.rand((8,) + tuple(model.inputs[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    stats = [np_(v) for v in model.non_trainable_weights]

    def run(fn, training):
        for v, s in zip(model.non_trainable_weights, stats):
            v.assign(s)
        outputs = fn(x, training=training)
        total = sum((o**2).sum() * (i + 1) for i, o in enumerate(outputs))
        grads = torch.autograd.grad(total, [v.value for v in model.trainable_weights])
        after = [np_(v) for v in model.non_trainable_weights]
        return [o.detach().numpy() for o in outputs], [g.numpy() for g in grads], after

    for training in (False, True):
        ours, ours_grads, ours_stats = run(lowered, training)
        theirs, theirs_grads, theirs_stats = run(features, training)
        assert [o.shape for o in ours] == [o.shape for o in theirs]  # logits, penultimate, third_to_last
        assert all(o.dtype == np.float64 for o in ours)
        for a, b in zip(theirs + theirs_stats, ours + ours_stats):
            assert rel(a, b) < 1e-12
        # Every weight gradient, those of a conv followed by train-mode BN
        # (mostly cancellation: torch's fused BN backward and Keras' op-by-op
        # one round it differently) included.
        for a, b in zip(theirs_grads, ours_grads):
            assert rel(a, b) < 1e-10
        if training:
            assert any(rel(s, t) > 1e-3 for s, t in zip(stats, ours_stats))  # the statistics moved
        else:
            assert all(rel(s, t) == 0 for s, t in zip(stats, ours_stats))


@torch_only
@pytest.mark.parametrize("name", MODELS)
@float64_precision()
def test_lowered_gradients_match_plain_pytorch(name):
    """Training-mode logits and every weight gradient vs the plain-PyTorch module (float64)."""
    import sys

    import torch

    from keras_rpat.fast_path import lowering

    sys.path.insert(0, HERE)
    from test_models import _copy_keras_to_torch
    from torch_reference_models import TorchBasicBlock, TorchBottleneck, TorchPreActBlock, TorchResNet, TorchWideResNet

    reference = {
        "resnet18": lambda: TorchResNet(TorchBasicBlock, 10),
        "resnet18_bottleneck": lambda: TorchResNet(TorchBottleneck, 10),
        "preact_resnet18": lambda: TorchResNet(TorchPreActBlock, 10, preact=True),
        "wide_resnet10_2": lambda: TorchWideResNet(10, 2, 10),
    }[name]()
    model = build(name, size=8)
    modules = _copy_keras_to_torch(model, reference)
    lowered = lowering.lower(model)
    lowering.relayout_kernels(model)
    x = torch.rand((8, 8, 8, 3), generator=torch.Generator().manual_seed(0))
    reference.train()
    theirs = reference(x.permute(0, 3, 1, 2).contiguous())
    ours = lowered(x, training=True)
    assert ours.dtype == theirs.dtype == torch.float64
    assert rel(theirs.detach(), ours.detach()) < 1e-12
    ours_grads = torch.autograd.grad((ours**2).sum(), [v.value for v in model.trainable_weights])
    theirs_grads = dict(
        zip(
            [n for n, _ in reference.named_parameters()],
            torch.autograd.grad((theirs**2).sum(), list(reference.parameters())),
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
        assert rel(expected, grad) < 1e-10, variable.path
    for layer in model.layers:
        if isinstance(layer, layers.BatchNorm):
            bn = dict(reference.named_modules())[layer.name.replace("_", ".")] if "." not in layer.name else None
            if bn is not None:
                assert rel(bn.running_var.detach(), np_(layer.moving_variance)) < 1e-12


@torch_only
def test_relayout_keeps_values_shapes_and_saving(tmp_path):
    from keras_rpat.fast_path import lowering

    model = build("resnet18")
    before = [np_(v) for v in model.weights]
    lowering.relayout_kernels(model)
    kernel = model.get_layer("layer1_0_conv1").kernel
    assert tuple(kernel.shape) == (3, 3, 64, 64) and kernel.value.permute(3, 2, 0, 1).is_contiguous()
    assert all(np.array_equal(a, np_(v)) for a, v in zip(before, model.weights))
    param_ids = {id(p) for p in model.parameters()}
    assert id(kernel.value) in param_ids  # the nn.Module view follows the new storage
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert all(np.array_equal(a, np_(v)) for a, v in zip(before, loaded.weights))


@torch_only
@float64_precision()
def test_forward_many_equals_one_forward_per_block():
    """Views in one forward: per-block BatchNorm statistics, the same outputs,
    moving statistics and weight gradients as one forward per view."""
    import torch

    from keras_rpat.fast_path import lowering

    model = build("wide_resnet10_2", size=8)
    lowering.relayout_kernels(model)
    lowered = lowering.lower(model)
    rng = np.random.default_rng(3)
    # Blocks of different scales: statistics over the whole batch would differ a lot.
    xs = [torch.tensor(rng.uniform(size=(4, 8, 8, 3)) * s) for s in (1.0, 0.3, 3.0)]
    start = [np_(v) for v in model.non_trainable_weights]
    kernels = [v.value for v in model.trainable_weights]

    def run(forward):
        for v, value in zip(model.non_trainable_weights, start):
            v.assign(value)
        with lowering.shared_kernel_views():
            outputs = forward()
        loss = sum((o * (i + 1)).square().mean() for i, o in enumerate(outputs))
        grads = torch.autograd.grad(loss, kernels)
        return [np_(o.detach()) for o in outputs], [np_(v) for v in model.non_trainable_weights], grads

    separate = run(lambda: [lowered(x, training=True) for x in xs])
    many = run(lambda: lowered.forward_many(xs, training=True))
    for a, b in zip(separate[0], many[0]):
        assert a.shape == b.shape == (4, 10) and a.dtype == np.float64 and rel(a, b) < 1e-12
    for a, b in zip(separate[1], many[1]):
        assert rel(a, b) < 1e-12  # moving statistics updated block after block
    assert max(rel(np_(a), np_(b)) for a, b in zip(separate[2], many[2])) < 1e-10
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
    trainer.compile(optimizer=optimizers.SGD(1e-3, momentum=0.9, weight_decay=5e-4))
    return trainer


def _train(name, model_name, fast_path, attack_fn, steps=3, size=16, **options):
    classifier = build(model_name, size=size)
    preset_attack = presets.get(name).attack
    trainer = _trainer(name, classifier, fast_path, attack=attack_fn(preset_attack), **options)
    if trainer.teacher is not None:
        trainer.teacher.set_weights(classifier.get_weights())
    logs = [trainer.train_on_batch(x, y, return_dict=True) for x, y in batches(steps, size=size)]
    return trainer, logs, [np_(v) for v in trainer.weights]


def _compare(slow, fast, tol=1e-9):
    """Every logged value and every variable (float64) agree to `tol` relative."""
    (t0, logs0, w0), (t1, logs1, w1) = slow, fast
    assert not t0.engine.lowered and t1.engine.lowered
    assert [v.path for v in t0.weights] == [v.path for v in t1.weights]
    assert all(w.dtype == np.float64 for w in w0 + w1)
    for step, (a, b) in enumerate(zip(logs0, logs1)):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= tol * max(abs(a[key]), 1e-6), (step, key, a[key], b[key])
    for a, b, v in zip(w0, w1, t1.weights):
        assert rel(a, b) <= tol, (v.path, rel(a, b))


def _with_steps(num_steps):
    """The preset's attack (random start, style, loss, mode) with `num_steps`."""
    return lambda attack: attack.__class__.from_config({**attack.get_config(), "num_steps": num_steps})


# Every preset on the wide ResNet (the presets' code paths); each model of the
# ResNet-18 family once (8x8 images), with an RPAT preset of each pipeline (the
# lowering's code paths; each case trains 3 steps twice: make test's budget).
STEP_CASES = [(name, "wide_resnet10_2") for name in PRESETS] + [
    ("trades+rpat", "resnet18"),
    ("pgd_at+rpat", "resnet18_bottleneck"),
    ("rebat", "preact_resnet18"),
]


@torch_only
@pytest.mark.parametrize("name, model_name", STEP_CASES)
@float64_precision()
def test_fast_step_equals_keras_step(name, model_name):
    """3 steps in float64: loss terms, metrics, weights, BN statistics, WA
    teacher, to 1e-9 relative. The attack is the preset's (random start from
    the same device generator, style, loss) with one sign step."""
    size = 16 if model_name == "wide_resnet10_2" else 8
    slow = _train(name, model_name, False, _with_steps(1), size=size)
    fast = _train(name, model_name, True, _with_steps(1), size=size)
    _compare(slow, fast)


@torch_only
@pytest.mark.parametrize(
    "name", ["pgd_at+rpat", "trades+rpat", "mart+rpat", "consistency_at+rpat", "rebat", "rpat_plus_plus"]
)
@float64_precision()
def test_fast_step_with_the_full_attack_equals_keras_step(name):
    """The presets' own PGD (several sign steps, each style) on a small wide ResNet, in float64."""
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
        assert trainer.engine.lowered == fast_path and trainer.weights[0].dtype == "float64"
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
@float64_precision()
def test_attacks_through_the_lowered_model(attack):
    """The attack of the Keras model and of the lowered one, in float64: the same
    adversarial images and (training-mode attacks) BatchNorm statistics."""
    import torch

    from keras_rpat.fast_path import lowering

    model = build("resnet18", size=8)
    lowered = lowering.lower(model)
    lowering.relayout_kernels(model)
    ((x, y),) = batches(1, size=8)
    x, y = torch.tensor(x), torch.tensor(y)
    stats = [np_(v) for v in model.non_trainable_weights]
    results = []
    for fn in (model, lowered):
        for v, s in zip(model.non_trainable_weights, stats):
            v.assign(s)
        fresh = attack.__class__.from_config(attack.get_config())  # a new stream from seed 0: the same random start
        results.append((np_(fresh(fn, x, y)), [np_(v) for v in model.non_trainable_weights]))
    (a, sa), (b, sb) = results
    assert a.dtype == b.dtype == np.float64
    assert rel(a, b) < 1e-9
    assert all(rel(s, t) < 1e-9 for s, t in zip(sa, sb))
    if attack.training:
        assert any(rel(s, t) > 1e-3 for s, t in zip(stats, sa))  # the statistics moved


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
    assert not trainer.engine.lowered


@torch_only
def test_unsupported_layer_is_named():
    from keras_rpat.fast_path import lowering

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="odd")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    with pytest.raises(lowering.Unsupported, match="'odd' has the activation 'tanh'"):
        lowering.lower(model)
    h = keras.layers.LayerNormalization(name="ln")(inputs)
    model = keras.Model(inputs, h)
    with pytest.raises(lowering.Unsupported, match="'ln' of type LayerNormalization"):
        lowering.lower(model)


@torch_only
def test_fast_path_false_and_the_global_default_use_the_keras_path():
    from keras_rpat import config as rpat_config

    ((x, y),) = batches(1, size=8)
    trainer = _small_trainer(fast_path=False)
    trainer.train_on_batch(x, y)
    assert not trainer.engine.lowered
    rpat_config.set_fast_path_default(False)
    try:
        assert _small_trainer().fast_path is False
    finally:
        rpat_config.set_fast_path_default(True)
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
    with float64_precision():  # channels_last is exact: the same step to float64 rounding
        contiguous = _small_trainer().train_on_batch(x, y, return_dict=True)
        channels_last = _small_trainer(memory_format="channels_last")
        assert channels_last.train_on_batch(x, y, return_dict=True)["loss"] == pytest.approx(
            contiguous["loss"], rel=1e-12
        )
        assert channels_last.engine.classifier.memory_format == "channels_last"  # what it changes: the storage
    reference = _small_trainer()
    ref_logs = reference.train_on_batch(x, y, return_dict=True)
    bf16 = _small_trainer(precision="bf16")
    assert bf16.precision == "bfloat16"
    logs = bf16.train_on_batch(x, y, return_dict=True)
    # bf16 autocast is not exact (8-bit mantissas, 4e-3 rounding per op): a sanity bound, not a comparison.
    assert np.isfinite(logs["loss"]) and logs["loss"] == pytest.approx(ref_logs["loss"], rel=0.05)
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
@float64_precision()
def test_fit_evaluate_and_keras_file_round_trip_on_the_fast_path(tmp_path):
    trainer = _small_trainer(eval_attack=attacks.PGD("linf", 8 / 255, 2 / 255, 2, seed=0))
    slow = _small_trainer(eval_attack=attacks.PGD("linf", 8 / 255, 2 / 255, 2, seed=0), fast_path=False)
    data = batches(2, size=8)
    x = np.concatenate([b[0] for b in data])
    y = np.concatenate([b[1] for b in data])
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert trainer.engine.lowered
    slow.classifier.set_weights(trainer.classifier.get_weights())
    ours, theirs = trainer.evaluate(x, y, verbose=0, return_dict=True), slow.evaluate(x, y, verbose=0, return_dict=True)
    assert ours["clean_acc"] == theirs["clean_acc"] and ours["loss"] == pytest.approx(theirs["loss"], rel=1e-10)
    trainer.save(tmp_path / "t.keras")
    loaded = keras.saving.load_model(tmp_path / "t.keras")
    assert loaded.fast_path is True
    for a, b in zip(trainer.classifier.weights, loaded.classifier.weights):
        np.testing.assert_array_equal(np_(a), np_(b))


@torch_only
@float64_precision()
def test_evaluation_runs_the_lowered_model_with_the_same_results():
    from keras_rpat import evaluation
    from keras_rpat import config as rpat_config

    model = build("wide_resnet10_2", size=8)
    ((x, y),) = batches(1, batch=16, size=8)
    fast = evaluation.pgd_accuracy(model, x, y, num_steps=2, seed=0)
    assert keras_rpat.fast_path.inference_model(model) is not model
    rpat_config.set_fast_path_default(False)
    try:
        slow = evaluation.pgd_accuracy(model, x, y, num_steps=2, seed=0)
    finally:
        rpat_config.set_fast_path_default(True)
    assert fast == slow


@torch_only
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@float64_precision()
def test_autoattack_bridge_runs_the_lowered_model_with_the_keras_gradients(data_format):
    """pyautoattack's view of a model (TorchBridge) runs it lowered: the Keras model's logits and input
    gradients to float64 rounding; with the fast path off, the Keras model itself."""
    import torch

    from keras_rpat import config as rpat_config
    from keras_rpat.autoattack.torch_bridge import TorchBridge
    from keras_rpat.fast_path import lowering

    model = build("wide_resnet10_2", size=8, data_format=data_format)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])

    def logits_and_gradient(forward, channels_last):
        x_in = x.clone().requires_grad_(True)
        logits = forward(x_in.permute(0, 2, 3, 1) if channels_last else x_in)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), [x_in])
        return logits.detach().numpy(), grad.numpy()

    bridge = TorchBridge(model)
    assert isinstance(bridge.forward_model, lowering.LoweredModel)
    ours = logits_and_gradient(bridge, False)
    keras_view = logits_and_gradient(lambda h: model(h, training=False), data_format == "channels_last")
    for a, b in zip(keras_view, ours):
        assert rel(a, b) < 1e-12
    rpat_config.set_fast_path_default(False)
    try:
        keras_bridge = TorchBridge(model)
    finally:
        rpat_config.set_fast_path_default(True)
    assert keras_bridge.forward_model is model
    for a, b in zip(keras_view, logits_and_gradient(keras_bridge, False)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the tensorflow backend's answers")
def test_fast_path_entry_points_answer_without_torch_on_tensorflow():
    import sys

    from keras_rpat import fast_path

    trainer = _small_trainer()
    assert fast_path.trainer_engine(trainer) is None and trainer.fast_runtime() is None
    assert fast_path.inference_model(trainer.classifier) is trainer.classifier
    assert "keras_rpat.fast_path.runtime" not in sys.modules  # the module that imports torch


def test_cli_no_fast_path_flag_sets_the_default():
    from click.testing import CliRunner

    from keras_rpat import config as rpat_config
    from keras_rpat.cli import main

    try:
        result = CliRunner().invoke(main, ["--no-fast-path", "recipe", "list"])
        assert result.exit_code == 0, result.output
        assert rpat_config.fast_path_default() is False
        assert _small_trainer().fast_path is False
    finally:
        rpat_config.set_fast_path_default(True)
    assert "--no-fast-path" in CliRunner().invoke(main, ["--help"]).output
