"""tfopt.bench: accuracy through each runtime, counts, latency, load, micro-batching, reports, CLI."""

import json
import threading

import numpy as np
import pytest


@pytest.fixture(scope="module")
def artifacts(identity, tmp_path_factory):
    from tfopt.export import export

    d = tmp_path_factory.mktemp("artifacts")
    return {
        "tflite": export(identity, d / "m.tflite").path,
        "onnx": export(identity, d / "m.onnx", format="onnx").path,
        "savedmodel": export(identity, d / "sm", format="savedmodel").path,
    }


@pytest.mark.parametrize("kind", ["keras", "tflite", "onnx", "savedmodel"])
def test_accuracy_is_exact_through_every_runtime(identity, labelled, artifacts, kind):
    from tfopt.bench import benchmark, file_sizes

    artifact = identity if kind == "keras" else artifacts[kind]
    res = benchmark(artifact, labelled, concurrency=(), runs=20, warmup=2)
    assert res.accuracy == 0.75
    assert res.samples == 40
    assert (
        res.runtime
        == {
            "keras": "keras",
            "tflite": "tflite",
            "onnx": "onnxruntime",
            "savedmodel": "savedmodel",
        }[kind]
    )
    if kind != "keras":
        assert (res.bytes, res.gzip_bytes) == tuple(file_sizes(artifact).values())
        assert 0 < res.gzip_bytes
    lat = res.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert res.concurrency == []
    assert len(res.load_avg) == 3


def test_params_and_macs_agree_across_keras_tflite_and_onnx(tmp_path):
    import keras

    import tfopt
    from tfopt.bench import keras_counts, onnx_counts, tflite_counts

    keras.utils.set_random_seed(0)
    model = tfopt.models.get("mnist1d_cnn", width=4, dense=8)
    rng = np.random.default_rng(0)  # non-zero biases: TFLite shares identical constant tensors
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    # conv1 40*4*5 + conv2 20*4*(5*4) + conv3 10*4*(5*4) + fc1 8*40 + logits 10*8
    macs = 800 + 1600 + 800 + 320 + 80
    assert keras_counts(model) == {
        "params": model.count_params(),
        "macs": macs,
        "flops": 2 * macs,
        "source": "keras",
    }
    tfl = tfopt.export.tflite(model, tmp_path / "m.tflite").path
    onx = tfopt.export.onnx(model, tmp_path / "m.onnx").path
    assert tflite_counts(tfl)["macs"] == macs and tflite_counts(tfl)["source"] == "tflite-graph"
    assert onnx_counts(onx)["macs"] == macs
    assert tflite_counts(tfl)["params"] == model.count_params()


def test_load_test_throughput_at_two_clients(artifacts, labelled):
    from tfopt.bench import load_test, runner_for

    res = load_test(
        runner_for(artifacts["tflite"]), labelled[0], clients=2, requests=400, duration_s=30
    )
    assert res["requests"] == 400  # bounded by the request count, not the time
    # a TFLite runner is rebuilt in one replica process per worker
    assert res["workers"] == 2 and res["clients"] == 2 and res["processes"] == 2
    assert res["throughput_rps"] > 0
    assert res["throughput_rps"] == pytest.approx(400 / res["seconds"])
    assert 0 < res["latency_ms"]["p50"] <= res["latency_ms"]["p99"]
    assert res["mean_batch_size"] == 1.0
    short = load_test(
        runner_for(artifacts["tflite"]), labelled[0], clients=1, requests=10**9, duration_s=0.2
    )
    # bounded by the time: the clients stop at the first request after the deadline
    assert 0 < short["requests"] < 10**9 and short["seconds"] >= 0.2


def test_load_test_in_one_process_and_process_errors(artifacts, labelled, identity):
    from tfopt.bench import KerasRunner, load_test, runner_for

    one = load_test(
        runner_for(artifacts["tflite"]), labelled[0], clients=8, processes=1, requests=300
    )
    assert one["processes"] == 1 and one["requests"] == 300 and one["workers"] == 2
    # a Keras model cannot be rebuilt in another process: it is served from this one
    keras_run = load_test(KerasRunner(identity), labelled[0], clients=2, requests=20)
    assert keras_run["processes"] == 1 and keras_run["requests"] == 20
    with pytest.raises(ValueError, match="needs a runner that can be rebuilt in another process"):
        load_test(KerasRunner(identity), labelled[0], clients=2, processes=2)
    with pytest.raises(ValueError, match=r"processes must be an int from 1 to min\(workers"):
        load_test(runner_for(artifacts["tflite"]), labelled[0], clients=2, processes=3)
    with pytest.raises(RuntimeError, match="a load-test process failed"):
        # the replicas get the wrong input width: the error comes back with its traceback
        load_test(runner_for(artifacts["tflite"]), np.zeros((4, 5), "float32"), clients=2)


