"""The conformance zoo: 19 small Keras 3 models (inputs <= 32x32, built in code, no downloads).

Each `ZooModel` builds a fresh, built, uncompiled model and a tiny deterministic classification
dataset for it (numpy, integer labels). The models are kept tiny (a few channels) so that building
one and fitting one step costs well under a second, yet each holds the structure it stands for:
TF-op arithmetic (``x + y``, ``x * gamma``, hard-swish), nested layers, several inputs/outputs,
recurrent layers, integer inputs, mixed precision.

Example:
    >>> entry = ZOO["resnet_v2_block"]
    >>> model, (x, y) = entry.build(), entry.data()
    >>> model.compile("adam", entry.loss())
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

N_SAMPLES = 16
N_CLASSES = 10


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry.

    Attributes:
        name: the id used in test ids (``"prune-mobilenet_v2"``).
        build: returns a new built, uncompiled model (weights seeded, so repeatable).
        data: returns ``(x, y)``: numpy inputs (a list for several inputs) and integer labels
            (a list for several outputs).
        from_logits: whether the model's outputs are logits (False: probabilities, softmax head).
        single_io: one input and one output (what `tfopt.export` formats accept).
        float16: computes in float16 (mixed precision): parity tolerances are float16's.
        slow: a keras.applications model (150 layers): its cells carry ``pytest.mark.slow``.
        in_suite: its cells run in tests/test_conformance.py; a tuple: only these techniques'
            cells. False: only in benchmarks/conformance_matrix.py (an example whose structures
            the suite covers with smaller models; the suite must stay within 20 minutes on 2
            cores).
        ptq_int8: post-training int8 runs on the plain model. False for recurrent layers: the
            TFLite converter of TF 2.21 crashes the process (SIGSEGV) calibrating a GRU/LSTM
            at a fixed batch; their QAT int8 export works.
        export_options: format -> extra `tfopt.export.export` options the model needs
            (``fixed_batch=1`` for recurrent layers: TFLite converts them with builtin ops only
            at a fixed shape, as the export error says).
    """

    name: str
    build: Callable[[], keras.Model]
    data: Callable[[], tuple]
    from_logits: bool = True
    single_io: bool = True
    float16: bool = False
    slow: bool = False
    in_suite: bool | tuple[str, ...] = True
    ptq_int8: bool = True
    export_options: dict = field(default_factory=dict)

    def loss(self):
        """A sparse categorical cross-entropy matching the head (one per output)."""
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)
        return loss if self.single_io else [loss, loss]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _images(shape, *, low=None, high=None, n_classes=N_CLASSES, seed=0):
    """``N_SAMPLES`` random images (normal, or uniform in [low, high)) and integer labels."""
    rng = _rng(seed)
    size = (N_SAMPLES, *shape)
    if low is None:
        x = rng.normal(size=size)
    else:
        x = rng.uniform(low, high, size=size)
    y = rng.integers(0, n_classes, size=N_SAMPLES)
    return x.astype("float32"), y.astype("int32")


def _seeded(build: Callable[[], keras.Model]) -> Callable[[], keras.Model]:
    def run() -> keras.Model:
        keras.utils.set_random_seed(0)
        return build()

    run.__name__ = build.__name__
    run.__doc__ = build.__doc__
    return run


# --- keras.applications ---------------------------------------------------------------------


def mobilenet_v2() -> keras.Model:
    """keras.applications MobileNetV2, alpha 0.35, 32x32, softmax head."""
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=N_CLASSES
    )


def efficientnet_b0() -> keras.Model:
    """keras.applications EfficientNetB0, 32x32 (with its Rescaling and Normalization)."""
    return keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=N_CLASSES
    )


def mobilenet_v3_small() -> keras.Model:
    """keras.applications MobileNetV3Small, alpha 0.35, 32x32 (with its Rescaling), softmax head.

    Its hard-sigmoid is plain arithmetic on tensors (``ReLU(6)(x + 3) * (1 / 6)``).
    """
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.35,
        weights=None,
        classes=N_CLASSES,
        include_preprocessing=True,
    )


# --- hand-built blocks ----------------------------------------------------------------------


