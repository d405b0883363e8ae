"""Reference models for Fashion-MNIST (28x28x1, 10 classes): the packaged config ``fashion``
trains `fashion_cnn`; `fashion_mobilenet` is the mobile-class model of the QAT and
channel-pruning rows. Like the other zoo models they output logits unless ``softmax=True``.

Parameter counts at the defaults (``tests/test_models.py`` pins them): `fashion_cnn` 66,218
(under the published table's "2 Conv <100K parameters" row), `fashion_mobilenet` 114,986.
"""

from __future__ import annotations

from tfopt._backend import import_keras

keras = import_keras()
layers = keras.layers


def _conv_bn_relu(x, filters, name, *, kernel=3, strides=1, relu6=False):
    x = layers.Conv2D(
        filters, kernel, strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(6.0 if relu6 else None, name=f"{name}_relu")(x)


def fashion_cnn(
    input_shape=(28, 28, 1),
    num_classes=10,
    *,
    width: int = 32,
    blocks: int = 2,
    dropout: float = 0.2,
    softmax: bool = False,
) -> keras.Model:
    """A VGG-style CNN: ``blocks`` stages of two 3x3 Conv-BatchNorm-ReLU (``width`` filters,
    doubled each stage) and a 2x2 max pool, then global average pooling, dropout and one Dense.

    Args:
        input_shape: the image shape. Defaults to (28, 28, 1).
        num_classes: the number of classes. Defaults to 10.
        width: filters of the first stage. Defaults to 32.
        blocks: the number of stages. Defaults to 2.
        dropout: dropout rate before the classifier (0: none). Defaults to 0.2.
        softmax: end in a softmax instead of logits. Defaults to False.

    Returns:
        An uncompiled ``keras.Model`` (66,218 parameters at the defaults).

    Example:
        >>> tfopt.models.get("fashion_cnn").count_params()
        66218
    """
    if blocks < 1 or width < 1:
        raise ValueError(f"width and blocks must be >= 1. Received: width={width}, blocks={blocks}")
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for stage in range(blocks):
        filters = width * 2**stage
        x = _conv_bn_relu(x, filters, f"s{stage + 1}a")
        x = _conv_bn_relu(x, filters, f"s{stage + 1}b")
        x = layers.MaxPooling2D(2, name=f"s{stage + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax" if softmax else None, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_cnn")


# (expansion, output channels as multiples of width, stride) of each inverted-residual block
_MOBILENET_BLOCKS = ((1, 1, 1), (4, 2, 2), (4, 2, 1), (4, 4, 2), (4, 4, 1), (4, 4, 1))


def fashion_mobilenet(
    input_shape=(28, 28, 1),
    num_classes=10,
    *,
    width: int = 16,
    softmax: bool = False,
) -> keras.Model:
    """A MobileNetV2-style net at 28x28: a 3x3 stem, six inverted-residual blocks (1x1 expand,
    3x3 depthwise, ReLU6, linear 1x1 projection, residual Add where shapes allow), a 1x1 top
    conv, global average pooling and one Dense.

    Args:
        input_shape: the image shape. Defaults to (28, 28, 1).
        num_classes: the number of classes. Defaults to 10.
        width: channels of the first block (later blocks use 2x and 4x). Defaults to 16.
        softmax: end in a softmax instead of logits. Defaults to False.

    Returns:
        An uncompiled ``keras.Model`` (114,986 parameters at the defaults).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1. Received: width={width}")
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn_relu(inputs, width, "stem", relu6=True)
    for i, (expand, mult, stride) in enumerate(_MOBILENET_BLOCKS):
        name, out, y = f"block{i}", mult * width, x
        if expand != 1:
            y = _conv_bn_relu(y, expand * x.shape[-1], f"{name}_expand", kernel=1, relu6=True)
        y = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
        y = layers.BatchNormalization(name=f"{name}_dw_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
        y = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project_conv")(y)
        y = layers.BatchNormalization(name=f"{name}_project_bn")(y)
        x = layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y
    x = _conv_bn_relu(x, 8 * width, "top", kernel=1, relu6=True)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax" if softmax else None, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_mobilenet")


FASHION_MODELS = {"fashion_cnn": fashion_cnn, "fashion_mobilenet": fashion_mobilenet}
