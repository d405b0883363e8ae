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
