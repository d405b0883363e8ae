"""Benchmark an exported artifact in its own runtime: accuracy, size, gzip size, params/MACs,
single-request latency, and throughput/latency under concurrent load (optionally micro-batched).

Example:
    >>> res = tfopt.bench.benchmark("m.tflite", data=(x_test, y_test), concurrency=(1, 8))
    >>> res.accuracy, res.gzip_bytes, res.latency_ms["p50"]
    >>> tfopt.bench.write_report([res], "bench_out")
"""

from tfopt.bench._bench import BenchResult, benchmark, evaluate, file_sizes, micro_measure
from tfopt.bench._ops import keras_counts, onnx_counts, tflite_counts
from tfopt.bench._report import (
    format_table,
    plot_accuracy_vs_size,
    plot_latency_vs_concurrency,
    write_report,
)
from tfopt.bench._runners import (
    RUNTIMES,
    KerasRunner,
    OnnxRunner,
    SavedModelRunner,
    TFLiteRunner,
    TFLMRunner,
    runner_for,
)
from tfopt.bench._serve import Server, load_test

__all__ = [
    "RUNTIMES",
    "BenchResult",
    "KerasRunner",
    "OnnxRunner",
    "SavedModelRunner",
    "Server",
    "TFLMRunner",
    "TFLiteRunner",
    "benchmark",
    "evaluate",
    "file_sizes",
    "format_table",
    "keras_counts",
    "load_test",
    "micro_measure",
    "onnx_counts",
    "plot_accuracy_vs_size",
    "plot_latency_vs_concurrency",
    "runner_for",
    "tflite_counts",
    "write_report",
]
