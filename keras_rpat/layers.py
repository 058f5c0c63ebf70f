"""Layers and initializers that reproduce PyTorch defaults in Keras 3.

The reference RPAT code is PyTorch. Numerical parity needs three things Keras
does differently by default:

- `BatchNorm`: PyTorch `nn.BatchNorm2d` semantics (momentum 0.1, i.e. Keras
  `momentum=0.9`; `epsilon=1e-5`; the moving variance is updated with the
  *unbiased* batch variance).
- `InputNormalization`: a parameter-free per-channel `(x - mean) / std`
  (the SOTAs/ReBAT pipeline normalises inside the model).
- PyTorch default initialisers: `torch_kernel_initializer()` (conv/linear
  weight `U(+-1/sqrt(fan_in))`), `TorchBiasUniform` (linear bias
  `U(+-1/sqrt(fan_in))`) and `kaiming_normal_fan_out()` (WideResNet convs).

Only `keras.ops` is used here, so everything runs on every Keras backend.
"""

import math

import keras
from keras import ops

from keras_rpat import backend as rpat_backend

__all__ = [
    "BatchNorm",
    "InputNormalization",
    "TorchBiasUniform",
    "torch_kernel_initializer",
    "kaiming_normal_fan_out",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

_DATA_FORMATS = ("channels_last", "channels_first")


def standardize_data_format(data_format):
    """Returns `data_format`, or Keras' image data format when it is `None`."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in _DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {_DATA_FORMATS} or None. Received: data_format={data_format!r}")
    return data_format


@keras.saving.register_keras_serializable(package="keras_rpat")
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalization with PyTorch `nn.BatchNorm2d` semantics.

    Identical to `keras.layers.BatchNormalization` except for the defaults
    (`momentum=0.9`, which is PyTorch's `momentum=0.1`, and `epsilon=1e-5`)
    and for the moving-variance update in training mode: like PyTorch, the
    batch is normalised with the biased batch variance, but the moving
    variance is updated with the unbiased one,

    ```
    moving_mean = momentum * moving_mean + (1 - momentum) * mean
    moving_variance = momentum * moving_variance
                      + (1 - momentum) * variance * n / (n - 1)
    ```

    where `n` is the number of elements reduced per channel (batch size times
    the spatial size). The batch variance is computed in two passes
    (`mean((x - mean(x))**2)`), as PyTorch does, rather than as
    `E[x**2] - E[x]**2`.

    The layer computes in float32 for float16, bfloat16 and float32 inputs,
    and in float64 for float64 inputs (`keras.layers.BatchNormalization`
    computes float64 inputs in float32).

    Masks and batch renormalization are not supported.

    Args:
        axis: Integer, the channel axis (`-1` for `channels_last`, `1` for
            `channels_first` images).
        momentum: Momentum of the moving averages, Keras convention
            (`1 - ` PyTorch's `momentum`). Defaults to `0.9`.
        epsilon: Small float added to the variance. Defaults to `1e-5`.
        **kwargs: Any other argument of `keras.layers.BatchNormalization`
            (`center`, `scale`, initializers, regularizers, constraints,
            `synchronized`, `name`, `dtype`, ...), except `renorm=True`.

    Example:

    >>> layer = keras_rpat.layers.BatchNorm(axis=-1)
    >>> y = layer(keras.random.normal((4, 8, 8, 16)), training=True)

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025 (reference code uses `torch.nn.BatchNorm2d`).
    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """

    def __init__(self, axis=-1, momentum=0.9, epsilon=1e-5, **kwargs):
        if kwargs.get("renorm", False):
            raise ValueError(
                "`keras_rpat.layers.BatchNorm` does not support batch "
                "renormalization. Use `keras.layers.BatchNormalization` for "
                f"that. Received: renorm={kwargs['renorm']}"
            )
        super().__init__(axis=axis, momentum=momentum, epsilon=epsilon, **kwargs)
        self.supports_masking = False

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                "`keras_rpat.layers.BatchNorm` does not support masking. "
                "Use `keras.layers.BatchNormalization` for masked inputs. "
                f"Received: mask with shape {getattr(mask, 'shape', None)}"
            )
        compute_dtype = self._statistics_dtype(inputs)
        inputs = ops.cast(inputs, compute_dtype)
        if not (training and self.trainable):
            outputs = ops.batch_normalization(
                inputs,
                ops.cast(self.moving_mean, compute_dtype),
                ops.cast(self.moving_variance, compute_dtype),
                axis=self.axis,
                offset=ops.cast(self.beta, compute_dtype) if self.center else None,
                scale=ops.cast(self.gamma, compute_dtype) if self.scale else None,
                epsilon=self.epsilon,
            )
            return ops.cast(outputs, self.compute_dtype)

        axes = self._axes_but_channels(inputs)

        n = self._num_reduced(inputs)
        global_moments = rpat_backend.synchronized_moments(inputs, axes)
        if global_moments is not None:  # a data-parallel step with sync_batchnorm
            mean, variance, n = global_moments
            centered = inputs - self._broadcast(mean, inputs)
        elif self.synchronized:
            mean, variance = ops.moments(inputs, axes=axes, synchronized=True)
            centered = inputs - self._broadcast(mean, inputs)
        else:
            # sum / n, not ops.mean: Keras' torch mean computes float64 in float32.
            count = ops.cast(n, compute_dtype)
            mean = ops.sum(inputs, axis=axes, keepdims=True) / count
            centered = inputs - mean
            variance = ops.sum(ops.square(centered), axis=axes) / count
            mean = ops.reshape(mean, (-1,))

        # PyTorch normalises with the biased variance ...
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(self.gamma, compute_dtype)
        outputs = centered * self._broadcast(inv, inputs)
        if self.center:
            outputs = outputs + self._broadcast(ops.cast(self.beta, compute_dtype), inputs)

        # ... and tracks the unbiased one.
        if isinstance(n, int):
            correction = n / max(n - 1, 1)
        else:
            n = ops.cast(n, compute_dtype)
            correction = n / ops.maximum(n - 1.0, 1.0)
        unbiased = ops.stop_gradient(variance * correction)
        mean = ops.stop_gradient(mean)
        momentum = self.momentum
        moving_mean = ops.cast(self.moving_mean, compute_dtype)
        moving_variance = ops.cast(self.moving_variance, compute_dtype)
        self.moving_mean.assign(
            ops.cast(
                moving_mean * momentum + mean * (1.0 - momentum),
                self.moving_mean.dtype,
            )
        )
        self.moving_variance.assign(
            ops.cast(
                moving_variance * momentum + unbiased * (1.0 - momentum),
                self.moving_variance.dtype,
            )
        )
        return ops.cast(outputs, self.compute_dtype)

    @staticmethod
    def _statistics_dtype(inputs):
        # float16 and bfloat16 are upcast (as Keras does); float64 stays float64,
        # where Keras' `result_type(float64, "float32")` would give float32.
        if keras.backend.standardize_dtype(inputs.dtype) == "float64":
            return "float64"
        return "float32"

    def _broadcast(self, vector, inputs):
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        return ops.reshape(vector, shape)

    def _axes_but_channels(self, inputs):
        """The axes the batch statistics reduce over: every axis but `self.axis`."""
        rank = len(inputs.shape)
        return [i for i in range(rank) if i != self.axis % rank]

    def _num_reduced(self, inputs):
        shape = ops.shape(inputs)
        n = 1
        for axis in self._axes_but_channels(inputs):
            n = n * shape[axis]
        return n