def test_submit_async_answers_on_a_worker_thread(artifacts):
    from tfopt.bench import Server, runner_for

    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    answers, done = {}, threading.Semaphore(0)

    def callback(i):
        def answer(y, error):
            answers[i] = (y, error, threading.current_thread().name)
            done.release()

        return answer

    with Server(runner_for(artifacts["tflite"]), workers=2) as server:
        for i in range(5):
            server.submit_async(x[i : i + 1], callback(i))
        for _ in range(5):
            done.acquire()
    for i, (y, error, thread) in answers.items():
        assert error is None and thread.startswith("tfopt-serve-")
        np.testing.assert_allclose(y, x[i : i + 1], atol=1e-6)


def test_micro_batching_batches_and_routes_each_answer(artifacts):
    from tfopt.bench import Server, runner_for

    x = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    answers = [None] * 8
    barrier = threading.Barrier(8)
    with Server(
        runner_for(artifacts["tflite"]), workers=1, micro_batch=True, max_batch=8, max_wait_ms=200
    ) as server:
        server.warmup()

        def client(i):
            barrier.wait()
            answers[i] = server.submit(x[i : i + 1])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # the identity model answers each request with its own input
    np.testing.assert_allclose(np.concatenate(answers), x, atol=1e-6)
    assert sum(server.batch_sizes) == 8
    assert max(server.batch_sizes) >= 4  # 8 simultaneous requests, 200 ms to gather them
    assert len(server.batch_sizes) <= 4


def test_benchmark_with_micro_batching_reports_batch_sizes(artifacts, labelled):
    from tfopt.bench import benchmark

    res = benchmark(
        artifacts["onnx"],
        labelled,
        concurrency=(1, 8),
        micro_batch=True,
        max_batch=8,
        max_wait_ms=5,
        requests=400,
        duration_s=20,
        runs=10,
    )
    one, eight = res.concurrency
    assert (one["clients"], eight["clients"]) == (1, 8)
    assert one["mean_batch_size"] == 1.0
    assert eight["mean_batch_size"] > 1.5
    assert eight["micro_batch"] is True and eight["max_batch"] == 8
    assert eight["requests"] == 400 and eight["throughput_rps"] > 0


def test_bad_arguments_are_clear(artifacts, labelled, tmp_path):
    from tfopt.bench import benchmark, runner_for

    with pytest.raises(
        ValueError, match=r"concurrency must hold ints >= 1\. Received: concurrency=\[0\]"
    ):
        benchmark(artifacts["tflite"], labelled, concurrency=[0])
    with pytest.raises(ValueError, match=r"data's samples have shape \(4,\) but .* takes \(3,\)"):
        benchmark(artifacts["tflite"], (np.zeros((2, 4)), np.zeros(2)))
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Unrecognized artifact .*m\.pt"):
        runner_for(tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="No such artifact"):
        runner_for(tmp_path / "missing.tflite")