def efficientnet_like() -> keras.Model:
    """EfficientNetB0-like: Rescaling + Normalization, MBConv (swish, SE with Multiply), Add."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051])(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish", name="stem_swish")(x)
    shortcut = x
    # MBConv: expand -> depthwise -> squeeze-and-excite -> project, residual
    h = layers.Conv2D(16, 1, use_bias=False, name="expand_conv")(x)
    h = layers.BatchNormalization(name="expand_bn")(h)
    h = layers.Activation("swish", name="expand_swish")(h)
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(h)
    h = layers.BatchNormalization(name="dw_bn")(h)
    h = layers.Activation("swish", name="dw_swish")(h)
    se = layers.GlobalAveragePooling2D(keepdims=True, name="se_squeeze")(h)
    se = layers.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    se = layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(se)
    h = layers.Multiply(name="se_excite")([h, se])
    h = layers.Conv2D(8, 1, use_bias=False, name="project_conv")(h)
    h = layers.BatchNormalization(name="project_bn")(h)
    x = layers.Add(name="mbconv_add")([h, shortcut])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="efficientnet_like")


def resnet_v2_block() -> keras.Model:
    """A pre-activation ResNet-v2 block (BN-ReLU-Conv twice) with an ``Add`` shortcut."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    h = layers.BatchNormalization(name="bn1")(x)
    h = layers.ReLU(name="relu1")(h)
    h = layers.Conv2D(8, 3, padding="same", name="conv1")(h)
    h = layers.BatchNormalization(name="bn2")(h)
    h = layers.ReLU(name="relu2")(h)
    h = layers.Conv2D(8, 3, padding="same", name="conv2")(h)
    x = layers.Add(name="add")([x, h])
    x = layers.BatchNormalization(name="post_bn")(x)
    x = layers.ReLU(name="post_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet_v2_block")


def densenet_block() -> keras.Model:
    """A DenseNet block (BN-ReLU-Conv, Concatenate) and a transition (1x1 conv, AveragePooling)."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    for i in range(2):
        h = layers.BatchNormalization(name=f"block{i}_bn")(x)
        h = layers.ReLU(name=f"block{i}_relu")(h)
        h = layers.Conv2D(4, 3, padding="same", use_bias=False, name=f"block{i}_conv")(h)
        x = layers.Concatenate(name=f"block{i}_concat")([x, h])
    x = layers.BatchNormalization(name="transition_bn")(x)
    x = layers.ReLU(name="transition_relu")(x)
    x = layers.Conv2D(8, 1, use_bias=False, name="transition_conv")(x)
    x = layers.AveragePooling2D(2, name="transition_pool")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="densenet_block")


def convnext_block() -> keras.Model:
    """A ConvNeXt block: depthwise 7x7, LayerNorm, Dense 4x, exact GELU, Dense, ``x * gamma``
    layer scale and ``x + y`` residual written as plain arithmetic on tensors."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 2, strides=2, name="patchify")(inputs)
    x = layers.LayerNormalization(epsilon=1e-6, name="stem_ln")(x)
    y = layers.DepthwiseConv2D(7, padding="same", name="dw_conv")(x)
    y = layers.LayerNormalization(epsilon=1e-6, name="ln")(y)
    y = layers.Dense(32, name="pw_expand")(y)
    y = layers.Activation("gelu", name="gelu")(y)  # keras's "gelu" is the exact (erf) GELU
    y = layers.Dense(8, name="pw_project")(y)
    gamma = np.full((8,), 0.5, dtype="float32")
    y = y * gamma  # layer scale as a TF-op
    x = x + y  # residual as a TF-op
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="head_ln")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="convnext_block")


