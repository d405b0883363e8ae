"""Reading a .tflite file's ops and tensor dtypes, for tests that check what the converter built."""


def tflite_ops(path):
    """The interpreter of ``path`` (no default delegates, so the file's own kernels are listed)
    and its ops: ``[(op name, [input dtypes], [output dtypes], [input tensor indices])]``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = []
    for op in it._get_ops_details():
        ins = [i for i in op["inputs"] if i >= 0]
        ops.append(
            (
                op["op_name"],
                [tensors[i]["dtype"].__name__ for i in ins],
                [tensors[i]["dtype"].__name__ for i in op["outputs"] if i >= 0],
                ins,
            )
        )
    return it, ops


def assert_int8_agrees(model, path, x, *, min_agreement=0.97, margin=0.05):
    """Asserts what int8 kernels guarantee against the Keras (fake-quant) model, on any CPU.

    TFLite's integer kernels and Keras's float fake-quant round differently (int32 accumulation
    and fixed-point requantization vs float32 with oneDNN or XNNPACK summation orders), by about
    one quantization step per layer. So an argmax may flip only where Keras's top two outputs are
    nearly tied: every disagreement must have a Keras top-2 gap below ``margin`` times the largest
    |output|, and at least ``min_agreement`` of the inputs agree (0.97: a tie is rare, but 3 of 256
    near-ties were seen on one CPU). A quantization bug flips confident predictions and fails.

    Returns:
        The argmax agreement.
    """
    import numpy as np

    from tfopt.bench._runners import TFLiteRunner

    expected = np.asarray(model.predict(x, verbose=0), dtype="float32")
    got = TFLiteRunner(path).predict(x)
    flips = expected.argmax(-1) != got.argmax(-1)
    top2 = np.sort(expected, axis=-1)[:, -2:]
    gaps = (top2[:, 1] - top2[:, 0])[flips]
    limit = margin * float(np.abs(expected).max())
    assert np.all(gaps <= limit), (
        f"{int(flips.sum())} argmax flips, Keras top-2 gaps {np.round(gaps, 4).tolist()} "
        f"(a flip needs a gap <= {limit:.4f})"
    )
    agreement = 1.0 - float(flips.mean())
    assert agreement >= min_agreement, agreement
    return agreement


KERNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def assert_fully_int8(path, *, float_prefix=0):
    """Only the input QUANTIZE (after ``float_prefix`` float preprocessing ops) and the output
    DEQUANTIZE touch float tensors; every conv / FC has int8 input, int8 weights, int8 output."""
    _, ops = tflite_ops(path)
    names = [o[0] for o in ops]
    floats = [i for i, (_, ins, outs, _) in enumerate(ops) if "float32" in ins + outs]
    assert names[float_prefix] == "QUANTIZE" and names[-1] == "DEQUANTIZE", names
    assert floats == [*range(float_prefix + 1), len(ops) - 1], [ops[i][:3] for i in floats]
    assert names.count("DEQUANTIZE") == 1
    kernels = [o for o in ops if o[0] in KERNEL_OPS]
    assert kernels
    for name, ins, outs, _ in kernels:
        data_ins = ins[:2] if name != "TRANSPOSE_CONV" else ins[1:3]
        assert data_ins == ["int8", "int8"] and outs == ["int8"], (name, ins, outs)
    return names
