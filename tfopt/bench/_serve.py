"""Serving under concurrency: a pool of runners, optional micro-batching, and a load generator."""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time

import numpy as np


def _percentiles(ms) -> dict[str, float]:
    if not len(ms):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(ms))}


def _bucket(n: int, max_batch: int) -> int:
    """The padded batch size for ``n`` requests: the next power of two, at most ``max_batch``."""
    return min(max_batch, 1 << (n - 1).bit_length())


class _Request:
    __slots__ = ("x", "done", "y", "error")

    def __init__(self, x):
        self.x = x
        self.done = threading.Event()
        self.y = None
        self.error = None


class Server:
    """Serves single-sample requests from many threads with a pool of ``workers`` runners.

    Without micro-batching, a request borrows a free runner from the pool, runs, and returns it.
    With micro-batching, requests go to a queue; each worker takes the first waiting request, then
    gathers more until it has ``max_batch`` or ``max_wait_ms`` passed, runs them as one batch
    (padded to a power of two, so each runner sees few distinct shapes) and hands each caller its
    row. ``batch_sizes`` records the real size of every batch run.

    Args:
        runner: a runner from `tfopt.bench.runner_for` (cloned for each worker).
        workers: the number of runners (interpreters / sessions) in the pool. Defaults to the
            number of CPUs.
        micro_batch: group waiting requests into batches. Defaults to False.
        max_batch: the largest batch when micro-batching. Defaults to 32.
        max_wait_ms: how long a worker waits for a batch to fill. Defaults to 1.0.

    Example:
        >>> with Server(runner_for("m.tflite"), workers=2, micro_batch=True) as server:
        ...     logits = server.submit(x[:1])
    """

    def __init__(self, runner, *, workers: int | None = None, micro_batch: bool = False,
                 max_batch: int = 32, max_wait_ms: float = 1.0):
        workers = workers or os.cpu_count() or 1
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1. Received: workers={workers!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1. Received: max_batch={max_batch!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0. Received: max_wait_ms={max_wait_ms!r}")
        self.workers = workers
        self.micro_batch = bool(micro_batch)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.batch_sizes: list[int] = []
        self._template = runner
        self._pool: queue.Queue = queue.Queue()
        self._requests: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        if self.micro_batch:
            # each worker keeps one runner per padded batch size, so no interpreter is resized
            self._worker_runners = [{} for _ in range(workers)]
            self._worker_runners[0][1] = runner
            for i in range(workers):
                t = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"tfopt-worker-{i}")
                t.start()
                self._threads.append(t)
        else:
            self._pool.put(runner)
            for _ in range(workers - 1):
                self._pool.put(runner.clone())

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops the workers (micro-batching) after the requests already queued."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._requests.put(None)
        for t in self._threads:
            t.join(timeout=10)

    def _runner(self, worker: int, size: int):
        runners = self._worker_runners[worker]
        if size not in runners:
            runners[size] = self._template.clone()
        return runners[size]

    def warmup(self) -> None:
        """Creates and runs every runner once (each padded batch size when micro-batching)."""
        x = np.zeros((1, *self._template.input_shape), dtype="float32")
        if self.micro_batch:
            sizes = sorted({_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
            for w in range(self.workers):
                for size in sizes:
                    self._runner(w, size).invoke(np.repeat(x, size, axis=0))
        else:
            runners = [self._pool.get() for _ in range(self.workers)]
            for r in runners:
                r.invoke(x)
                self._pool.put(r)

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Serves one request ``x`` (shape ``(1, ...)``), blocking until its output is ready."""
        if not self.micro_batch:
            runner = self._pool.get()
            try:
                return runner.invoke(x)
            finally:
                self._pool.put(runner)
        if self._closed:
            raise RuntimeError("the Server is closed")
        req = _Request(x)
        self._requests.put(req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.y

    def _work(self, worker: int) -> None:
        q = self._requests
        while True:
            first = q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    remaining = deadline - time.perf_counter()
                    req = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if req is None:
                    stop = True
                    break
                batch.append(req)
            self._run(worker, batch)
            if stop:
                return

    def _run(self, worker: int, batch: list[_Request]) -> None:
        n = len(batch)
        size = _bucket(n, self.max_batch)
        try:
            x = np.concatenate([r.x for r in batch])
            if size > n:
                x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
            y = self._runner(worker, size).invoke(x)
            self.batch_sizes.append(n)
            for i, r in enumerate(batch):
                r.y = y[i : i + 1]
        except Exception as e:  # hand the error to every caller rather than hang them
            for r in batch:
                r.error = e
        for r in batch:
            r.done.set()


def load_test(runner, x, *, clients: int = 1, workers: int | None = None,
              micro_batch: bool = False, max_batch: int = 32, max_wait_ms: float = 1.0,
              requests: int = 2000, duration_s: float = 3.0, warmup: bool = True) -> dict:
    """Measures throughput and latency with ``clients`` threads sending single-sample requests.

    Each client sends a request, waits for the answer and sends the next (closed loop), cycling
    through ``x``. The run stops after ``requests`` answers or ``duration_s`` seconds, whichever
    comes first.

    Args:
        runner: a runner (see `tfopt.bench.runner_for`).
        x: inputs; request ``i`` is ``x[i % len(x)]``.
        clients: concurrent client threads. Defaults to 1.
        workers: runners in the serving pool. Defaults to ``min(clients, os.cpu_count())``.
        micro_batch: group waiting requests into batches. Defaults to False.
        max_batch: the largest micro-batch. Defaults to 32.
        max_wait_ms: how long a micro-batch waits to fill. Defaults to 1.0.
        requests: the most requests to send. Defaults to 2000.
        duration_s: the longest time to run. Defaults to 3.0.
        warmup: run every pooled runner once before timing. Defaults to True.

    Returns:
        A dict: clients, workers, micro_batch, max_batch, max_wait_ms, requests (answered),
        seconds, throughput_rps, latency_ms (p50/p90/p99/mean, including queueing) and
        mean_batch_size (1.0 without micro-batching).

    Raises:
        ValueError: a bad count or duration.

    Example:
        >>> load_test(runner_for("m.tflite"), x_test, clients=8)["throughput_rps"]
    """
    if not isinstance(clients, int) or clients < 1:
        raise ValueError(f"clients must be an int >= 1. Received: clients={clients!r}")
    if requests < 1 or duration_s <= 0:
        raise ValueError(
            f"requests must be >= 1 and duration_s > 0. Received: requests={requests}, "
            f"duration_s={duration_s}"
        )
    x = np.asarray(x, dtype="float32")
    workers = workers or min(clients, os.cpu_count() or 1)
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    with Server(runner, workers=workers, micro_batch=micro_batch, max_batch=max_batch,
                max_wait_ms=max_wait_ms) as server:
        if warmup:
            server.warmup()
        state = {"deadline": 0.0}

        def client(k: int) -> None:
            out = latencies[k]
            start.wait()
            deadline = state["deadline"]
            try:
                while True:
                    i = next(counter)
                    if i >= requests:
                        return
                    t = time.perf_counter()
                    if t > deadline:
                        return
                    server.submit(x[i % len(x) : i % len(x) + 1])
                    out.append((time.perf_counter() - t) * 1e3)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        state["deadline"] = t0 + duration_s
        start.wait()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        sizes = list(server.batch_sizes)
    if errors:
        raise errors[0]
    ms = np.concatenate([np.asarray(v) for v in latencies]) if any(latencies) else np.array([])
    return {
        "clients": clients,
        "workers": workers,
        "micro_batch": bool(micro_batch),
        "max_batch": max_batch if micro_batch else 1,
        "max_wait_ms": max_wait_ms if micro_batch else 0.0,
        "requests": len(ms),
        "seconds": seconds,
        "throughput_rps": len(ms) / seconds if seconds > 0 else 0.0,
        "latency_ms": _percentiles(ms),
        "mean_batch_size": float(np.mean(sizes)) if micro_batch and sizes else 1.0,
    }