def vit_block() -> keras.Model:
    """A ViT encoder block: patch conv, LayerNorm, MultiHeadAttention, ``h + i`` residual,
    LayerNorm + exact-GELU MLP, ``+`` residual."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(16, 4, strides=4, name="patch_embed")(inputs)
    i = layers.Reshape((16, 16), name="tokens")(x)
    h = layers.LayerNormalization(epsilon=1e-6, name="ln1")(i)
    h = layers.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(h, h)
    h = h + i  # residual as a TF-op
    m = layers.LayerNormalization(epsilon=1e-6, name="ln2")(h)
    m = layers.Dense(32, activation="gelu", name="mlp_fc1")(m)  # keras "gelu" is exact
    m = layers.Dense(16, name="mlp_fc2")(m)
    h = h + m
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    outputs = layers.Dense(N_CLASSES, name="logits")(h)
    return keras.Model(inputs, outputs, name="vit_block")


TEXT_LEN, VOCAB = 20, 50


def text_cnn() -> keras.Model:
    """A TextCNN: integer token ids -> Embedding -> Conv1D -> GlobalMaxPooling1D -> Dense."""
    inputs = keras.Input((TEXT_LEN,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, 8, name="embedding")(inputs)
    x = layers.Conv1D(8, 3, activation="relu", name="conv")(x)
    x = layers.GlobalMaxPooling1D(name="max_pool")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="text_cnn")


def _text_data():
    rng = _rng(0)
    x = rng.integers(0, VOCAB, size=(N_SAMPLES, TEXT_LEN)).astype("int32")
    y = rng.integers(0, N_CLASSES, size=N_SAMPLES).astype("int32")
    return x, y


SEQ_LEN, SEQ_FEATURES = 10, 4


def bilstm() -> keras.Model:
    """A sequence classifier: Bidirectional(LSTM) -> Dense."""
    inputs = keras.Input((SEQ_LEN, SEQ_FEATURES), name="sequence")
    x = layers.Bidirectional(layers.LSTM(8), name="bilstm")(inputs)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="bilstm")


def gru() -> keras.Model:
    """A sequence classifier: GRU -> Dense."""
    inputs = keras.Input((SEQ_LEN, SEQ_FEATURES), name="sequence")
    x = layers.GRU(8, name="gru")(inputs)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="gru")


def two_in_two_out() -> keras.Model:
    """A functional model with an image and a vector input and two classification heads."""
    image = keras.Input((8, 8, 1), name="image")
    vector = keras.Input((6,), name="vector")
    a = layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    a = layers.GlobalAveragePooling2D(name="avg_pool")(a)
    b = layers.Dense(4, activation="relu", name="vector_dense")(vector)
    h = layers.Concatenate(name="concat")([a, b])
    h = layers.Dense(8, activation="relu", name="shared")(h)
    out_a = layers.Dense(N_CLASSES, name="head_a")(h)
    out_b = layers.Dense(3, name="head_b")(h)
    return keras.Model([image, vector], [out_a, out_b], name="two_in_two_out")


def _two_in_two_out_data():
    rng = _rng(0)
    image = rng.normal(size=(N_SAMPLES, 8, 8, 1)).astype("float32")
    vector = rng.normal(size=(N_SAMPLES, 6)).astype("float32")
    y_a = rng.integers(0, N_CLASSES, size=N_SAMPLES).astype("int32")
    y_b = rng.integers(0, 3, size=N_SAMPLES).astype("int32")
    return [image, vector], [y_a, y_b]


# registered under its own package: test_quantize registers another SubclassedNet in "tfopt_tests"
@keras.saving.register_keras_serializable(package="tfopt_zoo")
class ConvBlock(layers.Layer):
    """A custom layer holding sublayers: Conv2D -> BatchNormalization -> ReLU."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = layers.Conv2D(filters, 3, padding="same", name="conv")
        self.bn = layers.BatchNormalization(name="bn")
        self.relu = layers.ReLU(name="relu")

    def build(self, input_shape):
        self.conv.build(input_shape)
        shape = self.conv.compute_output_shape(input_shape)
        self.bn.build(shape)
        self.relu.build(shape)

    def call(self, x, training=None):
        return self.relu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


