"""Adversarial weight perturbation (`keras_rpat.AWP`) against the authors' algorithm.

The reference is written here in plain PyTorch, literally as github.com/csdongxian/AWP
runs it (`AdvWeightPerturb` / `TradesAWP`): a deepcopy of the model (training mode) takes
one `SGD(lr=0.01)` step on the negated loss, `diff_in_weights` scales the change per
weight of two or more dimensions named `weight` to `||w|| * d / (||d|| + 1e-20)`, the
model gets `+gamma * diff`, takes its `torch.optim.SGD` step and gets `-gamma * diff`.
Everything is float64 and the attack (PGD, L-inf, advertorch's clipping, inference-mode
BatchNorm) starts at `x` (`random_start=False`), so the library's step on every backend
must agree with it to rounding.
"""

import copy

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keras_rpat import AWP
from keras_rpat import RPATTrainer
from keras_rpat import WeightAveraging
from keras_rpat import attacks
from keras_rpat import layers as rpat_layers
from keras_rpat import losses
from keras_rpat import optimizers
from testing import BACKEND
from testing import float64_precision

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
ALPHA, BETA = 0.5, 6.0


# ---------------------------------------------------------------------------- the models
def keras_model():
    inputs = keras.Input((6, 6, 3))
    x = inputs
    for i, width in enumerate((4, 5), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.ReLU()(rpat_layers.BatchNorm(name=f"bn{i}")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


class TorchTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):  # x: NHWC, as the Keras model's
        x = x.permute(0, 3, 1, 2)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def keras_weights(twin):
    """The twin's state in the Keras model's `get_weights()` order."""
    out = []
    for conv, bn in ((twin.conv1, twin.bn1), (twin.conv2, twin.bn2)):
        out.append(conv.weight.detach().permute(2, 3, 1, 0))
        out += [bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var]
    out += [twin.fc.weight.detach().T, twin.fc.bias.detach()]
    return [t.numpy().copy() for t in out]


def initial_weights():
    rng = np.random.default_rng(3)
    shapes = [(3, 3, 3, 4), (4,), (4,), (4,), (4,), (3, 3, 4, 5), (5,), (5,), (5,), (5,), (5, 4), (4,)]
    weights = [0.4 * rng.standard_normal(s) for s in shapes]
    for i in (1, 4, 6, 9):  # BN gamma, moving variance
        weights[i] = 1.0 + 0.2 * np.abs(weights[i])
    return weights


def twin_from(weights):
    twin = TorchTwin().double()
    with torch.no_grad():
        for (conv, bn), offset in (((twin.conv1, twin.bn1), 0), ((twin.conv2, twin.bn2), 5)):
            conv.weight.copy_(torch.from_numpy(weights[offset]).permute(3, 2, 0, 1))
            for tensor, w in zip(
                (bn.weight, bn.bias, bn.running_mean, bn.running_var), weights[offset + 1 : offset + 5]
            ):
                tensor.copy_(torch.from_numpy(w))
        twin.fc.weight.copy_(torch.from_numpy(weights[10]).T)
        twin.fc.bias.copy_(torch.from_numpy(weights[11]))
    return twin


def batch():
    rng = np.random.default_rng(11)
    return rng.uniform(size=(10, 6, 6, 3)), rng.integers(0, 4, size=(10,)).astype("int64")


EPSILON, STEP, ATTACK_STEPS = 8 / 255, 2 / 255, 2


def make_attack():
    return attacks.PGD("linf", EPSILON, STEP, num_steps=ATTACK_STEPS, random_start=False)


# ---------------------------------------------------------------------------- the reference
# The training-mode forwards of each method, in the library's view order (BatchNorm moves in it).
VIEW_ORDER = {
    "pgd_at": ("adv",),
    "pgd_at+rpat": ("adv", "interp", "clean"),
    "trades": ("clean", "adv", "clean_kl"),
    "trades+rpat": ("clean", "adv", "clean_kl", "interp"),
}


def reference_loss(model, method, x, y, x_adv):
    inputs = {"clean": x, "clean_kl": x, "adv": x_adv, "interp": x + ALPHA * (x_adv - x)}
    z = {view: model(inputs[view]) for view in VIEW_ORDER[method]}
    if method.startswith("trades"):
        p2 = F.softmax(z["clean_kl"], dim=1)
        kl = F.kl_div(F.log_softmax(z["adv"], dim=1), p2, reduction="batchmean")
        loss = F.cross_entropy(z["clean"], y) + BETA * kl
    else:
        loss = F.cross_entropy(z["adv"], y)
    if method.endswith("+rpat"):
        target = (1 - ALPHA) * z["clean"] + ALPHA * z["adv"]
        loss = loss + F.mse_loss(z["interp"], target)
    return loss


def reference_pgd(model, x, y):
    """L-inf PGD from `x` on the cross-entropy, inference-mode forwards (advertorch's clipping)."""
    model.eval()
    delta = torch.zeros_like(x)
    for _ in range(ATTACK_STEPS):
        x_adv = (x + delta).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        delta = torch.clamp(delta + STEP * grad.sign(), -EPSILON, EPSILON)
        delta = torch.clamp(x + delta, 0.0, 1.0) - x
    return (x + delta).detach()


def diff_in_weights(model, proxy):
    diff = {}
    for (name, old), (_, new) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if old.dim() <= 1:
            continue
        if "weight" in name:
            d = new - old
            diff[name] = old.norm() / (d.norm() + 1e-20) * d
    return diff


def add_into_weights(model, diff, coeff):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in diff:
                param.add_(coeff * diff[name])


def reference_run(method, x, y, epochs, gamma, warmup, ema_decay=None):
    """The reference training (one batch per epoch); returns the model's and the EMA's weights."""
    model = twin_from(initial_weights())
    ema = copy.deepcopy(model) if ema_decay is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        x_adv = reference_pgd(model, x_t, y_t)
        model.train()
        awp_on = gamma is not None and epoch >= warmup
        if awp_on:
            proxy = copy.deepcopy(model)
            proxy.train()
            proxy_opt = torch.optim.SGD(proxy.parameters(), lr=0.01)
            proxy_opt.zero_grad()
            (-reference_loss(proxy, method, x_t, y_t, x_adv)).backward()
            proxy_opt.step()
            diff = diff_in_weights(model, proxy)
            add_into_weights(model, diff, 1.0 * gamma)
        opt.zero_grad()
        reference_loss(model, method, x_t, y_t, x_adv).backward()
        opt.step()
        if awp_on:
            add_into_weights(model, diff, -1.0 * gamma)
        if ema is not None:
            with torch.no_grad():
                for averaged, current in zip(ema.state_dict().values(), model.state_dict().values()):
                    if averaged.is_floating_point():
                        averaged.copy_(ema_decay * averaged + (1 - ema_decay) * current)
    return keras_weights(model), None if ema is None else keras_weights(ema)


# ---------------------------------------------------------------------------- the library
def library_losses(method):
    terms = [losses.TRADES(beta=BETA)] if method.startswith("trades") else [losses.AdversarialCrossEntropy()]
    if method.endswith("+rpat"):
        terms.append(losses.RobustPerception(alpha=ALPHA))
    return terms


def library_run(method, x, y, epochs, awp, fast_path=False, ema_decay=None):
    classifier = keras_model()
    classifier.set_weights(initial_weights())
    wa = None if ema_decay is None else WeightAveraging(decay=ema_decay, start_epoch=0)
    trainer = RPATTrainer(
        classifier,
        attack=make_attack(),
        losses=library_losses(method),
        awp=awp,
        weight_averaging=wa,
        fast_path=fast_path,
    )
    trainer.compile(optimizer=optimizers.SGD(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY))
    trainer.fit(x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0)
    teacher = None if trainer.teacher is None else trainer.teacher.get_weights()
    return trainer, classifier.get_weights(), teacher


def assert_weights_equal(got, expected, what):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == np.float64, (what, i)
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12, err_msg=f"{what} weight {i}")


