"""Serving under concurrency: a pool of runners, optional micro-batching, and a load generator."""

from __future__ import annotations

import itertools
import logging
import multiprocessing.connection
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from tfopt._guard import watch_parent
from tfopt._worker import _Duplex


def _percentiles(ms) -> dict[str, float]:
    if not len(ms):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(ms))}


def _bucket(n: int, max_batch: int) -> int:
    """The padded batch size for ``n`` requests: the next power of two, at most ``max_batch``."""
    return min(max_batch, 1 << (n - 1).bit_length())


_STOP = object()  # queued once per worker by `Server.close`


class Server:
    """Serves single-sample requests with a pool of ``workers`` serving threads.

    Requests go into one queue; each worker thread owns its runners (an interpreter or session is
    not shared), takes the oldest request and, with micro-batching, every other waiting request up
    to ``max_batch``, runs them as one batch and answers each. With ``max_wait_ms > 0`` a batch that
    is not full waits up to that long for more requests. Batches are padded to a power of two and
    each worker keeps one runner per padded size, so no interpreter is resized while serving.
    ``batch_sizes`` records every batch's real size.

    Args:
        runner: a runner from `tfopt.bench.runner_for` (cloned for each worker and batch size).
        workers: the number of serving threads, each with its own runners. Defaults to the number
            of CPUs.
        micro_batch: group waiting requests into batches. Defaults to False.
        max_batch: the largest batch when micro-batching. Defaults to 32.
        max_wait_ms: how long a batch that is not full waits for more requests. Defaults to 0.0.

    Example:
        >>> with Server(runner_for("m.tflite"), workers=2, micro_batch=True) as server:
        ...     logits = server.submit(x[:1])  # from many threads at once
    """

    def __init__(
        self,
        runner,
        *,
        workers: int | None = None,
        micro_batch: bool = False,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
    ):
        workers = (os.cpu_count() or 1) if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1. Received: workers={workers!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1. Received: max_batch={max_batch!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0. Received: max_wait_ms={max_wait_ms!r}")
        self.workers = workers
        self.micro_batch = bool(micro_batch)
        self.max_batch = max_batch if micro_batch else 1
        self.max_wait = max_wait_ms / 1e3 if micro_batch else 0.0
        self.batch_sizes: list[int] = []
        self._template = runner
        self._runners: list[dict[int, object]] = [{} for _ in range(workers)]
        self._runners[0][1] = runner
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(w,), daemon=True, name=f"tfopt-serve-{w}")
            for w in range(workers)
        ]
        for t in self._threads:
            t.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Refuses new requests, serves those already queued, and stops the workers."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    def _runner(self, worker: int, size: int):
        runners = self._runners[worker]
        if size not in runners:
            runners[size] = self._template.clone()
        return runners[size]

    def warmup(self) -> None:
        """Creates and runs every runner once (each padded batch size when micro-batching)."""
        x = np.zeros((1, *self._template.input_shape), dtype="float32")
        sizes = sorted({_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        for worker in range(self.workers):
            for size in sizes:
                self._runner(worker, size).invoke(np.repeat(x, size, axis=0))

    def submit_async(self, x: np.ndarray, callback) -> None:
        """Queues one request ``x`` (shape ``(1, ...)``); a worker thread later calls
        ``callback(y, error)`` with its output (``error`` is None) or the exception raised."""
        if self._closed:
            raise RuntimeError("the Server is closed")
        self._queue.put((x, callback))

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Serves one request ``x`` (shape ``(1, ...)``), blocking until its output is ready."""
        answer = []
        ready = threading.Lock()  # a raw lock wakes the caller several times cheaper than an Event
        ready.acquire()

        def callback(y, error):
            answer.append((y, error))
            ready.release()

        self.submit_async(x, callback)
        ready.acquire()
        y, error = answer[0]
        if error is not None:
            raise error
        return y

    def _take_batch(self, first) -> tuple[list, bool]:
        """``first`` plus waiting requests up to ``max_batch``; True when a stop was taken."""
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self, worker: int) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = self._take_batch(item) if self.max_batch > 1 else ([item], False)
            n = len(batch)
            size = _bucket(n, self.max_batch)
            try:
                x = np.concatenate([r[0] for r in batch]) if n > 1 else item[0]
                if size > n:
                    x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
                y, error = self._runner(worker, size).invoke(x), None
            except Exception as e:  # every caller in the batch gets the error rather than hangs
                y, error = None, e
            self.batch_sizes.append(n)
            for i, (_, callback) in enumerate(batch):
                try:
                    callback(None if error else y[i : i + 1], error)
                except Exception:  # a broken callback must not take the worker down
                    logging.getLogger("tfopt").exception("a Server callback raised")
            if stop:
                return


def _closed_loop(
    runner,
    x,
    *,
    clients,
    workers,
    micro_batch,
    max_batch,
    max_wait_ms,
    requests,
    duration_s,
    warmup,
    ready=None,
) -> dict:
    """Runs ``clients`` closed-loop clients against a `Server` in this process.

    A client keeps one request in flight: the answer's callback (on the worker thread) sends the
    client's next request, so no thread is woken per request. ``ready`` (a callable) is called
    after warm-up and blocks until the timed run may start.
    """
    with Server(
        runner,
        workers=workers,
        micro_batch=micro_batch,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    ) as server:
        if warmup:
            server.warmup()
        if ready is not None:
            ready()
        latencies: list[float] = []
        errors: list[BaseException] = []
        counter = itertools.count()
        finished = threading.Semaphore(0)
        n = len(x)
        cap = float("inf") if requests is None else requests

        def send() -> None:
            i = next(counter)
            t = time.perf_counter()
            if i >= cap or t > deadline:
                finished.release()
                return
            server.submit_async(x[i % n : i % n + 1], lambda y, error, t=t: answered(t, error))

        def answered(t: float, error) -> None:
            if error is not None:
                errors.append(error)  # counted; the client goes on with its next request
            else:
                latencies.append(time.perf_counter() - t)
            send()

        t0 = time.perf_counter()
        deadline = t0 + duration_s
        for _ in range(clients):
            send()
        for _ in range(clients):
            finished.acquire()
        seconds = time.perf_counter() - t0
        sizes = list(server.batch_sizes)
    if errors and not latencies:
        raise RuntimeError(
            f"every request of the load test failed ({len(errors)} errors); the first: "
            f"{type(errors[0]).__name__}: {errors[0]}"
        ) from errors[0]
    return {
        "latency_s": np.asarray(latencies),
        "seconds": seconds,
        "batch_sizes": sizes,
        "errors": len(errors),
        "first_error": None if not errors else f"{type(errors[0]).__name__}: {errors[0]}",
    }


def _child(conn, payload_path: str, parent_pid: int) -> None:
    """A load-test process: reads its share (runner, inputs) from ``payload_path``, rebuilds the
    runner, warms up, says "ready", waits for "go" on the pipe (EOF: the parent is gone, so it
    exits), runs and reports."""
    # its parent ends it (closes the pipe, then kills it); after a SIGKILL of the parent
    # nothing would: exit as soon as the parent (by its pid at the start) is gone
    watch_parent(lambda: os._exit(3), interval=0.25, parent=parent_pid)
    try:
        from tfopt._litert_log import silence_xnnpack_banner

        silence_xnnpack_banner()
        with open(payload_path, "rb") as f:
            args = pickle.load(f)

        def ready():
            conn.send(("ready", None))
            try:
                message = conn.recv()
            except EOFError:  # the parent died or gave up: nothing to measure for
                os._exit(3)
            if message != "go":
                os._exit(3)

        out = _closed_loop(**args, ready=ready)
        conn.send(("done", out))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with this traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Replica:
    """One load-test process: a plain ``python -c`` child, not a ``multiprocessing`` spawn, which
    imports the caller's ``__main__`` again (a script without an ``if __name__ == "__main__":``
    guard ran once more in every replica, which then failed while starting). It gets the caller's
    ``sys.path``, so runners of the caller's modules unpickle there too."""

    def __init__(self, payload: str):
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        code = "import sys; from tfopt.bench._serve import _replica_main; _replica_main(sys.argv)"
        argv = [str(child_r), str(child_w), payload, str(os.getpid())]
        self.process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env,
                                        pass_fds=(child_r, child_w), stdin=subprocess.DEVNULL)  # fmt: skip
        os.close(child_r)
        os.close(child_w)
        self.conn, self.pid = _Duplex(parent_r, parent_w), self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def join(self, timeout: float) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self.process.kill()


