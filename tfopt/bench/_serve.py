"""Serving under concurrency: a pool of runners, optional micro-batching, and a load generator."""

from __future__ import annotations

import collections
import itertools
import os
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
    """One request. ``signal`` is a lock held from creation: releasing it wakes the caller (a raw
    lock is several times cheaper than a `threading.Event`, which matters for tiny models)."""

    __slots__ = ("x", "signal", "y", "error", "done", "slot")

    def __init__(self, x):
        self.x = x
        self.signal = threading.Lock()
        self.signal.acquire()
        self.y = None
        self.error = None
        self.done = False
        self.slot = None  # set when this request's thread is handed a runner to serve with


class Server:
    """Serves single-sample requests from many threads with a pool of ``workers`` runners.

    There are no dispatcher threads: the calling threads serve each other (leader/follower). A
    request that finds a free runner runs at once on the caller's thread; otherwise it waits in a
    queue. A thread holding a runner runs its own request together with up to ``max_batch - 1``
    queued ones as one batch (with micro-batching; else ``max_batch`` is 1), hands each caller its
    row, and passes the runner on to the oldest still-waiting request, whose thread serves next. A
    lone client therefore pays no hand-off, and under load one invocation serves a whole batch.
    With ``max_wait_ms > 0`` a batch that is not full waits up to that long for more requests.
    Batches are padded to a power of two and each pool slot keeps one runner per padded size, so
    no interpreter is resized while serving. ``batch_sizes`` records every batch's real size.

    Args:
        runner: a runner from `tfopt.bench.runner_for` (cloned for each slot and batch size).
        workers: the number of runners (interpreters / sessions) serving at the same time.
            Defaults to the number of CPUs.
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
        self._slots: list[dict[int, object]] = [{} for _ in range(workers)]
        self._slots[0][1] = runner
        self._free = list(range(workers))
        self._pending: collections.deque[_Request] = collections.deque()
        self._cv = threading.Condition()
        self._waiting_leaders = 0
        self._closed = False

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Refuses new requests (requests already queued are still served)."""
        self._closed = True

    def _runner(self, slot: int, size: int):
        runners = self._slots[slot]
        if size not in runners:
            runners[size] = self._template.clone()
        return runners[size]

    def warmup(self) -> None:
        """Creates and runs every runner once (each padded batch size when micro-batching)."""
        x = np.zeros((1, *self._template.input_shape), dtype="float32")
        sizes = sorted({_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        for slot in range(self.workers):
            for size in sizes:
                self._runner(slot, size).invoke(np.repeat(x, size, axis=0))

    def submit(self, x: np.ndarray) -> np.ndarray:
        """Serves one request ``x`` (shape ``(1, ...)``), blocking until its output is ready."""
        if self._closed:
            raise RuntimeError("the Server is closed")
        req = _Request(x)
        with self._cv:
            if self._free:
                req.slot = self._free.pop()
            else:
                self._pending.append(req)
                if self._waiting_leaders:
                    self._cv.notify()
        if req.slot is None:
            req.signal.acquire()  # blocks until answered, or handed a runner to serve with
        if not req.done:
            self._serve(req)
        if req.error is not None:
            raise req.error
        return req.y

    def _serve(self, req: _Request) -> None:
        slot, batch = req.slot, [req]
        with self._cv:
            if self.max_wait and len(self._pending) < self.max_batch - 1:
                self._waiting_leaders += 1
                self._cv.wait_for(lambda: len(self._pending) >= self.max_batch - 1, self.max_wait)
                self._waiting_leaders -= 1
            while self._pending and len(batch) < self.max_batch:
                batch.append(self._pending.popleft())
        n = len(batch)
        size = _bucket(n, self.max_batch)
        try:
            x = np.concatenate([r.x for r in batch]) if n > 1 else batch[0].x
            if size > n:
                x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
            y = self._runner(slot, size).invoke(x)
            for i, r in enumerate(batch):
                r.y = y[i : i + 1]
        except Exception as e:  # every caller in the batch gets the error rather than hangs
            for r in batch:
                r.error = e
        self.batch_sizes.append(n)
        for r in batch:
            r.done = True
        with self._cv:
            nxt = self._pending.popleft() if self._pending else None
            if nxt is None:
                self._free.append(slot)
            else:
                nxt.slot = slot
        for r in batch[1:]:
            r.signal.release()
        if nxt is not None:
            nxt.signal.release()


def load_test(
    runner,
    x,
    *,
    clients: int = 1,
    workers: int | None = None,
    micro_batch: bool = False,
    max_batch: int = 32,
    max_wait_ms: float = 0.0,
    requests: int = 2000,
    duration_s: float = 3.0,
    warmup: bool = True,
) -> dict:
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
        max_wait_ms: how long a micro-batch that is not full waits for more. Defaults to 0.0.
        requests: the most requests to send. Defaults to 2000.
        duration_s: the longest time to run. Defaults to 3.0.
        warmup: run every pooled runner once before timing. Defaults to True.

    Returns:
        A dict: clients, workers, micro_batch, max_batch, max_wait_ms, requests (answered),
        seconds, throughput_rps, latency_ms (p50/p90/p99/mean, including queueing) and
        mean_batch_size (requests / batches; 1.0 without micro-batching) and request_batch_size
        (the size of the batch the average request was served in).

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
    workers = min(clients, os.cpu_count() or 1) if workers is None else workers
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    with Server(
        runner,
        workers=workers,
        micro_batch=micro_batch,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    ) as server:
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
        # the batch size the average request was served in (large batches weigh more)
        "request_batch_size": float(np.sum(np.square(sizes)) / np.sum(sizes))
        if micro_batch and sizes
        else 1.0,
    }