# Every method on the Keras path; on torch, the fast path (the lowered step) for the two RPAT methods too.
CASES = [(method, False) for method in VIEW_ORDER]
if BACKEND == "torch":
    CASES += [("pgd_at+rpat", True), ("trades+rpat", True)]


@pytest.mark.parametrize(
    "method, fast_path", CASES, ids=lambda v: ("fast" if v else "keras") if isinstance(v, bool) else v
)
def test_two_awp_steps_match_the_reference(method, fast_path):
    """Two steps of PGD-AT / TRADES (+RPAT) with AWP and an EMA teacher equal the authors' proxy-copy
    algorithm: the weights, the BatchNorm statistics (which the proxy's forward must not move) and the
    teacher (which averages the restored weights)."""
    x, y = batch()
    with float64_precision():
        expected, expected_ema = reference_run(method, x, y, epochs=2, gamma=0.02, warmup=0, ema_decay=0.5)
        trainer, got, teacher = library_run(method, x, y, 2, AWP(gamma=0.02), fast_path, ema_decay=0.5)
    if fast_path:
        assert trainer.fast_runtime() is not None  # the lowered step ran
    assert_weights_equal(got, expected, "classifier")
    assert_weights_equal(teacher, expected_ema, "teacher")
    if method == "pgd_at" and not fast_path:
        # AWP changed the step (kernels and BatchNorm statistics alike): the comparison is not trivial.
        with float64_precision():
            without_awp, _ = reference_run(method, x, y, epochs=2, gamma=None, warmup=0)
        for i in (0, 3, 5, 10):
            assert np.max(np.abs(expected[i] - without_awp[i])) > 1e-6, i


