"""Torch fast path for `keras_rpat.optimizers.SGD`.

The rule of `SGD.update_step`, done for all variables at once with
`torch._foreach_*` kernels (as `torch.optim.SGD(foreach=True)` and Keras' own
torch SGD do), so an update costs a handful of kernel launches instead of
several per variable. The common case (momentum without dampening or
Nesterov) runs in place, allocating nothing. No host synchronisation: the
learning rate stays a device tensor, and the hyperparameters are Python floats.
"""

import torch


def _as_tensor(value, dtype, device):
    value = getattr(value, "value", value)  # a `keras.Variable`
    return torch.as_tensor(value, dtype=dtype, device=device)


def sgd_foreach_update(
    variables,
    grads,
    momentum_buffers,
    learning_rate,
    *,
    momentum,
    dampening,
    nesterov,
    weight_decay,
    decay_flags,
    first_step=None,
):
    """Apply one torch-style SGD step in place with `_foreach` kernels.

    Args:
        variables: list of the variables' torch tensors (updated in place).
        grads: list of gradient tensors, one per variable.
        momentum_buffers: list of momentum buffer tensors (updated in place),
            or `None` when `momentum == 0`.
        learning_rate: scalar tensor, `keras.Variable` or Python float.
        momentum: float, momentum factor.
        dampening: float, dampening for momentum.
        nesterov: bool, whether to use Nesterov momentum.
        weight_decay: float, coupled L2 coefficient.
        decay_flags: list of bools, whether each variable is decayed.
        first_step: boolean scalar tensor, `True` on the optimizer's first
            update; only needed when `momentum != 0` and `dampening != 0`.

    Returns:
        `True` if the update was applied, `False` if the inputs are not
        supported here (mixed dtypes or devices, non-float or sparse
        tensors): the caller then uses the per-variable path.
    """
    if not variables:
        return True
    dtype, device = variables[0].dtype, variables[0].device
    if not dtype.is_floating_point:
        return False
    for v, g in zip(variables, grads):
        if (
            not isinstance(g, torch.Tensor)
            or g.is_sparse
            or v.dtype != dtype
            or v.device != device
            or g.device != device
        ):
            return False

    with torch.no_grad():
        d = [g if g.dtype == dtype else g.to(dtype) for g in grads]
        lr = _as_tensor(learning_rate, dtype, device)
        if momentum != 0 and dampening == 0 and not nesterov:
            _momentum_update(variables, d, momentum_buffers, lr, momentum, weight_decay, decay_flags)
            return True
        if weight_decay != 0 and any(decay_flags):
            if all(decay_flags):
                d = torch._foreach_add(d, variables, alpha=weight_decay)
            else:
                index = [i for i, flag in enumerate(decay_flags) if flag]
                decayed = torch._foreach_add(
                    [d[i] for i in index],
                    [variables[i] for i in index],
                    alpha=weight_decay,
                )
                d = list(d)
                for i, value in zip(index, decayed):
                    d[i] = value
        if momentum != 0:
            torch._foreach_mul_(momentum_buffers, momentum)
            if dampening != 0:
                # torch clones `d` into the (new) buffer on the first step.
                coefficient = torch.where(
                    torch.as_tensor(first_step, device=device),
                    1.0,
                    1.0 - dampening,
                ).to(dtype)
                torch._foreach_add_(momentum_buffers, torch._foreach_mul(d, coefficient))
            else:
                # The buffer starts at zero, so step 1 gives exactly `d`.
                torch._foreach_add_(momentum_buffers, d)
            if nesterov:
                d = torch._foreach_add(d, momentum_buffers, alpha=momentum)
            else:
                d = momentum_buffers
        torch._foreach_sub_(variables, torch._foreach_mul(d, lr))
    return True


def _momentum_update(variables, grads, buffers, lr, momentum, weight_decay, decay_flags):
    """The common case (momentum, no dampening, no Nesterov) in four in-place passes.

    `buf = momentum * buf + grad + weight_decay * variable`, then
    `variable -= lr * buf`: torch's rule, with the weight decay added to the
    buffer instead of to a copy of the gradient. No tensor is allocated and
    the caller's gradients are untouched; the sums differ from torch's order
    by rounding only.
    """
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    if weight_decay != 0:
        index = [i for i, flag in enumerate(decay_flags) if flag]
        if index:
            torch._foreach_add_([buffers[i] for i in index], [variables[i] for i in index], alpha=weight_decay)
    torch._foreach_addcmul_(variables, buffers, [lr] * len(variables), value=-1)
