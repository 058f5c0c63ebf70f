"""A Keras model on the torch or jax backend, seen as a `torch.nn.Module` (imports torch)."""

import contextlib

import keras
import torch

from keras_rpat import _data_checks
from keras_rpat import config as rpat_config
from keras_rpat import fast_path

__all__ = ["TorchBridge", "frozen_weights", "model_device"]


def model_device(model):
    """The device of the model's weights (Keras' default device if it has none); on jax, the torch
    device of JAX's default one (`jax_bridge.torch_device`)."""
    if keras.config.backend() == "jax":
        from keras_rpat.autoattack import jax_bridge

        return jax_bridge.torch_device()
    for v in getattr(model, "weights", []):
        value = getattr(v, "value", None)
        if isinstance(value, torch.Tensor):
            return value.device
    return keras.ops.empty((0,)).device


class _ToChannelsLast(torch.autograd.Function):
    """NCHW -> NHWC (a view) whose input gradient comes back as a contiguous NCHW tensor.

    A plain `permute` hands back the gradient in the channels-last memory layout,
    on which a torch attack's `grad.view(n, -1)` fails (torchattacks' PGDL2).
    """

    @staticmethod
    def forward(ctx, x):
        return x.permute(0, 2, 3, 1)

    @staticmethod
    def backward(ctx, grad):
        return grad.permute(0, 3, 1, 2).contiguous()


class TorchBridge(torch.nn.Module):
    """A Keras model (torch or jax backend) as a `torch.nn.Module` for AutoAttack.

    Takes NCHW float tensors in [0, 1] and returns the Keras model's logits,
    computed by the model lowered into torch kernels over its own variables
    (`keras_rpat.fast_path.inference_model`: the same arithmetic, faster), or
    by the Keras model itself after `keras_rpat.config.set_fast_path_default(False)`
    or when it cannot be lowered.
    The input is permuted to NHWC (a view, not a copy) only when the model is
    channels-last; input gradients come back as contiguous NCHW tensors (torch
    attacks may `.view()` them). On jax the logits and input gradients are the model's jitted
    `stateless_call` and its `jax.vjp`, with the tensors handed over through DLPack
    (`keras_rpat.autoattack.jax_bridge`). The Keras model is always called with `training=False`, so
    `.eval()` / `.train()` on the bridge change nothing, and it runs on the
    device of the model's weights (`bridge.device`). The Keras model is not
    registered as a submodule, so `bridge.to(...)` does not move it.

    Args:
        model: a Keras model mapping images in [0, 1] to logits, built under
            `KERAS_BACKEND=torch` or `jax`.
        data_format: `"channels_last"` or `"channels_first"`; `None` infers it
            from the first convolution (or the input shape).

    Example:

    ```python
    bridge = keras_rpat.autoattack.torch_bridge.TorchBridge(model)
    logits = bridge(torch.rand(8, 3, 32, 32))
    ```
    """

    def __init__(self, model, data_format=None):
        super().__init__()
        if keras.config.backend() not in ("torch", "jax"):
            raise ValueError(
                "TorchBridge needs a Keras model on the torch or jax backend; the active "
                f"backend is {keras.config.backend()!r}. Use "
                "keras_rpat.autoattack.run_autoattack, which evaluates "
                "models of other backends in a PyTorch subprocess."
            )
        model = _data_checks.evaluation_model(model)
        # Not a registered submodule: `.train()`, `.eval()` and `.to()` leave
        # the Keras model alone.
        object.__setattr__(self, "keras_model", model)
        self.data_format = _data_checks.infer_data_format(model, data_format)
        if keras.config.backend() == "jax":
            from keras_rpat.autoattack import jax_bridge

            # Takes NCHW images (transposed inside its jitted function).
            object.__setattr__(self, "forward_model", jax_bridge.JaxLogits(model, self.data_format, self.device))
            self._permute = False
        else:
            object.__setattr__(self, "forward_model", fast_path.inference_model(model, rpat_config.fast_path_default()))
            self._permute = self.data_format == "channels_last"

    @property
    def device(self):
        """The device of the model's weights."""
        return model_device(self.keras_model)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"TorchBridge expects NCHW image batches. Received a tensor of shape {tuple(x.shape)}")
        if self._permute:
            x = _ToChannelsLast.apply(x)
        return self.forward_model(x, training=False)

    def extra_repr(self):
        lowered = keras.config.backend() == "torch" and self.forward_model is not self.keras_model
        return f"keras_model={self.keras_model.name!r}, data_format={self.data_format!r}, lowered={lowered}"


@contextlib.contextmanager
def frozen_weights(model):
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
