"""`tfopt bench ARTIFACT [ARTIFACT ...] [--data NAME] [--concurrency 1,8,32] [--json out.json]`."""

from __future__ import annotations


def _levels(text: str) -> list[int]:
    import argparse

    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        levels = []
    if not levels or any(v < 1 for v in levels):
        raise argparse.ArgumentTypeError(
            f"--concurrency takes comma-separated client counts >= 1, e.g. 1,8,32. Received: {text!r}"
        )
    return levels


def add_parser(sub):
    from tfopt import _formats as formats

    files = ", ".join(formats.runnable_suffixes())
    p = sub.add_parser(
        "bench",
        help="benchmark artifacts in their runtime: accuracy, size, latency, throughput under load",
        description=f"Measure each ARTIFACT (.keras, {files}, SavedModel or Triton model "
        "directory) in its own runtime: accuracy on the dataset's test split, params/MACs, file "
        "and gzip size, single-request latency p50/p90/p99, and throughput/latency at each "
        "concurrency level. Prints a table; --json and --report write files.",
    )
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT")
    p.add_argument(
        "--runtime",
        choices=["litert", "tflm", "onnxruntime", "savedmodel", "keras"],
        help="run in this runtime instead of the artifact's own: tflm runs a .tflite file in "
        "TensorFlow Lite for Microcontrollers (arena bytes = peak RAM, flash bytes, agreement "
        "with LiteRT; pip install tflite-micro)",
    )
    p.add_argument(
        "--data",
        help="dataset name or .npz; its test split gives accuracy and inputs "
        "(default: none: latency on zero inputs, no accuracy)",
    )
    _add_load_args(p)
    p.add_argument("--runs", type=int, default=200, help="timed single-request runs (default: 200)")
    p.add_argument(
        "--robust-epsilon",
        type=float,
        metavar="EPS",
        help="also measure accuracy under PGD-10 at this L-inf radius (needs --data)",
    )
    p.add_argument(
        "--attack-model",
        metavar="M.keras",
        help="the Keras model the PGD examples are made on (needed for .tflite/.onnx/SavedModel "
        "artifacts, which give no gradients: a transfer attack); .keras artifacts are attacked "
        "white-box",
    )
    p.add_argument("--json", dest="json_path", metavar="OUT.json", help="write the results as JSON")
    p.add_argument(
        "--report", metavar="DIR", help="write bench.md, bench.json and PNG plots to DIR"
    )
    return p


def _add_load_args(p) -> None:
    """The load test's flags: concurrency levels, micro-batching, the serving pool, how long."""
    p.add_argument(
        "--concurrency",
        type=_levels,
        default=[1],
        metavar="1,8,32",
        help="client counts for the load test (default: 1)",
    )
    p.add_argument(
        "--micro-batch", action="store_true", help="group concurrent requests into batches"
    )
    p.add_argument("--max-batch", type=int, default=32, help="largest micro-batch (default: 32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch that is not full waits for more requests (default: 0)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="interpreters/sessions in the pool (default: min(clients, CPUs))",
    )
    p.add_argument(
        "--processes",
        type=int,
        help="replica processes the pool is spread over (default: one per worker for .tflite "
        "and .onnx, else 1)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="seconds each concurrency level runs (default: 3; a few thousand requests "
        "or more, so that the percentiles mean something)",
    )
    p.add_argument(
        "--requests", type=int, help="stop a level early after this many requests (default: no cap)"
    )


def main(args) -> int:
    import json
    from pathlib import Path

    from tfopt import bench

    data = None
    if args.robust_epsilon is not None and not args.data:
        raise ValueError("--robust-epsilon needs --data (labelled test data to attack)")
    if args.data:
        from tfopt.cli._export import _load_data

        data = _load_data(args.data).test
    results = []
    for artifact in args.artifacts:
        results.append(
            bench.benchmark(
                artifact,
                data,
                concurrency=args.concurrency,
                micro_batch=args.micro_batch,
                max_batch=args.max_batch,
                max_wait_ms=args.max_wait_ms,
                workers=args.workers,
                processes=args.processes,
                requests=args.requests,
                duration_s=args.duration,
                runs=args.runs,
                runtime=args.runtime,
                robust_epsilon=args.robust_epsilon,
                attack_model=args.attack_model,
            )
        )
    print(bench.format_table(results), end="")
    for r in results:
        if r.robust_accuracy is not None:
            print(f"{r.artifact}: robust accuracy {r.robust_accuracy:.4f} ({r.robust_attack})")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"json: {args.json_path}")
    if args.report:
        paths = bench.write_report(results, args.report)
        print(f"report: {paths['markdown']}")
    return 0
