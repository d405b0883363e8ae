"""Distributed search on KerasTuner's own engine: a chief serves the oracle over gRPC, workers run
trials (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``).

One implementation for `tfopt tune` and `tfopt auto`: `launch` starts a chief and N workers of
either command on this machine over loopback, as child processes that die with their parent
(Linux ``PR_SET_PDEATHSIG``; elsewhere they are terminated when the parent exits normally or on a
signal). `join` turns this process into a worker of a chief elsewhere, after checking within a
timeout that the chief answers. `serve` is the chief's side (KerasTuner's `OracleServicer`), and
`pace_idle` keeps a worker's tuner from polling a busy chief in a tight loop.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time

from tfopt._guard import watch_parent
from tfopt.errors import TfoptError

_logger = logging.getLogger(__name__)


class ChiefUnreachable(TfoptError):
    """A worker could not reach the search chief."""


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``.

    Raises:
        ValueError: not ``HOST:PORT`` with a port in 1..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--chief must be HOST:PORT (e.g. 10.0.0.5:8470). Received: {text!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_timeout(value, name: str = "--connect-timeout") -> float:
    """``value`` as seconds when it is a finite number > 0 (a wait that can end), else ValueError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be a finite number of seconds > 0, so that the wait ends. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_reachable(host: str, port: int, timeout: float = 10.0) -> None:
    """Waits up to ``timeout`` seconds for the chief's gRPC server at ``host:port``.

    Raises:
        ValueError: ``timeout`` is not a finite number > 0.
        ChiefUnreachable: no answer within the timeout.
    """
    import grpc

    timeout = check_timeout(timeout)

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ChiefUnreachable(
            f"cannot reach the search chief at {host}:{port} within {timeout:g} s (start it with "
            "`tfopt tune --workers N` or `tfopt auto --workers N` on that machine, and check the "
            "address and firewall)"
        ) from None
    finally:
        channel.close()


def join_environment(host: str, port: int, tuner_id: str | None = None) -> dict[str, str]:
    """The KerasTuner environment of a worker of the chief at ``host:port``."""
    return {
        "KERASTUNER_ORACLE_IP": host,
        "KERASTUNER_ORACLE_PORT": str(port),
        "KERASTUNER_TUNER_ID": tuner_id or f"tuner-{socket.gethostname()}-{os.getpid()}",
    }


def join(address: str, *, timeout: float = 10.0) -> dict[str, str]:
    """Makes this process a worker of the chief at ``address`` (``HOST:PORT``): checks that it
    answers within ``timeout`` seconds, then sets KerasTuner's environment (before any tuner is
    built). Returns that environment.

    Raises:
        ValueError: ``address`` is not ``HOST:PORT``.
        ChiefUnreachable: no answer within the timeout.
    """
    host, port = parse_address(address)
    check_reachable(host, port, timeout=timeout)
    env = join_environment(host, port, os.environ.get("KERASTUNER_TUNER_ID"))
    os.environ.update(env)
    return env


def pace_idle(tuner, pause: float = 0.5) -> None:
    """A worker's tuner (its oracle is KerasTuner's gRPC client) waits ``pause`` seconds after
    each IDLE answer of the chief (all trials handed out, some still running) instead of asking
    again at once."""
    import keras_tuner

    if not hasattr(tuner.oracle, "stub"):
        return
    ask = tuner.oracle.create_trial

    def create_trial(tuner_id):
        trial = ask(tuner_id)
        if trial.status == keras_tuner.engine.trial.TrialStatus.IDLE:
            time.sleep(pause)
        return trial

    tuner.oracle.create_trial = create_trial


def serve(tuner, host: str, port: int, *, poll: float = 0.25) -> None:
    """Serves ``tuner``'s oracle to workers over gRPC (KerasTuner's `OracleServicer`) until every
    worker got its stop and no trial runs: the chief of a distributed search."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"the search chief cannot listen on {host}:{port} (port in use?)")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(poll)
    finally:
        server.stop(1)
        # KerasTuner saves the oracle before it pops the last ended trial from the ongoing ones;
        # save again so that a resumed search does not re-run it
        tuner.save()


def _die_with_parent(parent: int):
    def preexec():  # runs in the child between fork and exec
        os.setsid()  # its own process group: a Ctrl-C of the terminal goes to the parent only
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:  # not Linux: the parent's finally/signal handlers still clean up
            pass
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    import tfopt

    # the children import the same tfopt as this process, wherever it was imported from
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfopt.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": path, **env},
        preexec_fn=_die_with_parent(os.getpid()) if os.name == "posix" else None,
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# what one TensorFlow process of a search may need (see max_workers): `tfopt tune --max-trials 1`
# of a small 1-D CNN peaked at 768 MiB resident (`/usr/bin/time -v`), so 1 GiB leaves some room
PROCESS_MEMORY = 1 << 30


def _available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux ``MemAvailable``), None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_workers() -> tuple[int, str]:
    """The most local workers this machine can run, and why: one per core, and a chief plus the
    workers within the available memory at `PROCESS_MEMORY` each."""
    cores, memory = _cores(), _available_memory()
    cap, why = cores, f"{cores} cores"
    if memory is not None:
        cap = max(1, min(cap, memory // PROCESS_MEMORY - 1))
        why += f", {memory / (1 << 30):.1f} GiB of memory available at about 1 GiB per process"
    return cap, why


def check_workers(workers) -> int:
    """``workers`` when it is a count this machine can run (0: no distributed search).

    Raises:
        ValueError: a negative count, or more than `max_workers` (each is a TensorFlow process).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"--workers must be an int >= 0. Received: --workers={workers!r}")
    cap, why = max_workers()
    if workers > cap:
        raise ValueError(
            f"--workers must be at most {cap} on this machine ({why}): each worker is a "
            f"TensorFlow process. Received: --workers={workers}"
        )
    return workers