# registered under its own package: test_quantize registers another SubclassedNet in "tfopt_tests"
@keras.saving.register_keras_serializable(package="tfopt_zoo")
class SubclassedNet(keras.Model):
    """A subclassed model: a nested custom `ConvBlock`, pooling, a Dense head."""

    def __init__(self, filters: int = 8, classes: int = N_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.classes = classes
        self.block = ConvBlock(filters, name="block")
        self.pool = layers.GlobalAveragePooling2D(name="avg_pool")
        self.head = layers.Dense(classes, name="logits")

    def call(self, x, training=None):
        return self.head(self.pool(self.block(x, training=training)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "classes": self.classes}


def subclassed() -> keras.Model:
    """A registered subclassed model holding a registered custom layer, called on 16x16x3 data
    (``Model.build`` on a subclassed model leaves it without weights in Keras 3.15)."""
    model = SubclassedNet(name="subclassed")
    model(np.zeros((1, 16, 16, 3), "float32"))
    return model


def unet() -> keras.Model:
    """A small UNet: Conv/MaxPool down, Conv2DTranspose up, Concatenate skip, per-pixel logits."""
    inputs = keras.Input((16, 16, 1), name="image")
    d1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="down1")(inputs)
    p1 = layers.MaxPooling2D(2, name="pool1")(d1)
    b = layers.Conv2D(8, 3, padding="same", activation="relu", name="bottleneck")(p1)
    u1 = layers.Conv2DTranspose(4, 2, strides=2, padding="same", name="up1")(b)
    u1 = layers.Concatenate(name="skip1")([u1, d1])
    u1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="up1_conv")(u1)
    outputs = layers.Conv2D(3, 1, name="pixel_logits")(u1)
    return keras.Model(inputs, outputs, name="unet")


def _unet_data():
    rng = _rng(0)
    x = rng.normal(size=(N_SAMPLES, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 3, size=(N_SAMPLES, 16, 16)).astype("int32")
    return x, y


def time_distributed() -> keras.Model:
    """A clip classifier: TimeDistributed(Conv2D), TimeDistributed(pooling), GRU-free head."""
    inputs = keras.Input((4, 8, 8, 1), name="clip")
    x = layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu"), name="td_conv")(inputs)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D(), name="td_pool")(x)
    x = layers.TimeDistributed(layers.Dense(4, activation="relu"), name="td_dense")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="time_distributed")


def conv3d() -> keras.Model:
    """A volume classifier: Conv3D -> BatchNormalization -> ReLU -> GlobalAveragePooling3D."""
    inputs = keras.Input((8, 8, 8, 1), name="volume")
    x = layers.Conv3D(4, 3, padding="same", name="conv3d")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv3D(4, 3, name="conv3d_2")(x)
    x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="conv3d")


def softmax_head() -> keras.Model:
    """A small CNN ending in ``Dense(activation="softmax")`` (probabilities, not logits)."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(8, 3, activation="relu", name="conv2")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="softmax_head")


def mixed_float16() -> keras.Model:
    """A CNN computing in float16 through per-layer ``dtype="mixed_float16"`` policies (the global
    policy is untouched); the logits layer is float32, as Keras's mixed-precision guide says."""
    policy = "mixed_float16"
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", dtype=policy, name="conv1")(inputs)
    x = layers.BatchNormalization(dtype=policy, name="bn1")(x)
    x = layers.ReLU(dtype=policy, name="relu1")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", dtype=policy, name="conv2")(x)
    x = layers.ReLU(dtype=policy, name="relu2")(x)
    x = layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
    x = layers.Dense(16, activation="relu", dtype=policy, name="fc")(x)
    outputs = layers.Dense(N_CLASSES, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="mixed_float16")


class _UsersDense(layers.Layer):
    """A user's own Dense-like layer (not a keras.layers.Dense): ``x @ kernel + bias``, read
    from the attributes ``kernel`` and ``bias``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfopt_zoo")
class RegisteredDense(_UsersDense):
    """`_UsersDense` described to tfopt with one `tfopt.register_layer` call (see
    `register_users_layer`)."""


@keras.saving.register_keras_serializable(package="tfopt_zoo")
class UnregisteredDense(_UsersDense):
    """`_UsersDense` that tfopt is not told about: every technique skips it with a reason."""


def register_users_layer() -> None:
    """The one call that makes `RegisteredDense` work with prune, cluster, qat, prune_channels
    and the MAC counter."""
    import tfopt

    tfopt.register_layer(
        RegisteredDense,
        weights={"kernel": {"in": 0, "out": 1}, "bias": {"out": 0}},
        width="units",
    )


def _users_layer_model(cls) -> keras.Model:
    inputs = keras.Input((16,), name="features")
    x = layers.Dense(16, activation="relu", name="fc1")(inputs)
    x = cls(16, name="users_dense")(x)
    x = layers.ReLU(name="relu")(x)
    outputs = layers.Dense(N_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name=cls.__name__.lower())


def users_layer() -> keras.Model:
    """A model holding a user's own layer class registered with `tfopt.register_layer`."""
    register_users_layer()
    return _users_layer_model(RegisteredDense)


