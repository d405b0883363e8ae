"""`make_strategy`: the ``tf.distribute`` strategy a config's ``train.strategy`` names."""

from __future__ import annotations

import contextlib
import json
import os

STRATEGIES = ("none", "mirrored", "multi_worker")


def _tf_config() -> dict:
    """The parsed ``TF_CONFIG`` of a multi-worker run; ValueError (one line) when it can't work."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable (the cluster's "
            'workers and this task), e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\'; use strategy=\'mirrored\' '
            "on one machine"
        )
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({e.msg}). Received: TF_CONFIG={raw!r}"
        ) from None
    cluster = conf.get("cluster", {}) if isinstance(conf, dict) else {}
    task = conf.get("task", {}) if isinstance(conf, dict) else {}
    workers = cluster.get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG must list cluster.worker addresses. Received: TF_CONFIG={raw}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(
            f"TF_CONFIG task must name one of the cluster's tasks (type in {sorted(cluster)}, "
            f"index in range). Received: task={task}"
        )
    return conf


def check_strategy(name: str) -> None:
    """Checks that this machine can provide the strategy ``name``, without starting TensorFlow.

    Raises:
        ValueError: an unknown name (with the allowed ones), or ``multi_worker`` without a usable
            ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}. Received: strategy={name!r}")
    if name == "multi_worker":
        _tf_config()


def wait_for_peers(conf: dict, timeout: float) -> None:
    """Waits until every other task of ``TF_CONFIG``'s cluster listens, for at most ``timeout``
    seconds, before TensorFlow is asked to connect them (it waits for a missing peer forever and
    holds the GIL while it does, so no timer in this process could end that wait).

    This task listens on its own address meanwhile (TensorFlow's server takes the port over
    afterwards), so that its peers, running the same wait, see it.

    Raises:
        ValueError: one line naming the tasks that did not come within ``timeout``.
    """
    import socket
    import threading
    import time

    cluster, task = conf["cluster"], conf["task"]
    mine = cluster[task["type"]][task["index"]]
    peers = {
        f"{kind} {i} at {address}": address
        for kind, addresses in cluster.items()
        if kind in ("chief", "worker")
        for i, address in enumerate(addresses)
        if address != mine
    }
    done = threading.Event()
    listener = _listen(mine, done)
    deadline = time.monotonic() + timeout
    try:
        while peers:
            for name, address in list(peers.items()):
                host, _, port = address.rpartition(":")
                try:
                    socket.create_connection((host, int(port)), timeout=1.0).close()
                    del peers[name]
                except OSError:
                    pass
            if peers and time.monotonic() > deadline:
                raise ValueError(
                    f"strategy='multi_worker': {', '.join(peers)} did not come within "
                    f"{timeout:g} s (train.peer_timeout); start every task of TF_CONFIG's "
                    "cluster, or check its addresses"
                )
            if peers:
                time.sleep(0.2)
    finally:
        done.set()
        if listener is not None:
            listener.join()


def _listen(address: str, done):
    """Accepts (and drops) connections on ``address``'s port until ``done`` is set; returns the
    thread, or None when the port cannot be bound here."""
    import socket
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", int(address.rpartition(":")[2])))
    except (OSError, ValueError):
        sock.close()
        return None
    sock.listen(16)
    sock.settimeout(0.1)

    def accept():
        with sock:
            while not done.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:  # the timeout: look at `done` again
                    continue
                conn.settimeout(1.0)
                with conn, contextlib.suppress(OSError):
                    conn.recv(1)  # the peer closes first: no TIME_WAIT left on this port

    thread = threading.Thread(target=accept, daemon=True, name="tfopt-peer-listener")
    thread.start()
    return thread


