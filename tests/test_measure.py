"""tfopt._measure: the one params/MACs counter, checked against hand-computed numbers."""

import numpy as np
import pytest


def _one(layer, *shape, dtype="float32"):
    """A Sequential model of ``layer`` on inputs of ``shape``."""
    import keras

    return keras.Sequential([keras.Input(shape, dtype=dtype), layer])


def _counts(model):
    from tfopt._measure import count

    c = count(model)
    return c["params"], c["macs"]


# (layer factory, input shape, params, MACs): every number worked out by hand in the comment
_CASES = {
    # 3*4*5 MACs, 4*5+5 params
    "dense_on_sequence": (lambda L: L.Dense(5), (3, 4), 25, 60),
    # out (3, 6): 18 outputs x contracted c=4
    "einsum_dense": (
        lambda L: L.EinsumDense("abc,cd->abd", output_shape=(None, 6)),
        (3, 4),
        24,
        72,
    ),
    # out 4 positions x k 2 x cin 2 x 3 filters; 2*2*3+3 params
    "conv1d": (lambda L: L.Conv1D(3, 2), (5, 2), 15, 48),
    # out 4x4 x k 9 x (cin 4 / groups 2) x 4 filters; 3*3*2*4+4 params
    "grouped_conv2d": (lambda L: L.Conv2D(4, 3, groups=2), (6, 6, 4), 76, 1152),
    # out 2x2x2 x k 8 x cin 1 x 2 filters; 8*2+2 params
    "conv3d": (lambda L: L.Conv3D(2, 2), (3, 3, 3, 1), 18, 128),
    # 5x5 input positions x k 9 x cin 2 x 4 filters; 3*3*4*2+4 params
    "conv2d_transpose": (lambda L: L.Conv2DTranspose(4, 3), (5, 5, 2), 76, 1800),
    # 4 input positions x k 3 x cin 3 x 2 filters; 3*2*3+2 params
    "conv1d_transpose": (lambda L: L.Conv1DTranspose(2, 3), (4, 3), 20, 72),
    # 8 input positions x k 8 x cin 1 x 2 filters; 8*2*1+2 params
    "conv3d_transpose": (lambda L: L.Conv3DTranspose(2, 2), (2, 2, 2, 1), 18, 128),
    # out 3x3 x k 9 x cin 3 x multiplier 2; 3*3*3*2+6 params
    "depthwise2d": (lambda L: L.DepthwiseConv2D(3, depth_multiplier=2), (5, 5, 3), 60, 486),
    # out 4 x k 3 x cin 2; 3*2+2 params
    "depthwise1d": (lambda L: L.DepthwiseConv1D(3), (6, 2), 8, 24),
    # depthwise 9*9*3 + pointwise 9*3*4; 27 + 12 + 4 params
    "separable2d": (lambda L: L.SeparableConv2D(4, 3), (5, 5, 3), 43, 351),
    # depthwise 4*3*2 + pointwise 4*2*4; 6 + 8 + 4 params
    "separable1d": (lambda L: L.SeparableConv1D(4, 3), (6, 2), 18, 56),
    # a lookup: 0 MACs, 10*4 params
    "embedding": (lambda L: L.Embedding(10, 4), (7,), 40, 0),
    # 5 steps x 4 gates x 3 units x (2 inputs + 3 recurrent); 4*3*(2+3)+4*3 params
    "lstm": (lambda L: L.LSTM(3), (5, 2), 72, 300),
    # 5 steps x 3 gates x 3 x (2 + 3); reset_after: 3*3*(2+3) + 2*9 bias params
    "gru": (lambda L: L.GRU(3), (5, 2), 63, 225),
    # 5 steps x 3 x (2 + 3); 3*(2+3)+3 params
    "simple_rnn": (lambda L: L.SimpleRNN(3), (5, 2), 18, 75),
    # forward + backward LSTM
    "bidirectional": (lambda L: L.Bidirectional(L.LSTM(3)), (5, 2), 144, 600),
    # folded into the layer before it at export: 0 MACs; gamma, beta, mean, variance
    "batchnorm": (lambda L: L.BatchNormalization(), (4, 4, 3), 12, 0),
    # 4 steps x Dense(3) on 5 features; 5*3+3 params
    "time_distributed_dense": (lambda L: L.TimeDistributed(L.Dense(3)), (4, 5), 18, 60),
    # 2 steps x (3x3 out x k 9 x cin 1 x 2 filters); 9*2+2 params
    "time_distributed_conv": (lambda L: L.TimeDistributed(L.Conv2D(2, 3)), (2, 5, 5, 1), 20, 324),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_layer_counts_match_hand_computed_values(name):
    import keras

    make, shape, params, macs = _CASES[name]
    dtype = "int32" if name == "embedding" else "float32"
    model = _one(make(keras.layers), *shape, dtype=dtype)
    assert _counts(model) == (params, macs)
    assert params == model.count_params()  # plain layers: params are Keras's count


def test_multi_head_attention_counts_projections_and_both_products():
    import keras

    q = keras.Input((6, 8))
    v = keras.Input((3, 8))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    self_attention = keras.Model(q, mha(q, q))
    # q/k/v projections 6*8*(2*4) each, output 6*(2*4)*8, QK^T 2*6*6*4, softmax.V 2*6*6*4
    assert _counts(self_attention) == (288, 4 * 384 + 2 * 288)
    cross = keras.Model([q, v], keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(q, v))
    # key and value are 3 long: k/v projections 3*8*8, QK^T and softmax.V 2*6*3*4
    # q/k/v kernels 8*2*4 + biases 2*4, output kernel 2*4*8 + bias 8
    assert _counts(cross) == (288, 384 + 192 + 192 + 384 + 2 * 144)


def test_nested_models_matmul_and_subclassed_models():
    import keras

    L = keras.layers
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="inner")  # 12 MACs, 15 params
    x = keras.Input((4,))
    h = inner(x)
    y = keras.ops.matmul(keras.ops.expand_dims(h, 1), keras.ops.ones((3, 2)))  # 2 outputs x 3
    outer = keras.Model(x, L.Dense(2)(h) + keras.ops.sum(y, axis=1))  # 6 MACs, 8 params
    assert _counts(outer) == (23, 12 + 6 + 6)

    @keras.saving.register_keras_serializable(package="test_measure")
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = L.Conv2D(2, 3)
            self.pool = L.GlobalAveragePooling2D()
            self.head = L.Dense(5)

        def call(self, x):
            return self.head(self.pool(self.conv(x)))

    sub = Sub()
    sub(np.zeros((1, 5, 5, 1), "float32"))
    # conv 3x3 out x 9 x 1 x 2, dense 2*5; params 9*2+2 + 2*5+5
    assert _counts(sub) == (35, 162 + 10)


