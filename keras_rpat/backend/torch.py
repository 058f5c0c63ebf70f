"""PyTorch implementations of the backend hooks (see `keras_rpat.backend`)."""

import random as _py_random
import weakref

import torch
from keras.src.backend.torch.core import get_device
from keras.src.backend.torch.core import to_torch_dtype

# One device-side generator per (SeedGenerator, device), seeded once.
_GENERATORS = weakref.WeakKeyDictionary()


def input_gradient(loss_fn, x):
    # Keras' torch test loop runs under `torch.no_grad()`; attacks always need
    # the input gradient, so enable it locally.
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, [x])
    return loss.detach(), grad.detach()


def no_grad():
    return torch.no_grad()


def assign_moving_average(targets, sources, decay):
    with torch.no_grad():
        pairs = [(t.value, s.value) for t, s in zip(targets, sources)]
        floats = [(t, s) for t, s in pairs if t.is_floating_point()]
        others = [(t, s) for t, s in pairs if not t.is_floating_point()]
        for t, s in others:  # e.g. seed-generator states: copied, not averaged
            t.copy_(s)
        if not floats:
            return
        t = [p[0] for p in floats]
        s = [p[1].to(p[0].dtype) for p in floats]
        if isinstance(decay, (int, float)) and decay == 0.0:
            torch._foreach_copy_(t, s)
        else:
            # t = decay * t + (1 - decay) * s == t + (1 - decay) * (s - t)
            torch._foreach_lerp_(t, s, 1.0 - decay)


def train_step(trainer, data):
    x, y, sample_weight = trainer._unpack(data)
    x_adv, static_views = trainer._pre_gradient_views(x, y)
    trainer.zero_grad(set_to_none=True)
    total, terms, views = trainer._gradient_views_and_losses(
        x, y, x_adv, static_views, sample_weight
    )
    trainable_weights = trainer.trainable_weights[:]
    scaled = trainer.optimizer.scale_loss(total)
    scaled.backward()
    gradients = [v.value.grad for v in trainable_weights]
    with torch.no_grad():
        trainer.optimizer.apply(gradients, trainable_weights)
        trainer._after_update(x)
    return trainer._update_metrics(y, total, terms, views, sample_weight)


def _generator(seed, device):
    if seed is None:
        return None
    per_device = _GENERATORS.setdefault(seed, {})
    key = str(device)
    if key not in per_device:
        initial = getattr(seed, "_initial_seed", None)
        if initial is None:
            initial = _py_random.randrange(2**31)
        generator = torch.Generator(device=device)
        generator.manual_seed(int(initial))
        per_device[key] = generator
    return per_device[key]


def _shape(shape):
    return tuple(int(s) for s in shape)


def random_uniform(shape, minval, maxval, dtype, seed):
    device = get_device()
    dtype = to_torch_dtype(dtype)
    u = torch.rand(_shape(shape), generator=_generator(seed, device), dtype=dtype, device=device)
    return u * (maxval - minval) + minval


def random_normal(shape, mean, stddev, dtype, seed):
    device = get_device()
    dtype = to_torch_dtype(dtype)
    n = torch.randn(_shape(shape), generator=_generator(seed, device), dtype=dtype, device=device)
    return n * stddev + mean


def random_beta(concentration1, concentration0, dtype, seed):
    # Beta(a, b) = Ga / (Ga + Gb) with unit-scale Gamma draws on the device.
    device = get_device()
    dtype = to_torch_dtype(dtype)
    generator = _generator(seed, device)
    a = torch.full((1,), float(concentration1), dtype=dtype, device=device)
    b = torch.full((1,), float(concentration0), dtype=dtype, device=device)
    ga = torch._standard_gamma(a, generator=generator)
    gb = torch._standard_gamma(b, generator=generator)
    return (ga / (ga + gb)).reshape(())


def device_name():
    device = str(get_device())
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name()})"
    return device


def get_random_state(seed):
    """JSON-able state of the device generators behind a SeedGenerator."""
    import base64

    return {
        device: base64.b64encode(bytes(g.get_state().cpu().numpy().tobytes())).decode("ascii")
        for device, g in _GENERATORS.get(seed, {}).items()
    }


def set_random_state(seed, state):
    """Restores what `get_random_state` returned (for resumed runs)."""
    import base64

    import numpy as np

    for device, encoded in (state or {}).items():
        raw = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).copy()
        generator = _generator(seed, device)
        generator.set_state(torch.from_numpy(raw))