def _replica_main(argv: list[str]) -> None:
    """The body of a `_Replica`: ``argv`` is [-c, read fd, write fd, payload, parent pid]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _child(_Duplex(int(argv[1]), int(argv[2])), argv[3], int(argv[4]))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _receive(replicas: list[_Replica], i: int, expect: str, timeout: float):
    """Replica ``i``'s next message, which must be ``expect``; its exit, its error or its silence
    for ``timeout`` seconds is a RuntimeError."""
    replica = replicas[i]

    def died():
        replica.join(timeout=5)
        when = "while starting" if expect == "ready" else "during the run"
        return RuntimeError(
            f"load-test process {i + 1} of {len(replicas)} (pid {replica.pid}) exited with "
            f"code {replica.exitcode} {when}, without a result"
        )

    # wakes on a message or on the process's exit (its end of the pipe closes: EOF)
    if not multiprocessing.connection.wait([replica.conn._r], timeout):
        if replica.exitcode is not None:
            raise died()
        raise RuntimeError(
            f"load-test process {i + 1} of {len(replicas)} sent nothing for {timeout:.0f} s"
        )
    try:
        kind, value = replica.conn.recv()
    except EOFError:  # its end of the pipe closed: the process is gone
        raise died() from None
    if kind == "error":
        raise RuntimeError(f"a load-test process failed:\n{value}")
    if kind != expect:
        raise RuntimeError(f"a load-test process sent {kind!r}, expected {expect!r}")
    return value


def _in_processes(
    runner, x, *, processes, clients, workers, requests, timeout_s, start_timeout_s, **kwargs
):
    """Runs `_closed_loop` in ``processes`` replica processes that share out clients, workers
    and requests, starts their timed runs together and merges the results."""
    replicas, payloads = [], []
    shares = zip(_split(clients, processes), _split(workers, processes), strict=True)
    finished = False
    try:
        for c, w in shares:
            share = None if requests is None else max(1, round(requests * c / clients))
            # the share (model, inputs) goes by file: in the start pipe, a replica that stalls
            # before reading it would block this process in its write, past any timeout
            fd, payload = tempfile.mkstemp(prefix="tfopt-load-test-", suffix=".pickle")
            payloads.append(payload)
            with os.fdopen(fd, "wb") as f:
                pickle.dump(
                    {"runner": runner, "x": x, "clients": c, "workers": w, "requests": share}
                    | kwargs,
                    f,
                )
            # a fresh interpreter (fork is unsafe once TensorFlow has started); it watches this
            # pid and exits when this process is gone, even killed
            replicas.append(_Replica(payload))
        for i in range(len(replicas)):
            _receive(replicas, i, "ready", start_timeout_s)
        for r in replicas:
            r.conn.send("go")
        outs = [_receive(replicas, i, "done", timeout_s) for i in range(len(replicas))]
        finished = True
    finally:
        for r in replicas:
            r.conn.close()  # a process still waiting for "go" sees EOF and exits
        for r in replicas:
            r.join(timeout=10 if finished else 1)  # a stalled replica is not waited for
            if r.exitcode is None:
                r.kill()
                r.join(timeout=5)
        for payload in payloads:
            os.unlink(payload)
    return {
        "latency_s": np.concatenate([o["latency_s"] for o in outs]),
        # the processes start together: the run lasts as long as the slowest one
        "seconds": max(o["seconds"] for o in outs),
        "batch_sizes": [s for o in outs for s in o["batch_sizes"]],
        "errors": sum(o["errors"] for o in outs),
        "first_error": next((o["first_error"] for o in outs if o["first_error"]), None),
    }


def load_test(
    runner,
    x,
    *,
    clients: int = 1,
    workers: int | None = None,
    processes: int | None = None,
    micro_batch: bool = False,
    max_batch: int = 32,
    max_wait_ms: float = 0.0,
    requests: int | None = None,
    duration_s: float = 3.0,
    warmup: bool = True,
    start_timeout_s: float = 120.0,
) -> dict:
    """Measures throughput and latency with ``clients`` concurrent closed-loop clients.

    Each client keeps one single-sample request in flight and sends its next one as soon as the
    answer arrives (Triton's ``perf_analyzer --concurrency-range`` measures the same way), cycling
    through ``x``. Clients are not OS threads: the answer's callback sends the next request, so the
    numbers show the serving pool rather than Python's thread switching. The run lasts
    ``duration_s`` seconds (or stops earlier after ``requests`` requests, when given). A request
    that fails is counted (``errors``) and its client goes on; only a level where every request
    fails raises.

    The pool's ``workers`` (one runner each) can be spread over ``processes`` replica processes,
    each serving its share of the clients, as a server deployed with one process per core behind a
    load balancer would: one Python process cannot run two tiny-model requests at once (the GIL),
    separate processes can. Only runners that can be rebuilt in another process (TFLite, ONNX) can
    use more than one; the others run in this process.

    Args:
        runner: a runner (see `tfopt.bench.runner_for`).
        x: inputs; request ``i`` is ``x[i % len(x)]``.
        clients: concurrent clients. Defaults to 1.
        workers: runners in the serving pool. Defaults to ``min(clients, os.cpu_count())``.
        processes: replica processes sharing the clients and workers. Defaults to ``workers`` for
            TFLite and ONNX runners and 1 for the others.
        micro_batch: group waiting requests into batches. Defaults to False.
        max_batch: the largest micro-batch. Defaults to 32.
        max_wait_ms: how long a micro-batch that is not full waits for more. Defaults to 0.0.
        requests: the most requests to send. Defaults to None (no cap: the run lasts
            ``duration_s``).
        duration_s: how long the level runs, in seconds. Defaults to 3.0.
        warmup: run every pooled runner once before timing. Defaults to True.
        start_timeout_s: how long a replica process may take to start (import, rebuild the
            runner, warm up) before the test gives up. A process that dies while starting is
            reported at once. Defaults to 120.0.

    Returns:
        A dict: clients, workers, processes, micro_batch, max_batch, max_wait_ms, requests
        (answered), errors (failed requests), first_error (its type and message, or None),
        seconds, throughput_rps (answered requests per second), latency_ms (p50/p90/p99/mean
        of the answered requests, including queueing),
        mean_batch_size (requests / batches; 1.0 without micro-batching) and request_batch_size
        (the size of the batch the average request was served in).

    Raises:
        ValueError: a bad count or duration, or ``processes > 1`` for a runner that cannot be
            rebuilt in another process.
        RuntimeError: every request failed, or a load-test process failed (with its traceback),
            died, or did not start within ``start_timeout_s``.

    Example:
        >>> load_test(runner_for("m.tflite"), x_test, clients=8)["throughput_rps"]
    """
    _check_load(clients, requests=requests, duration_s=duration_s, start_timeout_s=start_timeout_s)
    x = np.asarray(x, dtype="float32")
    workers, processes = _pool_shape(runner, clients, workers, processes)
    kwargs = {
        "micro_batch": micro_batch,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "duration_s": duration_s,
        "warmup": warmup,
    }
    if processes == 1:
        out = _closed_loop(runner, x, clients=clients, workers=workers, requests=requests, **kwargs)
    else:
        out = _in_processes(
            runner,
            x,
            processes=processes,
            clients=clients,
            workers=workers,
            requests=requests,
            timeout_s=60 + 2 * duration_s,
            start_timeout_s=start_timeout_s,
            **kwargs,
        )
    pool = {"clients": clients, "workers": workers, "processes": processes}
    return _load_summary(out, pool, micro_batch=micro_batch, max_batch=max_batch,
                         max_wait_ms=max_wait_ms)  # fmt: skip


def _check_load(clients, *, requests, duration_s, start_timeout_s) -> None:
    """Refuses a client count, request cap, duration or start timeout out of range."""
    if not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients must be an int >= 1. Received: clients={clients!r}")
    if not 0 < start_timeout_s < float("inf"):  # also refuses nan: the wait must end
        raise ValueError(
            f"start_timeout_s must be a finite number of seconds > 0. "
            f"Received: start_timeout_s={start_timeout_s!r}"
        )
    if (requests is not None and requests < 1) or not 0 < duration_s < float("inf"):
        raise ValueError(
            f"requests must be >= 1 and duration_s > 0. Received: requests={requests}, "
            f"duration_s={duration_s}"
        )


def _pool_shape(runner, clients: int, workers, processes) -> tuple[int, int]:
    """``(workers, processes)``: the defaults filled in (`load_test`), checked against
    ``clients`` and against what ``runner`` can do in another process."""
    workers = min(clients, os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1. Received: workers={workers!r}")
    if processes is None:
        processes = (
            min(workers, clients) if workers > 1 and getattr(runner, "rebuildable", False) else 1
        )
    elif not isinstance(processes, int) or not 1 <= processes <= min(workers, clients):
        raise ValueError(
            f"processes must be an int from 1 to min(workers, clients) = {min(workers, clients)}. "
            f"Received: processes={processes!r}"
        )
    elif processes > 1 and not getattr(runner, "rebuildable", False):
        raise ValueError(
            f"processes={processes} needs a runner that can be rebuilt in another process "
            f"(TFLite or ONNX); a {type(runner).__name__} serves from this process only"
        )
    return workers, processes


def _load_summary(out: dict, pool: dict, *, micro_batch, max_batch, max_wait_ms) -> dict:
    """`load_test`'s result from a closed loop's raw ``out`` (latencies, batch sizes, errors)."""
    ms = out["latency_s"] * 1e3
    sizes = out["batch_sizes"]
    seconds = out["seconds"]
    return {
        **pool,
        "micro_batch": bool(micro_batch),
        "max_batch": max_batch if micro_batch else 1,
        "max_wait_ms": max_wait_ms if micro_batch else 0.0,
        "requests": len(ms),
        "errors": out["errors"],
        "first_error": out["first_error"],
        "seconds": seconds,
        "throughput_rps": len(ms) / seconds if seconds > 0 else 0.0,
        "latency_ms": _percentiles(ms),
        "mean_batch_size": float(np.mean(sizes)) if micro_batch and sizes else 1.0,
        # the batch size the average request was served in (large batches weigh more)
        "request_batch_size": float(np.sum(np.square(sizes)) / np.sum(sizes))
        if micro_batch and sizes
        else 1.0,
    }
