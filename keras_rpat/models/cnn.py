"""`small_cnn`: a tiny conv-BN-ReLU network for tests and demos."""

from keras_rpat import _checks
from keras_rpat.models.builder import PAPER
from keras_rpat.models.builder import Config
from keras_rpat.models.builder import document


@document(
    """A tiny conv-BN-ReLU network for tests and demos (a few thousand weights).

    Three conv3x3 -> BN -> ReLU blocks (strides 1, 2, 2), global average
    pooling (`"penultimate"`) and a linear classifier. `"third_to_last"` is
    the flattened output of the second block. 6,418 trainable parameters
    with the default widths and 10 classes.

    Args:
        widths: Three positive integers, the channels of the three blocks.
            Defaults to `(8, 16, 32)`.
{common_args}
""",
    references=(PAPER,),
    example='keras_rpat.models.get("small_cnn")',
)
def small_cnn(
    num_classes=10,
    input_shape=None,
    data_format=None,
    stem_stride=1,
    normalize=None,
    widths=(8, 16, 32),
    name="small_cnn",
):
    widths = tuple(widths)
    if len(widths) != 3:
        raise ValueError(f"`widths` must have 3 entries. Received: widths={widths}")
    for width in widths:
        _checks.check_positive_int(width, "widths")
    cfg = Config(num_classes, input_shape, data_format, stem_stride, normalize)
    inputs, x = cfg.inputs()
    for index, (width, stride) in enumerate(zip(widths, (cfg.stem_stride, 2, 2)), start=1):
        x = cfg.conv(x, width, 3, stride, f"conv{index}")
        x = cfg.relu(cfg.bn(x, f"bn{index}"), f"relu{index}")
        if index == 2:
            x = cfg.third_to_last(x)
    return cfg.head(x, inputs, name)
