"""One `tfopt run`: data -> model -> baseline fit -> recipe steps -> export -> bench -> report."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tfopt import _formats as formats
from tfopt import _rundir
from tfopt._backend import import_keras
from tfopt._report import render_value
from tfopt._steps import StepContext, preflight, run_steps
from tfopt.config import RunConfig
from tfopt.data import Dataset
from tfopt.data._checks import check_attack_radius, check_model_data

keras = import_keras()


_logger = logging.getLogger(__name__)


def _log(msg: str) -> None:
    _logger.info("[tfopt] %s", msg)


def _unique_dir(path: Path) -> Path:
    """``path`` if it is free, else ``path-2``, ``path-3``, ...: a run never overwrites another."""
    if not path.exists() or not any(path.iterdir()):
        return path
    n = 2
    while (candidate := path.with_name(f"{path.name}-{n}")).exists():
        n += 1
    return candidate


def run_directory(cfg: RunConfig, out_dir=None, *, overwrite: bool = False) -> Path:
    """The run's directory, created and marked (`tfopt._rundir`).

    ``out_dir`` (default ``runs/<name>``) when it is new or empty; with ``overwrite``, an earlier
    tfopt run there is replaced; without, the run goes to ``<out_dir>-2``, ``-3``, ... A file, or a
    directory that tfopt did not create, is refused (never deleted).
    """
    base = Path(out_dir) if out_dir else Path("runs") / cfg.name
    if overwrite or base.is_file():
        return _rundir.prepare(base, overwrite=overwrite, by="tfopt run")
    if out_dir and base.is_dir() and any(base.iterdir()) and not _rundir.is_owned(base):
        return _rundir.prepare(base)  # raises: not a tfopt run directory
    return _rundir.prepare(_unique_dir(base), by="tfopt run")


def run_identity(cfg: RunConfig) -> dict:
    """What a run directory records about its inputs: the model and data (files by size and
    sha256, `tfopt._rundir.config_inputs`) and every setting (the validated config)."""
    return {**_rundir.config_inputs(cfg), "config": cfg.model_dump(serialize_as_any=True)}


def _build_model(cfg: RunConfig, data: Dataset) -> keras.Model:
    from tfopt import models

    if cfg.model.path:
        return models.load(cfg.model.path)
    return models.get(
        cfg.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        **cfg.model.options,
    )


def build_baseline(cfg: RunConfig, data: Dataset, ctx: StepContext) -> keras.Model:
    """The config's float model, untrained: the zoo model or the user's file, with its transfer
    head (``transfer:``), built in ``ctx``'s strategy scope. `tfopt run` and `tfopt auto` build
    their baselines with it.

    Raises:
        DataError: ``data`` does not fit the model (a missing channel axis, too few outputs).
        ConfigError: a transfer the model does not allow.
    """
    with ctx.scope():
        model = _build_model(cfg, data)
        if cfg.transfer is not None:
            model = _transfer_model(cfg, model, data, ctx)
    check_model_data(model, data, what=cfg.data.name)
    return model


def _strategy(cfg: RunConfig):
    from tfopt.errors import ConfigError
    from tfopt.train import make_strategy

    try:
        return make_strategy(cfg.train.strategy, peer_timeout=cfg.train.peer_timeout)
    except ValueError as e:
        raise ConfigError(f"train.strategy: {e}") from None


def _is_chief(strategy) -> bool:
    from tfopt.train import is_chief

    return is_chief(strategy)


def _transfer_model(cfg: RunConfig, model, data: Dataset, ctx: StepContext):
    from tfopt.errors import ConfigError
    from tfopt.train import transfer
    from tfopt.train._transfer import check_trains

    t = cfg.transfer
    try:
        new = transfer(
            model, num_classes=data.num_classes, freeze_until=t.freeze_until, head=t.head
        )
        check_trains(new, epochs=cfg.train.epochs, unfreeze_at_epoch=t.unfreeze_at_epoch)
    except ValueError as e:
        raise ConfigError(f"transfer: {e}") from None
    ctx.log(
        f"      transfer: head {t.head}, {len(new.transfer_frozen)} layers frozen"
        + (f" until epoch {t.unfreeze_at_epoch}" if t.unfreeze_at_epoch is not None else "")
    )
    return new


def fit_baseline(cfg: RunConfig, model, ctx: StepContext) -> None:
    """Trains the baseline with the ``train:`` options (frozen layers first when the config
    transfers a model), in ``ctx``'s strategy scope; with 0 epochs it only compiles it.
    `tfopt run` and `tfopt auto` train their baselines with it."""
    with ctx.scope():
        _fit_baseline(cfg, model, ctx)


def _fit_baseline(cfg: RunConfig, model, ctx: StepContext) -> None:
    from tfopt.train import unfreeze

    if not cfg.train.epochs:
        ctx.compile(model, cfg.train.learning_rate)
        return
    from tfopt._training import fit as train
    from tfopt._training import fit_transfer

    tb = keras.callbacks.TensorBoard(str(ctx.log_dir("baseline")), write_graph=False)
    if cfg.transfer is None:
        train(model, cfg.train, ctx.data, seed=cfg.seed, callbacks=[tb], verbose=ctx.verbose)
        return
    # the train: options in both phases, as a `tfopt tune` transfer trial trains
    fit_transfer(
        model,
        cfg.train,
        ctx.data,
        unfreeze_at_epoch=cfg.transfer.unfreeze_at_epoch,
        seed=cfg.seed,
        callbacks=[tb],
        verbose=ctx.verbose,
    )
    # the recipe steps fine-tune every layer
    unfreeze(model)
    ctx.compile(model, cfg.train.learning_rate)


def check(cfg: RunConfig) -> None:
    """What `tfopt run --check` does after validating the config: loads the data, builds the
    model (and its transfer head) and runs the steps' preflight against them, so anything `run`
    would reject before training is rejected here. Nothing is trained or written."""
    from tfopt import data as data_mod

    keras.utils.set_random_seed(cfg.seed)
    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    ctx = StepContext(
        data=data, run_dir=Path("."), batch_size=cfg.train.batch_size, verbose=0, quiet=True
    )
    model = build_baseline(cfg, data, ctx)
    preflight(cfg.steps, model, ctx)


def run(
    cfg: RunConfig, *, out_dir=None, verbose: int | None = None, overwrite: bool = False
) -> dict:
    """Runs a validated config end to end and returns the report (also written to the run dir).

    The run directory is `run_directory` (``out_dir``, default ``runs/<name>``); ``overwrite``
    replaces an earlier tfopt run there. Raises `tfopt.errors.OutputDirError` for a path that
    cannot be used.
    """
    started = time.time()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    # first: a multi-worker strategy configures TensorFlow's collectives before any other TF work
    strategy = _strategy(cfg)
    keras.utils.set_random_seed(cfg.seed)
    if not _is_chief(strategy):  # a multi-worker run's other workers train with the chief and
        import tempfile  # write their copies of the files elsewhere

        run_dir = Path(tempfile.mkdtemp(prefix=f"tfopt-{cfg.name}-worker-"))
        return _run_in(cfg, run_dir, strategy, verbose=verbose, started=started)
    run_dir = run_directory(cfg, out_dir, overwrite=overwrite)
    with (
        _rundir.lock(run_dir, command="tfopt run"),  # one process per run directory
        _rundir.discard_if_refused(run_dir, written=("config.json",)),  # e.g. bad data
    ):
        _rundir.claim_identity(run_dir, "run", run_identity(cfg))
        return _run_in(cfg, run_dir, strategy, verbose=verbose, started=started)


def _run_in(cfg: RunConfig, run_dir: Path, strategy, *, verbose: int, started: float) -> dict:
    """The body of `run` in its (claimed) run directory."""
    from tfopt import data as data_mod
    from tfopt._report import write_report

    _rundir.write_json(run_dir / "config.json", cfg.model_dump(serialize_as_any=True))
    total = 4 + len(cfg.steps)
    _log(f"[1/{total}] data: {cfg.data.name}")
    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    _log(f"      {data}")
    ctx = StepContext(
        data=data, run_dir=run_dir, batch_size=cfg.train.batch_size, verbose=verbose, seed=cfg.seed
    )
    ctx.strategy = strategy
    model = build_baseline(cfg, data, ctx)
    check_attack_radius(cfg.bench.robust_epsilon, data.x_test, arg="bench.robust_epsilon")
    preflight(cfg.steps, model, ctx)  # every step's settings against this model and data
    _log(
        f"[2/{total}] baseline: {model.name} ({model.count_params():,} params), "
        f"{cfg.train.epochs} epochs -> {run_dir / 'baseline.keras'}"
    )
    fit_baseline(cfg, model, ctx)
    _rundir.save_model(model, run_dir / "baseline.keras")
    ctx.baseline = model
    stages = _run_stages(cfg, model, ctx, total=total)
    rows = _export_and_bench(stages, cfg, data, run_dir, step=(total - 1, total))
    report = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "dataset": repr(data),
        "seconds": round(time.time() - started, 1),
        "config": cfg.model_dump(serialize_as_any=True),
        "steps": ctx.records,
        "results": rows,
    }
    write_report(report, run_dir)
    _log(f"done in {report['seconds']:.0f}s: {run_dir / 'report.md'}")
    return report


def _run_stages(cfg: RunConfig, model, ctx: StepContext, *, total: int) -> list[dict]:
    """Runs the recipe steps on the trained baseline ``model``, saving each stage's model as
    ``<stage>.keras``; returns the stages, the baseline first."""
    run_dir = ctx.run_dir
    stages = [{"stage": "baseline", "model": model, "keras": run_dir / "baseline.keras"}]

    def starting(stage: str, step) -> None:
        _log(
            f"[{2 + len(stages)}/{total}] step {stage}: "
            + render_value(step.model_dump(exclude={"type", "name"}))
        )

    def finished(stage: str, step, model) -> None:
        path = run_dir / f"{stage}.keras"
        _rundir.save_model(model, path)
        stages.append({"stage": stage, "model": model, "keras": path})

    # the stages start from the run's seed, whatever the baseline consumed: `tfopt auto` runs
    # its candidates the same way, so its recipe.yaml replays here
    run_steps(cfg.steps, model, ctx, seed=cfg.seed, on_start=starting, on_step=finished)
    return stages


def _bench_options(cfg: RunConfig) -> dict:
    return dict(
        warmup=cfg.bench.warmup,
        runs=cfg.bench.runs,
        concurrency=cfg.bench.concurrency,
        micro_batch=cfg.bench.micro_batch,
        duration_s=cfg.bench.duration_s,
        robust_epsilon=cfg.bench.robust_epsilon,
    )


def _export_and_bench(stages, cfg: RunConfig, data: Dataset, run_dir: Path, *, step) -> list:
    """Exports the baseline to TFLite (when there are steps) and the last stage to every format
    of ``export.formats``, and benchmarks every artifact and every stage's Keras model on the
    test data; returns the report's rows, the Keras models first (and logs one line each).

    Each artifact is made and measured by `tfopt.export.export_and_measure`, the path of every
    search candidate, so a searched recipe replays the exporter too."""
    from tfopt import bench
    from tfopt.export import export_and_measure

    exports = [(stages[0], "tflite")] if len(stages) > 1 else []
    exports += [(stages[-1], fmt) for fmt in cfg.export.formats]
    names = ", ".join(f"{stage['stage']}:{fmt}" for stage, fmt in exports)
    _log(f"[{step[0]}/{step[1]}] export: {names}")
    options = _bench_options(cfg)
    representative = data.x_train[: cfg.export.representative_samples]
    artifact_rows = []
    for stage, fmt in exports:
        path = run_dir / f"{stage['stage']}_{fmt.replace('-', '_')}{formats.get(fmt).suffix}"
        measured = export_and_measure(
            stage["model"],
            path,
            format=fmt,
            representative=representative,
            check_data=data.x_val,
            val=data.test,
            **options,
        )
        art = measured.artifact
        artifact_rows.append(_row(stage["stage"], fmt, art.path, measured.result, art.check))
    _log(f"[{step[1]}/{step[1]}] bench: accuracy on {len(data.x_test)} test samples")
    rows = [
        _row(
            stage["stage"],
            "keras",
            stage["keras"],
            bench.benchmark(stage["model"], data.test, **options),
            None,
        )
        for stage in stages
    ] + artifact_rows
    for row in rows:
        _log(
            f"      {row['stage']:<14} {row['format']:<14} acc {row['accuracy']:.4f}  "
            f"{_kb(row['bytes'])}  gzip {_kb(row['gzip_bytes'])}  p50 {row['latency_ms']['p50']:.3f} ms"
        )
    return rows


def _kb(n) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _row(stage, fmt, path, res, check) -> dict:
    r = res.to_dict()
    if fmt == "keras":  # benchmark() sizes files only; a .keras file is a zip of weights + config
        from tfopt.bench import file_sizes

        r.update({k if k == "gzip_bytes" else "bytes": v for k, v in file_sizes(path).items()})
    keep = ("accuracy", "bytes", "gzip_bytes", "params", "macs", "latency_ms", "concurrency")
    keep += ("arena_bytes", "flash_bytes", "micro")  # TFLite Micro, for int8 .tflite artifacts
    if r.get("robust_accuracy") is not None:
        keep += ("robust_accuracy", "robust_attack")
    return {
        "stage": stage,
        "format": fmt,
        "path": str(path),
        "artifact": f"{stage}:{fmt}",
        **{k: r.get(k) for k in keep},
        "check": check,
    }