@keras.saving.register_keras_serializable(package="keras_rpat")
class InputNormalization(keras.layers.Layer):
    """Parameter-free per-channel input normalization `(x - mean) / std`.

    Unlike `keras.layers.Normalization`, the statistics are constants, not
    weights: the layer adds no variables, so parameter counts match the
    reference models (the SOTAs/ReBAT pipeline normalises inside the model,
    with the CIFAR-10 statistics for both CIFAR datasets).

    Args:
        mean: Per-channel means, a sequence with one value per channel or a
            single float used for every channel. Defaults to the CIFAR-10
            means `(0.4914, 0.4822, 0.4465)`.
        std: Per-channel standard deviations, same form as `mean`, all `> 0`.
            Defaults to the CIFAR-10 values `(0.2471, 0.2435, 0.2616)`.
        data_format: `"channels_last"` or `"channels_first"`; `None` uses
            `keras.config.image_data_format()`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`).

    Example:

    >>> layer = keras_rpat.layers.InputNormalization()
    >>> y = layer(keras.ops.ones((2, 32, 32, 3)))

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025 (SOTAs pipeline, built on Wang et al., ReBAT, NeurIPS 2023).
    """

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = _as_float_tuple(mean, "mean")
        self.std = _as_float_tuple(std, "std")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"All values of `std` must be > 0. Received: std={self.std}")
        if len(self.mean) != len(self.std) and 1 not in (
            len(self.mean),
            len(self.std),
        ):
            raise ValueError(
                "`mean` and `std` must have the same length (one value per "
                f"channel). Received: mean={self.mean}, std={self.std}"
            )
        self.data_format = standardize_data_format(data_format)
        self.supports_masking = True

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        axis = self._channel_axis()
        channels = input_shape[axis]
        num = max(len(self.mean), len(self.std))
        if channels is not None and num != 1 and channels != num:
            raise ValueError(
                f"`InputNormalization` has {num} channel statistics but its "
                f"input has {channels} channels (data_format="
                f"{self.data_format!r}). Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        rank = len(inputs.shape)
        shape = [1] * rank
        shape[self._channel_axis()] = -1
        inputs = ops.cast(inputs, self.compute_dtype)  # e.g. uint8 images
        dtype = inputs.dtype
        mean = ops.reshape(ops.convert_to_tensor(self.mean, dtype=dtype), shape)
        std = ops.reshape(ops.convert_to_tensor(self.std, dtype=dtype), shape)
        return ops.divide(ops.subtract(inputs, mean), std)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mean": list(self.mean),
                "std": list(self.std),
                "data_format": self.data_format,
            }
        )
        return config