def test_wrappers_count_the_plain_layer():
    """Masks, quantizer ranges, step counters and cluster bookkeeping are not params."""
    import keras

    import tfopt

    L = keras.layers
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, activation="relu")(x)
    h = L.Conv2DTranspose(2, 3)(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(x, L.Dense(3)(h))
    plain = _counts(model)
    assert plain == (model.count_params(), 36 * 9 * 2 * 4 + 36 * 9 * 4 * 2 + 2 * 3)
    pruned = tfopt.prune.prune(model)
    qat = tfopt.quantize.qat(model)
    clustered = tfopt.cluster.cluster(model, n_clusters=4)
    for wrapped in (pruned, qat, clustered):
        assert wrapped.count_params() > plain[0]  # Keras counts the bookkeeping
        assert _counts(wrapped) == plain
    with pytest.warns(tfopt.prune.PruningScheduleWarning):  # not trained: masks all ones
        assert _counts(tfopt.prune.strip(pruned)) == plain

    x = keras.Input((6, 8))
    h = L.LayerNormalization()(L.MultiHeadAttention(2, 4)(x, x) + x)
    attention = keras.Model(x, L.Dense(3)(L.LSTM(3)(h)))
    qat = tfopt.quantize.qat(attention)  # QuantizedMultiHeadAttention, wrapped projections
    # MHA as above, LSTM 6 steps x 4 gates x 3 units x (8 + 3), Dense 3 x 3
    assert qat.count_params() > attention.count_params()
    assert _counts(qat) == _counts(attention) == (attention.count_params(), 2112 + 6 * 132 + 9)


def test_bench_keras_counts_is_the_same_counter():
    import keras

    from tfopt._measure import count
    from tfopt.bench import keras_counts

    model = _one(keras.layers.Conv2DTranspose(4, 3), 5, 5, 2)
    assert (
        keras_counts(model)
        == count(model)
        == {
            "params": 76,
            "macs": 1800,
            "flops": 3600,
            "source": "keras",
        }
    )


def test_layer_macs_with_channel_overrides_and_unknown_dims():
    import keras

    from tfopt._measure import layer_macs

    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 5, 5, 2))
    assert layer_macs(conv, (None, 5, 5, 2)) == 9 * 9 * 2 * 4
    assert layer_macs(conv, (None, 5, 5, 2), c_in=1, c_out=3) == 9 * 9 * 1 * 3
    assert layer_macs(conv, (None, None, 5, 2)) is None
    dense = keras.layers.Dense(3)
    dense.build((None, None, 4))
    assert layer_macs(dense, (None, None, 4)) is None
