"""Small image CNNs of the families real deployments use, for 32x32 RGB inputs (``digits32``,
``shapes32``): MobileNetV2 / V3, EfficientNet, pre-activation ResNet and DenseNet blocks.

Each builder keeps the ops that make its family hard to quantize (ReLU6, hard-swish,
Squeeze-and-Excitation, swish, pre-activation BatchNorm, concatenation, average pooling, input
rescaling) at a width that trains in seconds to minutes on a CPU. All end in a softmax.
"""

from __future__ import annotations

from tfopt._backend import import_keras

keras = import_keras()
layers = keras.layers


def _conv_bn(x, filters, kernel, stride, name, activation=None):
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if activation == "relu6":
        return layers.ReLU(6.0, name=f"{name}_relu6")(x)
    if activation is not None:
        return layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def _dw_bn(x, stride, name, activation, kernel=3):
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if activation == "relu6":
        return layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def _head(x, num_classes, dropout=0.0):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def mobilenet_v2_32(input_shape=(32, 32, 3), num_classes=10, *, width: int = 8) -> keras.Model:
    """MobileNetV2-style: inverted residual blocks (expand 1x1, depthwise 3x3, ReLU6, linear
    projection, residual Add)."""
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn(inputs, 2 * width, 3, 1, "stem", "relu6")
    for i, (expand, out, stride) in enumerate(
        [(1, width, 1), (4, 2 * width, 2), (4, 2 * width, 1), (4, 4 * width, 2), (4, 4 * width, 1)]
    ):
        name = f"block{i}"
        y = x
        if expand != 1:
            y = _conv_bn(y, expand * x.shape[-1], 1, 1, f"{name}_expand", "relu6")
        y = _dw_bn(y, stride, f"{name}_dw", "relu6")
        y = _conv_bn(y, out, 1, 1, f"{name}_project")
        x = layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y
    x = _conv_bn(x, 16 * width, 1, 1, "top", "relu6")
    return keras.Model(inputs, _head(x, num_classes), name="mobilenet_v2_32")


def _hard_sigmoid(x, name):
    # written as Keras's MobileNetV3 writes it: ReLU6(x + 3) / 6, as ops on tensors
    return layers.ReLU(6.0, name=f"{name}_relu6")(x + 3.0) * (1.0 / 6.0)


def _se(x, ratio, name, gate="hard_sigmoid", activation="relu"):
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = layers.Conv2D(
        max(1, int(channels * ratio)), 1, activation=activation, name=f"{name}_reduce"
    )(s)
    if gate == "hard_sigmoid":
        s = layers.Conv2D(channels, 1, name=f"{name}_expand")(s)
        s = _hard_sigmoid(s, f"{name}_gate")
    else:
        s = layers.Conv2D(channels, 1, activation=gate, name=f"{name}_expand")(s)
    return layers.Multiply(name=f"{name}_excite")([x, s])


