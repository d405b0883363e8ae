"""The MLPerf Tiny reference architectures (mlcommons/tiny, benchmark/training/*), in Keras 3.

Each builder follows the published Keras definition layer for layer (kernel sizes, strides,
padding, biases, BatchNorm, L2 1e-4, pooling), so at the reference input shape its parameter count
is the reference model's. The input shape and class count are options, so they train on the data
tfopt has offline (MNIST-1D, scikit-learn digits). The references end in a softmax; like every
tfopt zoo model these output logits unless ``softmax=True`` (the head has the same weights).

=======================  ===============================================  ==================
name                     reference                                        reference input
=======================  ===============================================  ==================
``tiny_dscnn``           keyword_spotting/keras_model.py ``ds_cnn``       (49, 10, 1), 12
``tiny_resnet8``         image_classification/keras_model.py              (32, 32, 3), 10
                         ``resnet_v1_eembc`` (v1.0: 16 first filters)
``tiny_mobilenet_v1_025`` visual_wake_words/vww_model.py ``mobilenet_v1``  (96, 96, 3), 2
``tiny_fc_autoencoder``  anomaly_detection/keras_model.py ``get_model``   (640,), outputs 640
=======================  ===============================================  ==================

MLPerf Tiny's int8 reference model sizes: DS-CNN 53 KB, ResNet-8 96 KB, MobileNetV1 325 KB,
FC autoencoder 270 KB (``benchmarks/edge_lowbit.py`` compares tfopt's int8 flatbuffers with them).
"""

from __future__ import annotations

import math

from tfopt._backend import import_keras

keras = import_keras()
layers = keras.layers

REFERENCE_KB = {
    "tiny_dscnn": 53,
    "tiny_resnet8": 96,
    "tiny_mobilenet_v1_025": 325,
    "tiny_fc_autoencoder": 270,
}


def _l2(l2: float):
    return keras.regularizers.L2(l2) if l2 else None


def _head(x, num_classes: int, softmax: bool, name: str = "logits", **kw):
    return layers.Dense(num_classes, activation="softmax" if softmax else None, name=name, **kw)(x)


def _as_image(inputs, input_shape):
    """A (T, F) input (MNIST-1D's (40, 1)) becomes a (T, F, 1) image; images pass through."""
    if len(input_shape) == 2:
        return layers.Reshape((*input_shape, 1), name="to_image")(inputs)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) or (time, features). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return inputs


