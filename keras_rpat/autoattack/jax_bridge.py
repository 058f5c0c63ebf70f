"""A Keras model on the jax backend as a differentiable torch function (imports jax and torch).

`TorchBridge` runs a JAX model through `JaxLogits`: the images come from torch
and the logits go back to it through DLPack, without a copy when both sit on the
same device (JAX on the CPU and torch, or JAX on a GPU and a CUDA build of torch;
a buffer JAX cannot take as it is, e.g. not aligned, it copies), else through NumPy.
The logits are one `jax.jit`-compiled `stateless_call` of the model in inference
mode over its variables' current values; the input gradient a torch attack asks
for is the jitted `jax.vjp` of the same function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch

__all__ = ["JaxLogits", "to_jax", "to_torch", "torch_device"]


def torch_device():
    """The torch device of JAX's default device: its GPU when torch has CUDA, else the CPU."""
    device = jax.devices()[0]
    if device.platform == "gpu" and torch.cuda.is_available():
        return torch.device("cuda", device.local_hardware_id)
    return torch.device("cpu")


def _shared_device(tensor_device, array_platform):
    return (tensor_device.type, array_platform) in (("cpu", "cpu"), ("cuda", "gpu"))


def to_jax(tensor):
    """A torch tensor as a JAX array: the same memory through DLPack on a shared device, else a NumPy copy."""
    tensor = tensor.detach().contiguous()
    if _shared_device(tensor.device, jax.devices()[0].platform):
        return jax.dlpack.from_dlpack(tensor)
    return jnp.asarray(tensor.cpu().numpy())


def to_torch(array, device):
    """A JAX array as a torch tensor on `device`: the same memory through DLPack on a shared device,
    else a NumPy copy moved there."""
    array = array.block_until_ready()
    if _shared_device(device, next(iter(array.devices())).platform):
        return torch.from_dlpack(array)
    return torch.from_numpy(np.array(array)).to(device)


class JaxLogits:
    """`model`'s logits of NCHW torch images, differentiable in the images (torch autograd).

    Args:
        model: a Keras model on the jax backend, images in [0, 1] to logits.
        data_format: the model's; a channels-last model gets the images transposed inside the jitted function.
        device: the torch device of the tensors given and returned (`torch_device()`).
    """

    def __init__(self, model, data_format, device):
        self.model = model
        self.device = device
        channels_last = data_format == "channels_last"

        def logits(trainable, non_trainable, x):
            if channels_last:
                x = jnp.transpose(x, (0, 2, 3, 1))
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return outputs

        def input_gradient(trainable, non_trainable, x, grad_logits):
            _, pullback = jax.vjp(lambda x: logits(trainable, non_trainable, x), x)
            return pullback(grad_logits)[0]

        self.logits = jax.jit(logits)
        self.input_gradient = jax.jit(input_gradient)

    def state(self):
        """The values of the model's variables now (the weights AutoAttack attacks)."""
        model = self.model
        return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    def __call__(self, x, training=False):
        return _JaxFunction.apply(x, self)


class _JaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, jax_logits):
        ctx.jax_logits = jax_logits
        ctx.save_for_backward(x)
        return to_torch(jax_logits.logits(*jax_logits.state(), to_jax(x)), jax_logits.device)

    @staticmethod
    def backward(ctx, grad_logits):
        (x,) = ctx.saved_tensors
        jax_logits = ctx.jax_logits
        grad = jax_logits.input_gradient(*jax_logits.state(), to_jax(x), to_jax(grad_logits))
        return to_torch(grad, x.device), None