def test_awp_starts_at_its_warmup_epoch():
    """`AWP(warmup_epochs=1)`: epoch 0 is a plain step, epoch 1 an AWP step (a new phase)."""
    x, y = batch()
    with float64_precision():
        expected, _ = reference_run("pgd_at+rpat", x, y, epochs=2, gamma=0.02, warmup=1)
        trainer, got, _ = library_run("pgd_at+rpat", x, y, 2, AWP(gamma=0.02, warmup_epochs=1))
    assert_weights_equal(got, expected, "classifier")
    assert trainer.phase[-1] is True
    trainer.set_epoch(0)
    assert trainer.phase[-1] is False


def test_config_round_trip_and_bad_values():
    awp = AWP(gamma=0.01, warmup_epochs=20)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(awp))
    assert isinstance(again, AWP) and again.get_config() == {"gamma": 0.01, "warmup_epochs": 20}
    trainer = RPATTrainer(keras_model(), attack=make_attack(), awp=awp)
    rebuilt = RPATTrainer.from_config(trainer.get_config())
    assert rebuilt.awp.get_config() == awp.get_config()
    assert RPATTrainer(keras_model(), attack=make_attack(), awp=True).awp.gamma == 0.005
    assert RPATTrainer(keras_model(), attack=make_attack()).awp is None
    for bad, message in (
        (dict(gamma=0.0), "gamma=0.0"),
        (dict(gamma=-0.01), "gamma=-0.01"),
        (dict(gamma=float("nan")), "gamma=nan"),
        (dict(warmup_epochs=-1), "warmup_epochs=-1"),
        (dict(warmup_epochs=1.5), "warmup_epochs=1.5"),
    ):
        with pytest.raises(ValueError, match=message):
            AWP(**bad)
    with pytest.raises(ValueError, match="awp='yes'"):
        RPATTrainer(keras_model(), attack=make_attack(), awp="yes")
    with pytest.warns(UserWarning, match="gamma`=0.5"):
        AWP(gamma=0.5)


def test_run_options_set_the_presets_awp():
    from keras_rpat import presets
    from keras_rpat import recipes
    from keras_rpat.recipes import build

    spec = recipes.single_run("trades+rpat", "synthetic", epochs=30, awp_gamma=0.005, awp_warmup=20)
    preset = build.build_preset(spec)  # 30 epochs: the preset's schedule scales, the AWP warm-up does not
    assert preset.awp.get_config() == {"gamma": 0.005, "warmup_epochs": 20}
    assert preset.build_trainer(keras_model()).awp.get_config() == preset.awp.get_config()
    assert build.build_preset(recipes.single_run("pgd_at", "synthetic", epochs=2)).awp is None
    # The Python preset's warm-up scales with its schedule, as its other epochs.
    scaled = presets.get("trades").with_options(awp=AWP(warmup_epochs=10)).with_epochs(55)
    assert scaled.awp.warmup_epochs == 5
    with pytest.raises(recipes.RecipeError, match="`awp_warmup`.*needs `awp_gamma`"):
        recipes.single_run("pgd_at", "synthetic", awp_warmup=3)
    with pytest.warns(UserWarning, match="AWP starts at epoch 5.*2 epochs: it never runs"):
        build.build_preset(recipes.single_run("pgd_at", "synthetic", epochs=2, awp_gamma=0.01, awp_warmup=5))


def test_cli_awp_options():
    from keras_rpat.cli import main
    from testing import invoke

    result = invoke(main, ["train", "--method", "pgd_at", "--dataset", "synthetic", "--awp-warmup", "3"])
    assert result.exit_code == 2 and "needs `awp_gamma`" in result.output and "Traceback" not in result.output
    result = invoke(main, ["train", "--method", "pgd_at", "--dataset", "synthetic", "--awp-gamma", "0"])
    assert result.exit_code == 2 and "--awp-gamma" in result.output
    assert "--awp-gamma" in invoke(main, ["train", "--help"]).output
