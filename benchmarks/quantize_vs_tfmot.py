"""int8 quantization on MNIST-1D: float vs PTQ int8 vs tfopt QAT vs tfmot QAT, then prune + QAT.

Usage: python benchmarks/quantize_vs_tfmot.py [--epochs-baseline 30] [--qat-epochs 5]

One float baseline (`mnist1d_cnn`, Conv1D; Adam 2e-3, batch 64) is trained; its weights are copied
into `mnist1d_cnn2d` (the same network with Conv2D(5x1) kernels, the form tfmot's QAT accepts: its
Conv1D kernels reshaped, identical outputs). From that baseline:

- float TFLite and PTQ int8 (`tfopt.export.tflite(..., quantization="int8")`, 200 training samples
  as representative data) of the Conv1D model;
- tfopt QAT int8 (`tfopt.quantize.qat`, then `--qat-epochs` epochs, Adam `--qat-lr`) of the Conv1D
  model, and of the Conv2D variant for a like-for-like comparison with tfmot;
- tfmot QAT int8 (`quantize_model` on a tf_keras copy of the Conv2D variant, same epochs and
  learning rate, in a separate process: benchmarks/_tfmot_qat.py);
- prune 80% (tfopt.prune with the defaults of the `prune` recipe step, then strip) followed by
  sparsity-preserving tfopt QAT, int8.

Every accuracy is measured through the TFLite interpreter on the 1000 test samples. Latency is the
single-sample invoke time (1 thread, XNNPACK as shipped), measured for all artifacts in this
process, interleaved: in each of `--latency-rounds` rounds every artifact runs 200 invokes (the
order rotates); the number is the lowest per-round median (the least disturbed by other processes
on a shared machine) and the ratio to PTQ int8 is the median of the per-round ratios.
A second section breaks the float and tfopt QAT int8 files down byte by byte (weights, biases,
quantization parameters, tensor names, the rest) from their flatbuffers.
Writes benchmarks/results/quantize_vs_tfmot.{json,md} and prints the tables.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tfopt
from tfopt._backend import import_keras
from tfopt._stats import PairedDelta, correct, paired_delta
from tfopt.bench import file_sizes
from tfopt.bench._runners import TFLiteRunner

keras = import_keras()
HERE = Path(__file__).parent


def compile_model(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def to_cnn2d_weights(weights):
    """`mnist1d_cnn` weights -> `mnist1d_cnn2d` weights (Conv1D (k, in, out) -> (k, 1, in, out))."""
    return [w[:, None] if w.ndim == 3 else w for w in weights]


def tflite_correct(path, data) -> np.ndarray:
    """Per-test-sample correctness through the TFLite interpreter (for paired deltas)."""
    return correct(TFLiteRunner(path).predict(data.x_test), data.y_test)


def latencies(paths: dict, sample, rounds: int, n: int = 200) -> dict:
    """Per artifact: lowest per-round median single-sample latency (µs) and the per-round medians."""
    runners = {k: TFLiteRunner(p, num_threads=1) for k, p in paths.items()}
    for r in runners.values():
        for _ in range(50):
            r.invoke(sample)
    medians = {k: [] for k in runners}
    keys = list(runners)
    for i in range(rounds):
        order = keys[i % len(keys) :] + keys[: i % len(keys)]
        for k in order:
            times = []
            for _ in range(n):
                t = time.perf_counter()
                runners[k].invoke(sample)
                times.append(time.perf_counter() - t)
            medians[k].append(1e6 * statistics.median(times))
    return medians


def size_breakdown(path) -> dict:
    """Bytes of a .tflite file by what they hold, from its flatbuffer.

    Weight / bias / other constant / metadata buffers count their data plus the 4-byte length of
    the flatbuffer vector; quantization parameters count each scale (float32), zero point (int64)
    and min/max (float32) vector with its length; tensor names count each string, its length and
    its terminating NUL. "rest" is the file size minus all of those: the flatbuffer tables and
    vtables, operator lists, tensor shapes, signature defs and alignment padding.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        codes.append(op_names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())])
    # which input of an op is its weight / bias
    roles = {
        "CONV_2D": {1: "weights", 2: "biases"},
        "DEPTHWISE_CONV_2D": {1: "weights", 2: "biases"},
        "FULLY_CONNECTED": {1: "weights", 2: "biases"},
        "TRANSPOSE_CONV": {1: "weights", 3: "biases"},
        "GATHER": {0: "weights"},
    }
    metadata = {model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    out = dict.fromkeys(
        [
            "weights",
            "biases",
            "other constants",
            "metadata",
            "quantization scales",
            "quantization zero points",
            "quantization min/max",
            "tensor names",
        ],
        0,
    )
    buffer_role: dict[int, str] = {}
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for o in range(sub.OperatorsLength()):
            op = sub.Operators(o)
            for pos, role in roles.get(codes[op.OpcodeIndex()], {}).items():
                if pos < op.InputsLength() and op.Inputs(pos) >= 0:
                    buf = sub.Tensors(op.Inputs(pos)).Buffer()
                    buffer_role.setdefault(buf, role)
        for t in range(sub.TensorsLength()):
            tensor = sub.Tensors(t)
            out["tensor names"] += 4 + len(tensor.Name()) + 1
            q = tensor.Quantization()
            if q is not None:
                for n, size, key in (
                    (q.ScaleLength(), 4, "quantization scales"),
                    (q.ZeroPointLength(), 8, "quantization zero points"),
                    (q.MinLength(), 4, "quantization min/max"),
                    (q.MaxLength(), 4, "quantization min/max"),
                ):
                    if n:
                        out[key] += 4 + n * size
    for b in range(model.BuffersLength()):
        n = model.Buffers(b).DataLength()
        if not n:
            continue
        role = "metadata" if b in metadata else buffer_role.get(b, "other constants")
        out[role] += 4 + n
    out["rest"] = len(data) - sum(out.values())
    out["total"] = len(data)
    return out


def breakdown_section(sizes: dict) -> str:
    """Markdown: the float and tfopt QAT int8 files of mnist1d_cnn, byte by byte."""
    f, q = sizes["float"], sizes["tfopt_qat"]
    lines = [
        "**Where the bytes are: float32 vs tfopt QAT int8 (mnist1d_cnn)**",
        "",
        "Parsed from the flatbuffers with `tensorflow.lite.python.schema_py_generated` (see "
        "`size_breakdown` in benchmarks/quantize_vs_tfmot.py for what each row counts).",
        "",
        "| bytes | float32 | tfopt QAT int8 | int8 - float | float / int8 |",
        "|---|---|---|---|---|",
    ]
    for key in f:
        ratio = f"{f[key] / q[key]:.2f}x" if q[key] and f[key] else "-"
        lines.append(f"| {key} | {f[key]} | {q[key]} | {q[key] - f[key]:+d} | {ratio} |")
    w_f, w_q = f["weights"], q["weights"]
    other_f, other_q = f["total"] - w_f, q["total"] - w_q
    d = {k: q[k] - f[k] for k in f}
    qparams = sum(v for k, v in d.items() if k.startswith("quantization"))
    budget = f["total"] / 4 - w_q
    lines += [
        "",
        f"The weights shrink {w_f / w_q:.2f}x ({w_f} -> {w_q} bytes). Everything else is "
        f"{other_f} bytes in the float file and {other_q} in the int8 file "
        f"({other_q - other_f:+d}: quantization parameters {qparams:+d}, tensor names "
        f"{d['tensor names']:+d}, biases {d['biases']:+d} since int8 kernels keep int32 "
        f"biases, other constants and metadata {d['other constants'] + d['metadata']:+d}, "
        f"structure {d['rest']:+d}). A raw 4x file would have to be at most "
        f"{f['total'] / 4:.0f} bytes; the int8 weights alone take {w_q}, leaving {budget:.0f} "
        f"bytes for everything else, {budget / other_f:.0%} of what the float file itself "
        "spends on it. With the float file's non-weight bytes unchanged the ratio would be "
        f"{f['total'] / (w_q + other_f):.2f}x; it is {f['total'] / q['total']:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def qat_fit(model, data, epochs, lr, batch, *, preserve_sparsity=True):
    q = tfopt.quantize.qat(model, preserve_sparsity=preserve_sparsity)
    compile_model(q, lr)
    q.fit(*data.train, batch_size=batch, epochs=epochs, verbose=0)
    return q


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-baseline", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--latency-rounds", type=int, default=9)
    args = parser.parse_args()

    started = time.time()
    keras.utils.set_random_seed(0)
    data = tfopt.data.load("mnist1d")
    batch, base_lr = 64, 2e-3
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths, notes = {}, {}
        base = tfopt.models.get("mnist1d_cnn")
        compile_model(base, base_lr)
        print(f"[1/6] float baseline: {args.epochs_baseline} epochs", flush=True)
        base.fit(*data.train, batch_size=batch, epochs=args.epochs_baseline, verbose=0)
        weights = base.get_weights()
        base2d = tfopt.models.get("mnist1d_cnn2d")
        base2d.set_weights(to_cnn2d_weights(weights))
        same = np.abs(base.predict(data.x_test, verbose=0) - base2d.predict(data.x_test, verbose=0))
        assert same.max() < 1e-4, f"Conv2D copy differs from the baseline by {same.max()}"

        print("[2/6] float TFLite and PTQ int8", flush=True)
        paths["float"] = tmp / "float.tflite"
        tfopt.export.tflite(base, paths["float"], check_data=data.x_test)
        paths["ptq"] = tmp / "ptq.tflite"
        tfopt.export.tflite(
            base,
            paths["ptq"],
            quantization="int8",
            representative_data=data.x_train[:200],
            check_data=data.x_test,
        )

        print(f"[3/6] tfopt QAT: {args.qat_epochs} epochs, Adam {args.qat_lr}", flush=True)
        start = tfopt.models.get("mnist1d_cnn")
        start.set_weights(weights)
        q = qat_fit(start, data, args.qat_epochs, args.qat_lr, batch)
        paths["tfopt_qat"] = tmp / "tfopt_qat.tflite"
        art = tfopt.export.tflite(
            q, paths["tfopt_qat"], quantization="int8", check_data=data.x_test
        )
        notes["tfopt_qat"] = {
            "keras_qat_vs_tflite_argmax_agreement": art.check["argmax_agreement"],
            "report": q.qat_report.to_dict(),
        }
        q2d = qat_fit(base2d, data, args.qat_epochs, args.qat_lr, batch)
        paths["tfopt_qat_2d"] = tmp / "tfopt_qat_2d.tflite"
        art2d = tfopt.export.tflite(
            q2d, paths["tfopt_qat_2d"], quantization="int8", check_data=data.x_test
        )
        notes["tfopt_qat_2d"] = {
            "keras_qat_vs_tflite_argmax_agreement": art2d.check["argmax_agreement"]
        }

        print("[4/6] tfmot QAT (Conv2D variant) in a subprocess (tf_keras)", flush=True)
        npz = tmp / "tfmot_in.npz"
        w2d = to_cnn2d_weights(weights)
        np.savez(
            npz,
            x_train=data.x_train,
            y_train=data.y_train,
            n_weights=len(w2d),
            **{f"w{i}": w for i, w in enumerate(w2d)},
            epochs=args.qat_epochs,
            batch_size=batch,
            learning_rate=args.qat_lr,
            seed=0,
        )
        paths["tfmot_qat"] = tmp / "tfmot_qat.tflite"
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / "_tfmot_qat.py"),
                str(npz),
                str(paths["tfmot_qat"]),
                str(tmp / "tfmot.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"tfmot subprocess failed with exit code {proc.returncode}")
        tfm = json.loads((tmp / "tfmot.json").read_text())

        print(
            "[5/6] prune 80% (tfopt.prune, default prune step) + sparsity-preserving QAT",
            flush=True,
        )
        from tfopt._pipeline import StepContext
        from tfopt.config._steps import PruneStepConfig
        from tfopt.prune import _step as prune_step
        from tfopt.prune import sparsity

        start = tfopt.models.get("mnist1d_cnn")
        start.set_weights(weights)
        pcfg = PruneStepConfig()
        ctx = StepContext(data=data, run_dir=tmp / "run", batch_size=batch, verbose=0)
        stripped = prune_step.run(pcfg, start, ctx)
        sparsity_before = sparsity(stripped).global_sparsity
        qs = qat_fit(stripped, data, args.qat_epochs, args.qat_lr, batch, preserve_sparsity=True)
        paths["prune_qat"] = tmp / "prune_qat.tflite"
        art_s = tfopt.export.tflite(
            qs, paths["prune_qat"], quantization="int8", check_data=data.x_test
        )
        kernels = [
            w.layer.kernel.numpy()
            for w in qs.layers
            if isinstance(w, tfopt.quantize.QuantizeWrapper)
        ]
        zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
        notes["prune_qat"] = {
            "sparsity_after_prune": sparsity_before,
            "kernel_sparsity_after_qat": zeros,
            "keras_qat_vs_tflite_argmax_agreement": art_s.check["argmax_agreement"],
            "prune_config": pcfg.model_dump(),
        }

        print(
            f"[6/6] accuracy through TFLite; latency, {args.latency_rounds} interleaved rounds",
            flush=True,
        )
        sizes = {key: size_breakdown(paths[key]) for key in ("float", "ptq", "tfopt_qat")}
        rows, right = {}, {}
        for key, path in paths.items():
            right[key] = tflite_correct(path, data)
            rows[key] = {"accuracy": float(right[key].mean()), **file_sizes(path)}
        for key in rows:  # paired on the same test samples: the interval of each difference
            rows[key]["delta_vs_float"] = paired_delta(right["float"], right[key]).to_dict()
        tfopt_vs_tfmot = paired_delta(right["tfmot_qat"], right["tfopt_qat_2d"])
        med = latencies(paths, data.x_test[:1], args.latency_rounds)
        for key in rows:
            rows[key]["latency_us"] = min(med[key])
            rows[key]["latency_vs_ptq"] = statistics.median(
                a / b for a, b in zip(med[key], med["ptq"])
            )
            rows[key]["latency_rounds_us"] = med[key]

    f = rows["float"]
    names = {
        "float": "float32 TFLite (Conv1D)",
        "ptq": "PTQ int8 (Conv1D, 200 calibration samples)",
        "tfopt_qat": "tfopt QAT int8 (Conv1D)",
        "tfopt_qat_2d": "tfopt QAT int8 (Conv2D 5x1 variant)",
        "tfmot_qat": f"tfmot {tfm['versions']['tfmot']} QAT int8 (Conv2D 5x1 variant)",
        "prune_qat": "tfopt prune 80% + sparsity-preserving QAT int8 (Conv1D)",
    }
    lines = [
        "| model | test acc (TFLite) | Δ vs float [95% CI] | TFLite KB | gzip KB | smaller vs float "
        "| gzip smaller vs float | latency µs (1 sample) | latency vs PTQ int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        lines.append(
            f"| {names[key]} | {r['accuracy']:.4f} | {PairedDelta(**r['delta_vs_float']).as_points()} "
            f"| {r['bytes'] / 1024:.1f} | {r['gzip_bytes'] / 1024:.1f} "
            f"| {f['bytes'] / r['bytes']:.2f}x | {f['gzip_bytes'] / r['gzip_bytes']:.2f}x "
            f"| {r['latency_us']:.1f} | {r['latency_vs_ptq']:.2f}x |"
        )
    header = (
        f"int8 quantization on MNIST-1D ({len(data.x_train)} train / {len(data.x_test)} test), "
        f"float baseline mnist1d_cnn {args.epochs_baseline} epochs (Adam {base_lr}, batch {batch}); "
        f"every QAT run: {args.qat_epochs} epochs, Adam {args.qat_lr}, batch {batch}. Pruning: the "
        f"default `prune` step ({pcfg.epochs} epochs, {pcfg.target_sparsity:.0%}), kernel sparsity "
        f"{notes['prune_qat']['kernel_sparsity_after_qat']:.1%} after QAT. Accuracy through the "
        "TFLite interpreter; Δ is paired on the same test samples (tfopt._stats.paired_delta, "
        f"95% paired bootstrap interval). Wall time {time.time() - started:.0f} s on "
        f"{os.cpu_count()} shared "
        f"CPU cores (load average {os.getloadavg()[0]:.1f}); latencies were taken under that load, "
        f"interleaved in one process (lowest of {args.latency_rounds} per-round medians; the ratio "
        "is the median of per-round ratios).\n\n"
    )
    table = "\n".join(lines) + (
        f"\n\ntfopt QAT − tfmot QAT (Conv2D 5x1 variant, same samples): "
        f"{tfopt_vs_tfmot.as_points()} ({tfopt_vs_tfmot.only_b} test samples only tfopt's model "
        f"gets right, {tfopt_vs_tfmot.only_a} only tfmot's; McNemar p = "
        f"{tfopt_vs_tfmot.p_value:.2f})."
    )
    section = breakdown_section(sizes)
    (out_dir / "quantize_vs_tfmot.md").write_text(header + table + "\n\n" + section)
    result = {
        "rows": rows,
        "notes": notes,
        "size_breakdown_bytes": sizes,
        "args": vars(args),
        "tfopt_qat_2d_minus_tfmot_qat": tfopt_vs_tfmot.to_dict(),
        "tfmot_versions": tfm["versions"],
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / "quantize_vs_tfmot.json").write_text(json.dumps(result, indent=2, default=str))
    print(header + table + "\n\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