def test_write_report_table_json_and_plots(artifacts, labelled, tmp_path):
    from tfopt.bench import benchmark, format_table, write_report

    results = [
        benchmark(artifacts["tflite"], labelled, concurrency=(1, 2), requests=100, runs=10),
        benchmark(artifacts["onnx"], labelled, concurrency=(1, 2), requests=100, runs=10),
    ]
    table = format_table(results)
    assert table.count("| 0.7500 |") == 2
    assert (
        "| clients | workers (processes) | micro-batch | seconds | requests | errors | req/s |"
        in table
    )
    paths = write_report(results, tmp_path / "rep", title="Tiny")
    rows = json.loads(paths["json"].read_text())
    assert [r["accuracy"] for r in rows] == [0.75, 0.75]
    assert [c["clients"] for c in rows[0]["concurrency"]] == [1, 2]
    md = paths["markdown"].read_text()
    assert (
        md.startswith("# Tiny")
        and "![latency vs concurrency](bench_latency_vs_concurrency.png)" in md
    )
    for key in ("latency_plot", "size_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench(artifacts, tmp_path, capsys):
    from tfopt.cli import main

    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                str(artifacts["tflite"]),
                "--concurrency",
                "1,2",
                "--requests",
                "50",
                "--runs",
                "10",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| artifact | runtime | accuracy |" in printed
    (row,) = json.loads(out.read_text())
    assert row["accuracy"] is None  # no --data
    assert [c["clients"] for c in row["concurrency"]] == [1, 2]
    assert all(c["requests"] == 50 for c in row["concurrency"])
    with pytest.raises(SystemExit):
        main(["bench", str(artifacts["tflite"]), "--concurrency", "0,x"])
    assert "--concurrency takes comma-separated client counts" in capsys.readouterr().err


def test_server_hands_runtime_errors_to_every_caller_and_validates_arguments():
    from tfopt.bench import Server

    class Broken:
        runtime = "test"
        input_shape = (3,)

        def clone(self):
            return self

        def invoke(self, x):
            raise ValueError(f"bad batch of {len(x)}")

    with Server(Broken(), workers=1, micro_batch=True, max_batch=4) as server:
        with pytest.raises(ValueError, match="bad batch of 1"):
            server.submit(np.zeros((1, 3), "float32"))
    with pytest.raises(RuntimeError, match="closed"):
        server.submit(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"workers must be an int >= 1\. Received: workers=-1"):
        Server(Broken(), workers=-1)
    with pytest.raises(ValueError, match=r"max_batch must be an int >= 1\. Received: max_batch=0"):
        Server(Broken(), micro_batch=True, max_batch=0)


def test_run_report_rows_carry_their_own_models_counts(tmp_path):
    """Each exported row of `tfopt run` has the params/MACs of the model it was exported from."""
    import keras
    from _helpers import random_npz

    from tfopt._measure import count
    from tfopt._pipeline import run
    from tfopt.config import validate

    random_npz(tmp_path / "tiny.npz", 80, 16)
    cfg = validate(
        {
            "name": "tiny",
            "data": {"name": str(tmp_path / "tiny.npz"), "val_fraction": 0.2},
            "model": {"name": "mnist1d_cnn", "options": {"width": 8, "dense": 8}},
            "train": {"epochs": 0, "batch_size": 32},
            "steps": [
                {"type": "prune_channels", "ratio": 0.5, "steps": 1, "epochs_per_step": 0},
            ],
            "export": {"formats": ["tflite-int8"], "representative_samples": 16},
            "bench": {"runs": 2, "warmup": 0, "concurrency": []},
        }
    )
    report = run(cfg, out_dir=tmp_path / "run", verbose=0)
    rows = {(r["stage"], r["format"]): r for r in report["results"]}
    baseline = count(keras.models.load_model(tmp_path / "run" / "baseline.keras", compile=False))
    pruned = count(
        keras.models.load_model(tmp_path / "run" / "1_prune_channels.keras", compile=False)
    )
    assert pruned["params"] < baseline["params"] and pruned["macs"] < baseline["macs"]
    for stage, fmt, expected in [
        ("baseline", "keras", baseline),
        ("baseline", "tflite", baseline),  # was the final stage's numbers
        ("1_prune_channels", "keras", pruned),
        ("1_prune_channels", "tflite-int8", pruned),
    ]:
        assert (rows[stage, fmt]["params"], rows[stage, fmt]["macs"]) == (
            expected["params"],
            expected["macs"],
        ), (stage, fmt)
    md = (tmp_path / "run" / "report.md").read_text()
    final = rows["1_prune_channels", "tflite-int8"]
    ratio = rows["baseline", "tflite"]["gzip_bytes"] / final["gzip_bytes"]
    assert "x smaller (gzip vs baseline tflite gzip)" in md
    assert "| 1_prune_channels | tflite-int8 |" in md and f" {ratio:.1f}x |" in md
    assert f"| {baseline['params']:,} | {baseline['macs']:,} |" in md


@pytest.mark.parametrize(
    "bad, message",
    [
        ("nan", r"inputs hold NaN or infinite values in 1 of 40 samples \(the first is sample 5\)"),
        ("inf", r"inputs hold NaN or infinite values in 1 of 40 samples"),
        ("label_high", r"labels must be class indices < 3 .* received 3 \(1 labels out of range\)"),
        ("label_negative", r"labels must be >= 0; received -1"),
        ("label_float", r"labels must be whole class indices"),
        ("one_hot", r"labels look one-hot \(shape \(40, 3\)\): pass integer labels"),
    ],
)
def test_bench_refuses_bad_inputs_and_labels_before_scoring(artifacts, labelled, bad, message):
    from tfopt.bench import benchmark
    from tfopt.errors import DataError

    x, y = labelled[0].copy(), labelled[1].copy()
    if bad in ("nan", "inf"):
        x[5, 1] = np.nan if bad == "nan" else np.inf
    elif bad == "label_high":
        y[7] = 3
    elif bad == "label_negative":
        y[0] = -1
    elif bad == "label_float":
        y = y + 0.5
    else:
        y = np.eye(3)[y]
    with pytest.raises(DataError, match=message):
        benchmark(artifacts["tflite"], (x, y), concurrency=(), runs=1, warmup=0)


# -- the load test runs for a duration, counts errors and leaves no process behind (issue 12) ---
def test_load_test_runs_for_a_duration_by_default():
    import inspect

    from tfopt.bench import benchmark, load_test
    from tfopt.cli import build_parser

    assert inspect.signature(load_test).parameters["requests"].default is None
    assert inspect.signature(benchmark).parameters["requests"].default is None
    assert inspect.signature(benchmark).parameters["duration_s"].default == 3.0
    args = build_parser().parse_args(["bench", "m.tflite"])
    assert args.requests is None and args.duration == 3.0


def test_load_test_counts_request_errors_without_aborting():
    from _serve_helpers import FlakyRunner

    from tfopt.bench import load_test

    x = np.ones((4, 3), "float32")
    x[1, 0] = -1.0  # every 4th request fails
    res = load_test(FlakyRunner(), x, clients=2, duration_s=0.3, warmup=False)
    assert res["requests"] > 0 and res["errors"] > 0
    # requests cycle through x: one in four fails (give or take the clients' last requests)
    assert abs(res["errors"] - res["requests"] / 3) <= 2
    assert res["first_error"] == "ValueError: negative input"
    assert res["seconds"] >= 0.3  # ran for its duration (no upper bound: a loaded machine is slow)
    with pytest.raises(RuntimeError, match=r"every request of the load test failed \(\d+ errors\)"):
        load_test(FlakyRunner(), -np.ones((2, 3), "float32"), duration_s=0.1, warmup=False)


def test_a_replica_that_dies_while_starting_is_an_error_at_once():
    import multiprocessing.connection

    from _serve_helpers import DiesOnLoad

    from tfopt.bench import load_test

    woke = []
    wait = multiprocessing.connection.wait

    def recording_wait(objects, timeout=None):
        ready = wait(objects, timeout)
        woke.append((len(ready), timeout))  # nothing ready: the timeout ran out
        return ready

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(multiprocessing.connection, "wait", recording_wait)
        with pytest.raises(RuntimeError, match=r"exited with code -9 while starting, without a"):
            load_test(DiesOnLoad(), np.ones((2, 3), "float32"), clients=2, start_timeout_s=600)
    # woken by the replica's exit, not by the end of the 600 s start-up timeout
    assert woke and woke[0][1] == 600 and woke[0][0] > 0


def _gone(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.exists(f"/proc/{pid}")


def test_a_script_without_a_main_guard_runs_once_beside_its_replicas(artifacts, tmp_path):
    """The replicas used to be multiprocessing spawns, which import the caller's script again:
    without an ``if __name__ == "__main__":`` guard (README's tour as a script) the script ran
    once more in each replica, which then failed while starting."""
    import os
    import subprocess
    import sys

    script = tmp_path / "tour.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        "from tfopt.bench import load_test, runner_for\n"
        "print('top level', flush=True)\n"
        "x = np.zeros((4, 3), 'float32')\n"
        "out = load_test(runner_for(sys.argv[1]), x, clients=2, processes=2, requests=20)\n"
        "print('requests', out['requests'], 'processes', out['processes'], flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), str(artifacts["tflite"])],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=600,
    )
    assert done.stdout == "top level\nrequests 20 processes 2\n", done.stderr[-3000:]


def test_killing_the_parent_during_start_up_leaves_no_worker(artifacts):
    import os
    import signal
    import subprocess
    import sys
    import time

    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    script = (
        "import glob, os, sys, threading, time\n"
        "import numpy as np\n"
        "from tfopt.bench import load_test, runner_for\n"
        "def children():  # by the parent pid in /proc/PID/stat\n"
        "    found = []\n"
        "    for stat in glob.glob('/proc/[0-9]*/stat'):\n"
        "        try:\n"
        "            fields = open(stat).read().rsplit(')', 1)[1].split()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if int(fields[1]) == os.getpid():\n"
        "            found.append(stat.split('/')[2])\n"
        "    return found\n"
        "r = runner_for(sys.argv[1])\n"
        "x = np.zeros((4, 3), 'float32')\n"
        "kw = dict(clients=2, processes=2, duration_s=60)\n"
        "threading.Thread(target=load_test, args=(r, x), kwargs=kw, daemon=True).start()\n"
        "while len(children()) < 2:\n"
        "    time.sleep(0.01)\n"
        "print(' '.join(children()), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(artifacts["tflite"])],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the workers are still starting (importing)
        proc.wait()
        deadline = time.monotonic() + 600  # a guard against hanging, not a speed bound
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        alive = [p for p in pids if not _gone(p)]
        for p in alive:
            os.kill(p, signal.SIGKILL)
        assert not alive, f"orphan load-test processes {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
