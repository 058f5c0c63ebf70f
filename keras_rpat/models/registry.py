"""`get(name)`: a classifier of the RPAT paper, or of the RobustBench leaderboard, by name."""

from keras_rpat._names import MODEL_NAMES
from keras_rpat._names import canonical_model_name as canonical_name
from keras_rpat.models import cnn
from keras_rpat.models import dm_resnet
from keras_rpat.models import resnet
from keras_rpat.models import wrn

# Each name of `_names.MODEL_NAMES` is the builder function of that name in one of the family modules.
_FAMILIES = (resnet, wrn, cnn, dm_resnet)
_BUILDERS = {name: getattr(next(m for m in _FAMILIES if hasattr(m, name)), name) for name in MODEL_NAMES}


def get(
    name,
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    **options,
):
    """Builds a classifier of the RPAT paper or of the RobustBench leaderboard by name.

    Args:
        name: One of `keras_rpat.models.list_models()` or an alias; case,
            `-` and `_` are ignored (`"PreActResNet18"`, `"wrn34-10"`,
            `"dm_wideresnet_70_16"`). The paper's networks:
            `"resnet18"`, `"resnet18_bottleneck"`, `"preact_resnet18"`,
            `"wide_resnet34_10"`, `"wide_resnet28_10"`, `"small_cnn"`.
            RobustBench's: `"preact_resnet18_robustbench"` (its
            `PreActResNet18()`), DeepMind's SiLU networks
            `"dm_wide_resnet"` (any `depth` and `width`),
            `"dm_wide_resnet28_10"`, `"dm_wide_resnet34_10"`,
            `"dm_wide_resnet34_20"`, `"dm_wide_resnet70_16"` and
            `"dm_preact_resnet18"`.
        num_classes: Positive integer, number of classes (logits).
            Defaults to `10`.
        input_shape: Shape of one image without the batch axis. Defaults to
            `(32, 32, 3)` for `channels_last`, `(3, 32, 32)` for
            `channels_first`. All dimensions must be known.
        data_format: `"channels_last"` or `"channels_first"`; `None` uses
            `keras.config.image_data_format()`.
        stem_stride: Stride of the first convolution: `1` for CIFAR, `2`
            for 64x64 Tiny-ImageNet. Does not change the parameter count.
        **options: Extra keyword arguments of the builder:
            `normalize` for every network (`None`, `"cifar10"`,
            `"cifar100"` or a `(mean, std)` pair; adds a parameter-free
            `keras_rpat.layers.InputNormalization` as the first layer);
            the default is the builder's: `None` for the paper's networks,
            `"auto"` (the dataset's statistics, inside the network) for
            DeepMind's. Also `bias_last` for the WideResNets, `depth`,
            `width` and `activation` for DeepMind's, `widths` for
            `small_cnn`. The model is named after its canonical name; call
            the builder (e.g. `keras_rpat.models.resnet18(name=...)`) for
            another name.

    Returns:
        A `keras.Model` from images to logits, with layers `"logits"`,
        `"penultimate"` and `"third_to_last"`.

    Example:

    >>> model = keras_rpat.models.get("resnet18_bottleneck", num_classes=10)
    >>> tiny = keras_rpat.models.get(
    ...     "wrn34_10", num_classes=200, input_shape=(64, 64, 3), stem_stride=2
    ... )
    >>> leaderboard = keras_rpat.models.get("dm_wide_resnet", depth=34, width=20)

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025.
    - Croce et al., "RobustBench: a standardized adversarial robustness
      benchmark", NeurIPS 2021 Datasets and Benchmarks.
    """
    builder = _BUILDERS[canonical_name(name)]
    return builder(
        num_classes=num_classes,
        input_shape=input_shape,
        data_format=data_format,
        stem_stride=stem_stride,
        **options,
    )