def users_layer_unregistered() -> keras.Model:
    """The same model with the user's layer not registered."""
    return _users_layer_model(UnregisteredDense)


def _entry(build, data, **kwargs) -> ZooModel:
    return ZooModel(build.__name__, _seeded(build), data, **kwargs)


# recurrent layers lower to TensorList ops at a dynamic batch: TFLite needs a fixed one
_FIXED_BATCH = {"tflite": {"fixed_batch": 1}, "tflite-int8": {"fixed_batch": 1}}

_SPEC_TECHNIQUES = ("baseline", "prune", "cluster", "qat", "cqat", "prune_channels")

ZOO: dict[str, ZooModel] = {
    e.name: e
    for e in [
        # inverted residuals + ReLU6 are in the suite through tests/test_qat_families.py
        _entry(
            mobilenet_v2,
            lambda: _images((32, 32, 3)),
            from_logits=False,
            slow=True,
            in_suite=False,
        ),
        # keras.applications' graph through the two rewrites that read its structure (hard-swish,
        # SE multiplies, Rescaling); the smaller models cover the other techniques' layers
        _entry(
            mobilenet_v3_small,
            lambda: _images((32, 32, 3), low=0.0, high=255.0),
            from_logits=False,
            slow=True,
            in_suite=("qat", "prune_channels"),
        ),
        # its family (swish MBConv + SE, Rescaling + Normalization) is in the suite through
        # efficientnet_like and tests/test_qat_families.py
        _entry(
            efficientnet_b0,
            lambda: _images((32, 32, 3), low=0.0, high=255.0),
            from_logits=False,
            slow=True,
            in_suite=False,
        ),
        _entry(efficientnet_like, lambda: _images((32, 32, 3), low=0.0, high=255.0)),
        _entry(resnet_v2_block, lambda: _images((16, 16, 3))),
        _entry(densenet_block, lambda: _images((16, 16, 3))),
        _entry(convnext_block, lambda: _images((16, 16, 3))),
        _entry(vit_block, lambda: _images((16, 16, 3))),
        _entry(text_cnn, _text_data),
        _entry(
            bilstm,
            lambda: _images((SEQ_LEN, SEQ_FEATURES)),
            ptq_int8=False,
            export_options=_FIXED_BATCH,
        ),
        _entry(
            gru,
            lambda: _images((SEQ_LEN, SEQ_FEATURES)),
            ptq_int8=False,
            export_options=_FIXED_BATCH,
        ),
        _entry(two_in_two_out, _two_in_two_out_data, single_io=False),
        _entry(subclassed, lambda: _images((16, 16, 3))),
        _entry(unet, _unet_data),
        _entry(time_distributed, lambda: _images((4, 8, 8, 1))),
        _entry(conv3d, lambda: _images((8, 8, 8, 1))),
        _entry(softmax_head, lambda: _images((16, 16, 3)), from_logits=False),
        _entry(mixed_float16, lambda: _images((16, 16, 3)), float16=True),
        # lowrank reads its own table of Dense/Conv layers, not the layer specs
        _entry(users_layer, lambda: _images((16,)), in_suite=_SPEC_TECHNIQUES),
        _entry(users_layer_unregistered, lambda: _images((16,)), in_suite=_SPEC_TECHNIQUES),
    ]
}


# --- the conformance pipeline ----------------------------------------------------------------
# wrap -> fit one step -> .keras save/load -> strip -> export -> parity. Shared by
# tests/test_conformance.py (which asserts each cell) and benchmarks/conformance_matrix.py (which
# prints today's outcome of every cell).


@dataclass(frozen=True)
class Technique:
    """How one technique runs in the pipeline.

    Attributes:
        name: the id used in test ids.
        wrap: ``model -> (new_model, {layer name: reason skipped})``.
        strip: ``model -> plain model`` after save/load, or None (the loaded model is exported).
        exports: the `tfopt.export` formats checked.
        models: the zoo models of its cells in tests/test_conformance.py (None: every model in
            the suite); benchmarks/conformance_matrix.py runs every model.
    """

    name: str
    wrap: Callable
    strip: Callable | None
    exports: tuple[str, ...]
    models: tuple[str, ...] | None = None