def tiny_dscnn(
    input_shape=(49, 10, 1),
    num_classes=12,
    *,
    filters: int = 64,
    l2: float = 1e-4,
    softmax: bool = False,
) -> keras.Model:
    """MLPerf Tiny keyword spotting DS-CNN: Conv2D(64, 10x4, stride 2) + 4 depthwise-separable
    blocks (3x3 depthwise, 1x1 pointwise, BatchNorm + ReLU each), dropout, average pool, Dense."""
    reg = _l2(l2)
    inputs = keras.Input(input_shape, name="input")
    x = _as_image(inputs, input_shape)
    image_shape = tuple(x.shape[1:3])
    x = layers.Conv2D(
        filters, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg, name="conv1"
    )(x)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.Dropout(0.2, name="dropout1")(x)
    for i in range(1, 5):
        x = layers.DepthwiseConv2D(
            (3, 3), padding="same", depthwise_regularizer=reg, name=f"dw{i}"
        )(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.Activation("relu", name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, (1, 1), padding="same", kernel_regularizer=reg, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.Activation("relu", name=f"pw{i}_relu")(x)
    x = layers.Dropout(0.4, name="dropout2")(x)
    # the reference pools int(input / 2), about the whole map its stride-2 stem leaves
    h, w = image_shape
    pool = (min(max(1, h // 2), x.shape[1]), min(max(1, w // 2), x.shape[2]))
    x = layers.AveragePooling2D(pool_size=pool, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _head(x, num_classes, softmax)
    return keras.Model(inputs, outputs, name="tiny_dscnn")


def tiny_resnet8(
    input_shape=(32, 32, 3),
    num_classes=10,
    *,
    filters: int = 16,
    l2: float = 1e-4,
    softmax: bool = False,
) -> keras.Model:
    """MLPerf Tiny image classification ResNet-8 (EEMBC ResNet v1): a 3x3 stem and three residual
    stacks of ``filters``, 2x and 4x filters (the last two strided, with 1x1 projections), average
    pool, Dense. v1.0 of the benchmark uses 16 first filters (``filters=26`` is the later variant)."""
    reg = _l2(l2)
    conv = dict(padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)
    inputs = keras.Input(input_shape, name="input")
    x = _as_image(inputs, input_shape)
    x = layers.Conv2D(filters, 3, strides=1, **conv, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stack, mult in enumerate((1, 2, 4), start=1):
        strides = 1 if stack == 1 else 2
        n = filters * mult
        y = layers.Conv2D(n, 3, strides=strides, **conv, name=f"s{stack}_a")(x)
        y = layers.BatchNormalization(name=f"s{stack}_a_bn")(y)
        y = layers.Activation("relu", name=f"s{stack}_a_relu")(y)
        y = layers.Conv2D(n, 3, strides=1, **conv, name=f"s{stack}_b")(y)
        y = layers.BatchNormalization(name=f"s{stack}_b_bn")(y)
        if stack > 1:
            x = layers.Conv2D(n, 1, strides=2, **conv, name=f"s{stack}_proj")(x)
        x = layers.Add(name=f"s{stack}_add")([x, y])
        x = layers.Activation("relu", name=f"s{stack}_relu")(x)
    pool = int(min(x.shape[1:3]))
    x = layers.AveragePooling2D(pool_size=pool, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _head(x, num_classes, softmax, kernel_initializer="he_normal")
    return keras.Model(inputs, outputs, name="tiny_resnet8")


# (pointwise filters as a multiple of the stem's, depthwise stride) of MobileNetV1's 13 blocks
_MOBILENET_BLOCKS = (
    (2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2),
    (16, 1), (16, 1), (16, 1), (16, 1), (16, 1), (32, 2), (32, 1),
)  # fmt: skip


def tiny_mobilenet_v1_025(
    input_shape=(96, 96, 3),
    num_classes=2,
    *,
    alpha: float = 0.25,
    l2: float = 1e-4,
    softmax: bool = False,
) -> keras.Model:
    """MLPerf Tiny visual wake words MobileNetV1 (alpha 0.25: an 8-filter stem): Conv2D(3x3,
    stride 2) and 13 depthwise-separable blocks, each conv with a bias, BatchNorm and ReLU,
    average pool over the whole map, Dense."""
    reg = _l2(l2)
    conv = dict(padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)
    stem = max(1, int(round(32 * alpha)))
    inputs = keras.Input(input_shape, name="input")
    x = _as_image(inputs, input_shape)
    x = layers.Conv2D(stem, 3, strides=2, **conv, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, (mult, stride) in enumerate(_MOBILENET_BLOCKS, start=1):
        x = layers.DepthwiseConv2D(
            3,
            strides=stride,
            padding="same",
            depthwise_initializer="he_normal",
            depthwise_regularizer=reg,
            name=f"dw{i}",
        )(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.Activation("relu", name=f"dw{i}_relu")(x)
        x = layers.Conv2D(stem * mult, 1, strides=1, **conv, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.Activation("relu", name=f"pw{i}_relu")(x)
    x = layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _head(x, num_classes, softmax)
    return keras.Model(inputs, outputs, name="tiny_mobilenet_v1_025")


def tiny_fc_autoencoder(
    input_shape=(640,),
    num_classes=None,
    *,
    width: int = 128,
    bottleneck: int = 8,
) -> keras.Model:
    """MLPerf Tiny anomaly detection FC autoencoder: Dense(128) x4, Dense(8), Dense(128) x4 (each
    with BatchNorm + ReLU), Dense(input). It reconstructs its input (``num_classes`` is ignored:
    the output has the input's size); a (T, F) input is flattened first."""
    del num_classes
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    dim = math.prod(input_shape)
    if len(input_shape) != 1:
        x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate((width,) * 4 + (bottleneck,) + (width,) * 4, start=1):
        x = layers.Dense(units, name=f"fc{i}")(x)
        x = layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.Activation("relu", name=f"fc{i}_relu")(x)
    outputs = layers.Dense(dim, name="reconstruction")(x)
    if len(input_shape) != 1:
        outputs = layers.Reshape(tuple(input_shape), name="to_input_shape")(outputs)
    return keras.Model(inputs, outputs, name="tiny_fc_autoencoder")


TINY_MODELS = {
    "tiny_dscnn": tiny_dscnn,
    "tiny_resnet8": tiny_resnet8,
    "tiny_mobilenet_v1_025": tiny_mobilenet_v1_025,
    "tiny_fc_autoencoder": tiny_fc_autoencoder,
}
