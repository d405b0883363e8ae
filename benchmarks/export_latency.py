"""Single-sample latency of mnist1d_cnn in Keras (eager, predict_on_batch, predict), TFLite
float32, TFLite int8 and ONNX Runtime, measured interleaved in one process; then TFLite int8
throughput at 1, 2, 8 and 32 concurrent clients, with and without micro-batching.

Run: OMP_NUM_THREADS=1 python benchmarks/export_latency.py [--epochs 5] [--quick]
Writes benchmarks/results/export_latency.json and .md. Every interpreter/session uses one thread;
the serving pool has min(clients, CPUs) of them, one per replica process (`tfopt.bench.load_test`'s
default for TFLite); rows marked "1 process" run the same pool as threads of one process, for
comparison. Clients are closed-loop (one request in flight each, as perf_analyzer's concurrency).
The machine's load average is printed: on a shared machine the absolute numbers and the
concurrency scaling depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import tfopt
from tfopt.bench import KerasRunner, OnnxRunner, TFLiteRunner, file_sizes, load_test

RESULTS = Path(__file__).parent / "results"


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def latency_table(runners: dict, x: np.ndarray, rounds: int, predict_rounds: int) -> dict:
    """Times one sample through every runner, round-robin, so that load spikes hit all alike."""
    times = {name: [] for name in runners}
    for name, r in runners.items():  # warm-up
        for _ in range(5 if name == "Keras predict" else 50):
            r.invoke(x[:1])
    for i in range(rounds):
        sample = x[i % len(x) : i % len(x) + 1]
        for name, r in runners.items():
            if name == "Keras predict" and i >= predict_rounds:
                continue
            t = time.perf_counter()
            r.invoke(sample)
            times[name].append((time.perf_counter() - t) * 1e3)
    out = {}
    for name, ts in times.items():
        p50, p90, p99 = np.percentile(ts, [50, 90, 99])
        out[name] = {"runs": len(ts), "p50": float(p50), "p90": float(p90), "p99": float(p99)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2000, help="latency rounds per runner")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency level")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each load level (median)")
    ap.add_argument("--max-wait-ms", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="1 epoch, few rounds (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.duration, args.reps = 1, 200, 0.5, 1
    started = time.time()
    load_start = _load()
    print(
        f"load average at start (1, 5, 15 min): {load_start} on {os.cpu_count()} CPUs", flush=True
    )

    import keras

    keras.utils.set_random_seed(0)
    data = tfopt.data.load("mnist1d")
    model = tfopt.models.get("mnist1d_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t = time.time()
    model.fit(*data.train, epochs=args.epochs, batch_size=64, verbose=0)
    train_s = time.time() - t
    print(f"trained mnist1d_cnn for {args.epochs} epochs in {train_s:.0f}s", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="tfopt_export_latency_"))
    f32 = tfopt.export.export(model, tmp / "f32.tflite", format="tflite", check_data=data.x_val)
    i8 = tfopt.export.export(
        model,
        tmp / "int8.tflite",
        format="tflite-int8",
        representative_data=data.x_train[:200],
        check_data=data.x_val,
    )
    onx = tfopt.export.export(model, tmp / "m.onnx", format="onnx", check_data=data.x_val)
    keras_path = tmp / "m.keras"
    model.save(keras_path)

    runners = {
        "Keras eager": KerasRunner(model, mode="call"),
        "Keras predict_on_batch": KerasRunner(model, mode="predict_on_batch"),
        "Keras predict": KerasRunner(model, mode="predict"),
        "TFLite float32": TFLiteRunner(f32.path),
        "TFLite int8": TFLiteRunner(i8.path),
        "ONNX Runtime": OnnxRunner(onx.path),
    }
    sizes = {name: file_sizes(keras_path) for name in runners if name.startswith("Keras")}
    sizes.update(
        {
            "TFLite float32": file_sizes(f32.path),
            "TFLite int8": file_sizes(i8.path),
            "ONNX Runtime": file_sizes(onx.path),
        }
    )
    accuracy = {}
    for name, r in runners.items():
        if name in ("Keras eager", "Keras predict"):
            continue  # same model as predict_on_batch
        logits = r.predict(data.x_test)
        accuracy[name] = float(np.mean(logits.argmax(-1) == data.y_test))
    for name in ("Keras eager", "Keras predict"):
        accuracy[name] = accuracy["Keras predict_on_batch"]
    x = data.x_test
    lat = latency_table(runners, x, args.rounds, predict_rounds=min(args.rounds, 200))
    load_mid = _load()

    # (clients, micro-batching, processes): None = load_test's default, one process per worker
    configs = [(c, mb, None) for mb in (False, True) for c in (1, 2, 8, 32)]
    configs += [(8, False, 1), (32, True, 1)]
    runs: list[list[dict]] = [[] for _ in configs]
    base = TFLiteRunner(i8.path)
    for _ in range(args.reps):  # interleave the configurations; report each one's median run
        for k, (clients, mb, processes) in enumerate(configs):
            runs[k].append(
                load_test(
                    base,
                    x,
                    clients=clients,
                    processes=processes,
                    micro_batch=mb,
                    max_batch=32,
                    max_wait_ms=args.max_wait_ms,
                    requests=10**9,
                    duration_s=args.duration,
                )
            )
    # context: the same load test on a runtime whose call dominates the per-request Python cost
    keras_rows = []
    kr = KerasRunner(model, mode="predict_on_batch")
    for clients, mb in ((1, False), (32, True)):
        keras_rows.append(
            load_test(
                kr,
                x,
                clients=clients,
                micro_batch=mb,
                max_batch=32,
                max_wait_ms=args.max_wait_ms,
                requests=10**9,
                duration_s=args.duration,
            )
        )
    load_end = _load()

    def median_run(rs):
        return sorted(rs, key=lambda r: r["throughput_rps"])[len(rs) // 2]

    load_rows = []
    one = statistics.median(r["throughput_rps"] for r in runs[0])
    for k in range(len(configs)):
        r = median_run(runs[k])
        load_rows.append(
            {
                **r,
                "speedup_vs_1_client": r["throughput_rps"] / one,
                "all_rps": [round(v["throughput_rps"]) for v in runs[k]],
            }
        )

    lines = [
        "### Single-sample latency, mnist1d_cnn (interleaved, 1 thread each)",
        "",
        "| runtime | test accuracy | size KiB | gzip KiB | p50 ms | p90 ms | p99 ms | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in lat.items():
        s = sizes[name]
        lines.append(
            f"| {name} | {accuracy[name]:.4f} | {s['bytes'] / 1024:.1f} | "
            f"{s['gzip_bytes'] / 1024:.1f} | {v['p50']:.3f} | {v['p90']:.3f} | "
            f"{v['p99']:.3f} | {v['runs']} |"
        )
    lines += [
        "",
        f"### TFLite int8 under load ({args.duration:g} s per level, median of {args.reps} "
        f"interleaved runs; pool of min(clients, {os.cpu_count()}) interpreters, one per process "
        "unless marked)",
        "",
        "| clients | workers (processes) | micro-batch | req/s | x 1 client | p50 ms | p99 ms | batch: mean / per request | req/s of each run |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in load_rows:
        mb = f"max 32, {r['max_wait_ms']:g} ms" if r["micro_batch"] else "no"
        lines.append(
            f"| {r['clients']} | {r['workers']} ({r['processes']}) | {mb} | {r['throughput_rps']:.0f} | "
            f"{r['speedup_vs_1_client']:.2f} | {r['latency_ms']['p50']:.3f} | "
            f"{r['latency_ms']['p99']:.3f} | {r['mean_batch_size']:.1f} / {r['request_batch_size']:.1f} | {r['all_rps']} |"
        )
    k1 = keras_rows[0]["throughput_rps"]
    lines += [
        "",
        "Context, same load test through Keras `predict_on_batch` (a ~ms call, so batching pays):",
        "",
        "| clients | micro-batch | req/s | x 1 client | p50 ms | p99 ms | batch: mean / per request |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in keras_rows:
        mb = f"max 32, {r['max_wait_ms']:g} ms" if r["micro_batch"] else "no"
        lines.append(
            f"| {r['clients']} | {mb} | {r['throughput_rps']:.0f} | {r['throughput_rps'] / k1:.2f} | "
            f"{r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {r['mean_batch_size']:.1f} / {r['request_batch_size']:.1f} |"
        )
    t8, t32 = load_rows[configs.index((8, False, None))], load_rows[configs.index((32, True, None))]
    targets = {
        "8 clients >= 1.7x one client": (
            t8["speedup_vs_1_client"],
            t8["speedup_vs_1_client"] >= 1.7,
        ),
        "32 clients micro-batched >= 3x one client": (
            t32["speedup_vs_1_client"],
            t32["speedup_vs_1_client"] >= 3.0,
        ),
    }
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {k} | {v:.2f}x | {'yes' if ok else 'no'} |" for k, (v, ok) in targets.items()]
    lines += [
        "",
        f"Load average (1, 5, 15 min): start {load_start}, after latency {load_mid}, "
        f"end {load_end}; {os.cpu_count()} CPUs shared with other jobs. Parity checks: "
        f"float32 max abs diff {f32.check['max_abs_diff']:.2g}, int8 argmax agreement "
        f"{i8.check['argmax_agreement']:.1%}, ONNX max abs diff {onx.check['max_abs_diff']:.2g}.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_latency.md").write_text("## export_latency\n\n" + table)
    (RESULTS / "export_latency.json").write_text(
        json.dumps(
            {
                "epochs": args.epochs,
                "train_seconds": train_s,
                "cpus": os.cpu_count(),
                "load_avg": {"start": load_start, "after_latency": load_mid, "end": load_end},
                "accuracy": accuracy,
                "sizes": sizes,
                "latency_ms": lat,
                "load_test": load_rows,
                "keras_load_test": keras_rows,
                "targets": {k: {"measured": v, "met": ok} for k, (v, ok) in targets.items()},
                "checks": {"tflite": f32.check, "tflite-int8": i8.check, "onnx": onx.check},
                "seconds": time.time() - started,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {RESULTS / 'export_latency.md'} and .json in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