def thread_environment(workers: int) -> dict[str, str]:
    """TensorFlow's thread pools for one of ``workers`` local workers: an equal share of the cores.

    Each TensorFlow process otherwise sizes its pools to every core, and N workers on one machine
    oversubscribe it. With a share each, 2 workers on 2 cores search 1.76x the trials per hour of
    one (benchmarks/training_agent.py).
    A value the user set (``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``) is kept.
    """
    share = str(max(1, _cores() // workers))
    names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    return {name: os.environ.get(name, share) for name in names}


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        if p.poll() is None:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def launch(
    args: list[str],
    *,
    workers: int,
    command: str = "tune",
    start_timeout: float = 300.0,
) -> int:
    """Runs a distributed search on this machine: a chief and ``workers`` workers over loopback.

    Each child runs ``python -m tfopt <command> <args>`` with ``--serve 127.0.0.1:PORT`` (the
    chief) or ``--chief 127.0.0.1:PORT`` and ``KERASTUNER_TUNER_ID=tuner<i>`` (the workers). The
    workers share the machine's cores (`thread_environment`).

    Args:
        args: the arguments shared by every process (config, overrides, --out, ...).
        workers: the number of worker processes (>= 1).
        command: the `tfopt` subcommand, ``"tune"`` or ``"auto"``. Defaults to "tune".
        start_timeout: seconds to wait for the chief to listen. Defaults to 300.

    Returns:
        0 when every worker finished cleanly, else the first non-zero exit code.

    The launcher dies with its parent as its children die with it: when this process is
    orphaned (its parent killed, e.g. a ``timeout`` that was itself killed), it stops the chief
    and the workers and ends as on SIGTERM.

    Raises:
        ValueError: ``workers`` not in 1..`max_workers`, or a ``start_timeout`` that never ends.
        TfoptError: the chief exited or did not listen in time.
    """
    if check_workers(workers) < 1:
        raise ValueError(f"workers must be >= 1. Received: workers={workers}")
    start_timeout = check_timeout(start_timeout, "start_timeout")
    host, port = "127.0.0.1", free_port()
    if command not in ("tune", "auto"):
        raise ValueError(f"command must be 'tune' or 'auto'. Received: command={command!r}")
    base = [sys.executable, "-m", "tfopt", command, *args]
    procs: list[subprocess.Popen] = []
    previous = {}

    def on_signal(signum, frame):
        _stop(procs, grace=2.0)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    orphaned = watch_parent(lambda: _orphaned(procs))
    try:
        chief = _spawn([*base, "--serve", f"{host}:{port}"], {"KERASTUNER_TUNER_ID": "chief"})
        procs.append(chief)
        _logger.info(f"[{command}] chief pid {chief.pid} serving the oracle on {host}:{port}")
        deadline = time.monotonic() + start_timeout
        while True:
            if chief.poll() is not None:
                raise TfoptError(f"the search chief exited with code {chief.returncode}")
            try:
                check_reachable(host, port, timeout=1.0)
                break
            except ChiefUnreachable:
                if time.monotonic() > deadline:
                    raise TfoptError(
                        f"the search chief did not listen on {host}:{port} within "
                        f"{start_timeout:g} s"
                    ) from None
        for i in range(workers):
            env = {**join_environment(host, port, f"tuner{i}"), **thread_environment(workers)}
            w = _spawn([*base, "--chief", f"{host}:{port}"], env)
            procs.append(w)
            _logger.info(f"[{command}] worker tuner{i} pid {w.pid}")
        workers_ = procs[1:]
        while any(w.poll() is None for w in workers_):
            if chief.poll() is not None and chief.returncode != 0:
                # workers would wait for a dead chief (KerasTuner's client retries for an hour)
                raise TfoptError(f"the search chief exited with code {chief.returncode}")
            time.sleep(0.5)
        codes = [w.returncode for w in workers_]
        try:
            chief.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _logger.info(
                f"[{command}] the chief did not stop within 60 s after the workers; stopping it"
            )
        return next((c for c in codes if c), 0)
    finally:
        orphaned.set()  # the watch ends with the launch
        _stop(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _orphaned(procs: list[subprocess.Popen]) -> None:
    """The launcher's parent is gone: stop the children, then end as on SIGTERM (the launch's
    handler raises KeyboardInterrupt in the main thread; without it, SIGTERM ends the process)."""
    _stop(procs, grace=2.0)
    os.kill(os.getpid(), signal.SIGTERM)