def _baseline(model):
    return model, {}


def _prune(model):
    import tfopt

    # frequency=1: the masks reach the target at the first (and only) training step
    schedule = tfopt.prune.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = tfopt.prune.prune(model, schedule)
    return pruned, dict(pruned.tfopt_report.skipped)


def _cluster(model):
    import tfopt

    clustered = tfopt.cluster.cluster(model, 8)
    return clustered, dict(clustered.tfopt_report.skipped)


def _qat(model):
    import tfopt

    q = tfopt.quantize.qat(model)
    return q, dict(q.tfopt_report.skipped)


def _cqat(model):
    import tfopt

    # cluster-preserving QAT: a clustered, stripped model; qat's default (preserve_clusters=
    # "auto") trains each clustered kernel's 4 centroids
    small = tfopt.cluster.strip(tfopt.cluster.cluster(model, 4))
    q = tfopt.quantize.qat(small)
    return q, dict(q.tfopt_report.skipped)


def _prune_channels(model):
    import tfopt

    small, plan = tfopt.prune.prune_channels(model, 0.25)
    return small, dict(plan.report.skipped)


def _lowrank(model):
    import tfopt

    # rank_ratio 0.25: a rank that saves weights in the zoo's small kernels too
    small = tfopt.lowrank.factorize(model, rank_ratio=0.25)
    return small, dict(small.tfopt_report.skipped)


def _strip_prune(model):
    import tfopt

    return tfopt.prune.strip(model)


def _strip_cluster(model):
    import tfopt

    return tfopt.cluster.strip(model)


TECHNIQUES: dict[str, Technique] = {
    t.name: t
    for t in [
        # The plain model goes through every format once. The other cells export what their
        # technique produces once (each format stays covered per technique family): a stripped
        # pruned or clustered model has the plain model's layers with other weights, a
        # channel-pruned one the same layers with fewer channels.
        Technique("baseline", _baseline, None, ("tflite", "onnx", "tflite-int8")),
        Technique("prune", _prune, _strip_prune, ("tflite",)),
        Technique("cluster", _cluster, _strip_cluster, ("onnx",)),
        Technique("qat", _qat, None, ("tflite-int8",)),
        # cluster -> strip -> QAT on the layer kinds whose kernels it gathers: convolutions with
        # folded BatchNorms and a residual, Embedding + Conv1D, a subclassed model, a registered
        # layer (tests/test_quantize_clusters.py: Conv2D, DepthwiseConv2D, Dense in the int8 file)
        Technique(
            "cqat",
            _cqat,
            None,
            ("tflite-int8",),
            models=("resnet_v2_block", "text_cnn", "subclassed", "users_layer"),
        ),
        Technique("prune_channels", _prune_channels, None, ("tflite",)),
        Technique("lowrank", _lowrank, None, ("tflite",)),
    ]
}

# Parity limits, as a fraction of the largest |Keras output| (floored at 1, like tfopt.export).
# float32: the same arithmetic in another order (XNNPack, ORT kernels); rounding errors of
# ~1e-7 per op summed over a few hundred terms stay far below 1e-4.
FLOAT32_RTOL = 1e-4
# float16 compute: one float16 rounding is ~5e-4 relative; a few layers deep, 2e-2 (the bound
# tfopt.export uses for tflite-float16).
FLOAT16_RTOL = 2e-2
# int8 (PTQ or QAT): the output is rounded to 1/255 of its range and every layer before it adds
# about half a step of its own range; a few dozen layers stay within a few percent. 0.1 catches a
# wrong scale, a dropped layer or a float path that diverges, on any CPU. (The argmax of an
# untrained net on random inputs is a near tie, so argmax agreement is not checked for int8;
# where the top-1 margin exceeds twice this bound the argmax agrees anyway.)
INT8_RTOL = 0.1


