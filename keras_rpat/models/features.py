"""`feature_model`: a classifier's logits together with its perception-proxy features."""

import keras


_PROXY_ALIASES = {"second_to_last": "penultimate"}


def feature_model(model, proxies=("penultimate", "third_to_last")):
    """Returns a model that outputs `[logits, *features]` for RPAT proxies.

    The new model shares every layer (and so every weight and BatchNorm
    statistic) with `model`; one call runs one forward pass, so training-mode
    BatchNorm behaves exactly as in a call of `model`.

    Args:
        model: A functional model built by `keras_rpat.models` (or any
            single-output functional model with layers named after
            `proxies`).
        proxies: Layer names (or one name) whose outputs are returned after
            the logits: `"penultimate"` (alias `"second_to_last"`), the pooled
            feature vector, and `"third_to_last"`, the flattened output of the
            stage before the last. Any other layer name also works.

    Returns:
        A `keras.Model` from the inputs of `model` to `[logits, *features]`.

    Example:

    >>> model = keras_rpat.models.get("resnet18_bottleneck")
    >>> features = keras_rpat.models.feature_model(model)
    >>> logits, penultimate, third = features(keras.ops.zeros((2, 32, 32, 3)))
    >>> penultimate.shape, third.shape
    ((2, 2048), (2, 65536))

    References:

    - Wang & Liu, "Failure Cases Are Better Learned But Boundary Says Sorry",
      ICCV 2025 (Table 5, perception proxies).
    """
    if isinstance(proxies, str):
        proxies = (proxies,)
    try:
        inputs = model.input  # the user's input structure, not a list
        outputs = model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if inputs is None or not outputs:
        raise ValueError(
            "`feature_model` needs a functional `keras.Model` with defined "
            f"inputs and outputs. Received: model={model!r}"
        )
    if len(outputs) != 1:
        raise ValueError(
            "`feature_model` needs a model with a single (logits) output. "
            f"Received a model with {len(outputs)} outputs."
        )
    features = []
    for proxy in proxies:
        layer_name = _PROXY_ALIASES.get(proxy, proxy)
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f"Model {model.name!r} has no layer named {layer_name!r}. "
                "Expected proxies such as 'penultimate' and 'third_to_last' "
                f"(models from `keras_rpat.models`). Received: proxies={proxies}"
            ) from None
        features.append(layer.output)
    return keras.Model(inputs, [outputs[0], *features], name=f"{model.name}_features")
