"""PyTorch implementations of the backend hooks (see `keras_rpat.backend`)."""

import torch


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
        t = [v.value for v in targets]
        s = [v.value.to(tv.dtype) for v, tv in zip(sources, t)]
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