def make_strategy(name: str = "none", *, peer_timeout: float = 300.0):
    """Returns the ``tf.distribute`` strategy ``name`` (None for ``"none"``).

    ``"mirrored"``: `tf.distribute.MirroredStrategy` over this machine's devices (every GPU, else
    every logical CPU device). ``"multi_worker"``: `tf.distribute.MultiWorkerMirroredStrategy` over
    the workers in ``TF_CONFIG``; start one process per worker with the same program, each with its
    own ``task.index`` (worker 0 is the chief). Create the strategy before any other TensorFlow
    work in the process (TensorFlow configures its collective ops once). Build and compile models
    inside ``strategy.scope()``; ``model.fit`` then splits each batch over the replicas
    (``batch_size`` is the global batch).

    Args:
        name: ``"none"``, ``"mirrored"`` or ``"multi_worker"``. Defaults to "none".
        peer_timeout: seconds a multi-worker task waits for the other tasks of ``TF_CONFIG``
            to listen (`wait_for_peers`), and then again for them to join TensorFlow's cluster;
            past the second wait the process ends with SIGALRM (TensorFlow's wait cannot be
            interrupted; the `tfopt` command prints one line). Defaults to 300.0.

    Returns:
        A `tf.distribute.Strategy`, or None for ``"none"``.

    Raises:
        ValueError: see `check_strategy`; a ``peer_timeout`` that is not a finite number > 0; a
            peer that did not come within it (one line).

    Example:
        >>> strategy = tfopt.train.make_strategy("mirrored")
        >>> with strategy.scope():
        ...     model = tfopt.models.get("mnist1d_cnn")
        ...     model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    """
    check_strategy(name)
    ok = isinstance(peer_timeout, int | float) and not isinstance(peer_timeout, bool)
    if not (ok and 0 < peer_timeout < float("inf")):
        raise ValueError(
            f"peer_timeout must be a finite number of seconds > 0. Received: {peer_timeout!r}"
        )
    if name == "none":
        return None
    if name == "multi_worker":
        wait_for_peers(_tf_config(), peer_timeout)
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    return _join_cluster(tf, peer_timeout)


def _join_cluster(tf, timeout: float):
    """The multi-worker strategy, or the end of this process after ``timeout`` seconds: a peer
    that listens but never joins (it died after `wait_for_peers` saw it, or is not TensorFlow)
    leaves TensorFlow waiting for it forever, holding the GIL and deaf to SIGTERM."""
    from tfopt._guard import deadline

    reason = (
        f"a task of TF_CONFIG's cluster listens but did not join within {timeout:g} s "
        "(train.peer_timeout); start every task of the cluster with the same program, or check "
        "its addresses"
    )
    with deadline(timeout, "the multi_worker strategy joining TF_CONFIG's cluster", reason):
        return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files: always, except a multi-worker non-chief."""
    resolver = getattr(getattr(strategy, "extended", None), "_cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def scope(strategy):
    """``strategy.scope()``, or a no-op context for None."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def prepare_fit(model) -> None:
    """Lets ``model.fit`` / ``evaluate`` run under a multi-worker strategy (Keras 3 + TF 2.21).

    Keras 3's TensorFlow trainer reduces a multi-worker step's logs with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalar logs ("Invalid reduction
    dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388), and reduces a data
    batch across workers just to read its shapes. On this model only (its instance, not the
    class): the train and test steps return their scalar logs as 1-element vectors (the reduction
    then averages them; the metric values are already global) and the symbolic build reads the
    local replica's batch. Does nothing outside a multi-worker strategy, and once per model.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None or not _is_multi_worker(strategy) or getattr(model, "_tfopt_mw", False):
        return
    import tensorflow as tf
    from keras import tree

    def rank1(step):
        def wrapped(data):
            logs = step(data)
            return tree.map_structure(
                lambda v: tf.reshape(v, [1]) if len(getattr(v, "shape", ())) == 0 else v, logs
            )

        return wrapped

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model.train_step = rank1(model.train_step)
    model.test_step = rank1(model.test_step)
    model._maybe_symbolic_build = symbolic_build
    model._tfopt_mw = True