def _as_float_tuple(value, name):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a float or a sequence of floats. Received: {name}={value!r}") from None
    if not values:
        raise ValueError(f"`{name}` must not be empty. Received: {name}={value!r}")
    return values


@keras.saving.register_keras_serializable(package="keras_rpat")
class TorchBiasUniform(keras.initializers.RandomUniform):
    """PyTorch's default bias initializer, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.

    A bias vector does not know the fan-in of its layer, so it is given
    explicitly (the number of input features of a `Dense` layer, or
    `in_channels * kernel_height * kernel_width` for a convolution).

    Args:
        fan_in: Positive integer, the fan-in of the layer the bias belongs to.
        seed: Optional integer or `keras.random.SeedGenerator`, as for
            `keras.initializers.RandomUniform`.

    Example:

    >>> dense = keras.layers.Dense(
    ...     10, bias_initializer=keras_rpat.layers.TorchBiasUniform(512)
    ... )

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025 (reference models keep PyTorch's default `nn.Linear` init).
    """

    def __init__(self, fan_in, seed=None):
        if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in <= 0:
            raise ValueError(f"`fan_in` must be a positive integer. Received: fan_in={fan_in!r}")
        self.fan_in = fan_in
        bound = 1.0 / math.sqrt(fan_in)
        super().__init__(minval=-bound, maxval=bound, seed=seed)

    def get_config(self):
        config = super().get_config()
        config.pop("minval", None)
        config.pop("maxval", None)
        config["fan_in"] = self.fan_in
        return config


def torch_kernel_initializer(seed=None):
    """PyTorch's default conv/linear weight init, `U(+-1/sqrt(fan_in))`.

    This is `kaiming_uniform_(a=sqrt(5))`, i.e.
    `keras.initializers.VarianceScaling(1/3, "fan_in", "uniform")`.
    Returns a new initializer: use one per layer (a Keras initializer called
    twice returns the same values).

    Args:
        seed: Optional integer or `keras.random.SeedGenerator`.

    Example:

    >>> conv = keras.layers.Conv2D(
    ...     64, 3, kernel_initializer=keras_rpat.layers.torch_kernel_initializer()
    ... )
    """
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed)


def kaiming_normal_fan_out(seed=None):
    """The WideResNet conv init, `N(0, sqrt(2 / (k * k * out_channels)))`.

    Equal to `keras.initializers.VarianceScaling(2.0, "fan_out",
    "untruncated_normal")`. Returns a new initializer: use one per layer.

    Args:
        seed: Optional integer or `keras.random.SeedGenerator`.

    Example:

    >>> conv = keras.layers.Conv2D(
    ...     160, 3, kernel_initializer=keras_rpat.layers.kaiming_normal_fan_out()
    ... )

    References:

    - Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seed)