def outputs_of(model, x) -> np.ndarray:
    """The model's outputs on ``x`` as one float32 array (several outputs concatenated)."""
    out = model(x, training=False)  # eager: no predict function to trace for 16 samples
    if isinstance(out, (list, tuple)):
        out = [keras.ops.convert_to_numpy(o).astype("float32") for o in out]
        return np.concatenate([o.reshape(len(o), -1) for o in out], -1)
    return keras.ops.convert_to_numpy(out).astype("float32")


def max_rel_diff(expected: np.ndarray, got: np.ndarray) -> float:
    """max |expected - got| over the largest |expected| (floored at 1)."""
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(expected - got).max()) / scale


@dataclass
class Outcome:
    """What `run_pipeline` did: the stage reached, the skipped layers, the export checks."""

    stage: str = "build"
    skipped: dict = None
    checks: dict = None
    diffs: dict = None
    seconds: dict = None
    final: object = None

    def enter(self, stage: str) -> None:
        """Starts ``stage`` (and times the stage before it)."""
        now = time.perf_counter()
        if self.seconds is None:
            self.seconds, self._start = {}, now
        self.seconds[self.stage] = round(now - self._start, 2)
        self.stage, self._start = stage, now


def run_pipeline(technique: Technique, entry: ZooModel, workdir, outcome: Outcome) -> Outcome:
    """Runs one conformance cell; ``outcome.stage`` says where an exception came from.

    Asserts along the way: the user's model is unchanged by wrap + fit, the loaded model and the
    stripped model compute what the trained model computes, every export passes its check.
    """
    import tfopt

    outcome.checks, outcome.diffs = {}, {}
    outcome.enter("build")
    rtol = FLOAT16_RTOL if entry.float16 else FLOAT32_RTOL
    model = entry.build()
    x, y = entry.data()
    before = [w.copy() for w in model.get_weights()]

    outcome.enter("wrap")
    wrapped, outcome.skipped = technique.wrap(model)

    outcome.enter("fit")
    # run_eagerly: one step does not pay for tracing a train function
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-3), loss=entry.loss(), run_eagerly=True)
    wrapped.fit(x, y, batch_size=N_SAMPLES, epochs=1, verbose=0)
    if technique.name != "baseline":
        after = model.get_weights()
        changed = sum(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
        assert changed == 0, f"fitting the {technique.name} copy changed {changed} user weights"
    trained = outputs_of(wrapped, x)

    outcome.enter("save_load")
    path = f"{workdir}/{technique.name}-{entry.name}.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    outcome.diffs["save_load"] = max_rel_diff(trained, outputs_of(loaded, x))
    assert outcome.diffs["save_load"] <= rtol, f"loaded model differs: {outcome.diffs}"

    final = loaded
    if technique.strip is not None:
        outcome.enter("strip")
        final = technique.strip(loaded)
        outcome.diffs["strip"] = max_rel_diff(trained, outputs_of(final, x))
        assert outcome.diffs["strip"] <= rtol, f"stripped model differs: {outcome.diffs}"
    outcome.final = final
    scale = float(np.abs(trained).max())

    exports = technique.exports
    if entry.slow:  # keras.applications graphs convert slowly: the plain model to TFLite, and the
        # QAT copy to int8; the other techniques stop at Keras parity after strip
        exports = {"baseline": ("tflite",), "qat": exports}.get(technique.name, ())
    for fmt in exports:
        if fmt == "tflite-int8" and technique.name == "baseline" and not entry.ptq_int8:
            continue
        outcome.enter(f"export:{fmt}")
        options = {"check_data": x}
        if fmt == "tflite-int8":
            # argmax of an untrained net on random inputs is nearly a tie: checked below instead
            options["min_agreement"] = 0.0
            if technique.name != "qat":
                options["representative_data"] = x
        elif entry.float16:
            options["atol"] = FLOAT16_RTOL
        options.update(entry.export_options.get(fmt, {}))
        path = f"{workdir}/{technique.name}-{entry.name}-{fmt}"
        check = tfopt.export.export(final, path, format=fmt, **options).check
        outcome.checks[fmt] = check
        limit = (INT8_RTOL if fmt == "tflite-int8" else rtol) * max(1.0, scale)
        assert check["max_abs_diff"] <= limit, f"{fmt}: {check} exceeds {limit:.3g}"
    outcome.enter("done")
    return outcome