def mobilenet_v3_32(input_shape=(32, 32, 3), num_classes=10, *, width: int = 8) -> keras.Model:
    """MobileNetV3-style: Rescaling input, hard-swish (``x * ReLU6(x + 3) / 6``), SE blocks with a
    hard-sigmoid gate."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.Rescaling(2.0, offset=-1.0, name="rescaling")(inputs)
    x = _conv_bn(x, 2 * width, 3, 1, "stem")
    x = x * _hard_sigmoid(x, "stem_hswish")
    for i, (expand, out, stride, se) in enumerate(
        [
            (2, width, 2, True),
            (4, 2 * width, 2, False),
            (4, 2 * width, 1, True),
            (4, 4 * width, 2, True),
        ]
    ):
        name = f"block{i}"
        y = _conv_bn(x, expand * x.shape[-1], 1, 1, f"{name}_expand")
        y = layers.Activation("hard_swish", name=f"{name}_expand_hswish")(y)
        y = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
        y = layers.BatchNormalization(momentum=0.9, name=f"{name}_dw_bn")(y)
        y = layers.Activation("hard_swish", name=f"{name}_dw_hswish")(y)
        if se:
            y = _se(y, 0.25, f"{name}_se")
        y = _conv_bn(y, out, 1, 1, f"{name}_project")
        x = layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and x.shape[-1] == out else y
    x = _conv_bn(x, 16 * width, 1, 1, "top")
    x = layers.Activation("hard_swish", name="top_hswish")(x)
    return keras.Model(inputs, _head(x, num_classes), name="mobilenet_v3_32")


def efficientnet_32(input_shape=(32, 32, 3), num_classes=10, *, width: int = 8) -> keras.Model:
    """EfficientNet-style: Rescaling + Normalization input, MBConv blocks (swish, SE with a
    sigmoid gate), dropout before the residual Add."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.Rescaling(1.0 / 1.0, name="rescaling")(inputs)
    x = layers.Normalization(
        mean=[0.5, 0.5, 0.5], variance=[0.08, 0.08, 0.08], name="normalization"
    )(x)
    x = _conv_bn(x, 2 * width, 3, 1, "stem", "swish")
    for i, (expand, out, stride) in enumerate(
        [(1, width, 1), (4, 2 * width, 2), (4, 2 * width, 1), (4, 4 * width, 2), (4, 4 * width, 1)]
    ):
        name = f"block{i}"
        y = x
        if expand != 1:
            y = _conv_bn(y, expand * x.shape[-1], 1, 1, f"{name}_expand", "swish")
        y = _dw_bn(y, stride, f"{name}_dw", "swish")
        y = _se(y, 0.25 / expand, f"{name}_se", gate="sigmoid", activation="swish")
        y = _conv_bn(y, out, 1, 1, f"{name}_project")
        if stride == 1 and x.shape[-1] == out:
            y = layers.Dropout(0.1, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(y)
            x = layers.Add(name=f"{name}_add")([x, y])
        else:
            x = y
    x = _conv_bn(x, 16 * width, 1, 1, "top", "swish")
    return keras.Model(inputs, _head(x, num_classes, dropout=0.2), name="efficientnet_32")


def resnet_v2_32(input_shape=(32, 32, 3), num_classes=10, *, width: int = 8) -> keras.Model:
    """Pre-activation ResNet (v2): BatchNorm-ReLU before each conv, so BatchNorms follow Adds
    and stand alone."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(2 * width, 3, padding="same", name="stem")(inputs)
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    x = layers.MaxPooling2D(3, 1, name="stem_pool")(x)
    for i, (out, stride) in enumerate(
        [(2 * width, 1), (4 * width, 2), (4 * width, 1), (8 * width, 2)]
    ):
        name = f"block{i}"
        pre = layers.BatchNormalization(momentum=0.9, name=f"{name}_preact_bn")(x)
        pre = layers.ReLU(name=f"{name}_preact_relu")(pre)
        if stride == 1 and x.shape[-1] == out:
            shortcut = x
        else:
            shortcut = layers.Conv2D(out, 1, stride, name=f"{name}_shortcut")(pre)
        y = _conv_bn(pre, out, 3, stride, f"{name}_conv1", "relu")
        y = layers.Conv2D(out, 3, padding="same", name=f"{name}_conv2")(y)
        x = layers.Add(name=f"{name}_add")([shortcut, y])
    x = layers.BatchNormalization(momentum=0.9, name="post_bn")(x)
    x = layers.ReLU(name="post_relu")(x)
    return keras.Model(inputs, _head(x, num_classes), name="resnet_v2_32")


def densenet_32(input_shape=(32, 32, 3), num_classes=10, *, growth: int = 8) -> keras.Model:
    """DenseNet-style: BatchNorm-ReLU-Conv layers whose outputs are concatenated, 1x1 transition
    convs and AveragePooling2D."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.ZeroPadding2D(1, name="stem_pad")(inputs)
    x = layers.Conv2D(2 * growth, 3, use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for b, n in enumerate([2, 3, 3]):
        for i in range(n):
            name = f"block{b}_{i}"
            y = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn0")(x)
            y = layers.ReLU(name=f"{name}_relu0")(y)
            y = _conv_bn(y, 4 * growth, 1, 1, f"{name}_conv1", "relu")
            y = layers.Conv2D(growth, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
            x = layers.Concatenate(name=f"{name}_concat")([x, y])
        if b < 2:
            name = f"transition{b}"
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
            x = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"{name}_conv")(x)
            x = layers.AveragePooling2D(2, name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=0.9, name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    return keras.Model(inputs, _head(x, num_classes), name="densenet_32")


CNN_FAMILIES = {
    "mobilenet_v2_32": mobilenet_v2_32,
    "mobilenet_v3_32": mobilenet_v3_32,
    "efficientnet_32": efficientnet_32,
    "resnet_v2_32": resnet_v2_32,
    "densenet_32": densenet_32,
}
