"""`tfopt tune` / `tfopt.tune.search_training`: search the training recipe, write what it found.

Layout of a search directory (``--out``)::

    search/                 KerasTuner's project: oracle.json, trial_<id>/{model.keras,tfopt.json}
    search/tensorboard/     hparams plugin logs (one run per trial)
    best.keras              the best trial's trained model (no augmentation layers)
    best.yaml               a `tfopt run` config that retrains it from scratch
    report.md, report.json  the trial table and the hyperparameter importance
    importance.png          hyperparameter importance (share of the variance of val accuracy)

Running the same command again resumes the search (KerasTuner ``overwrite=False``), also after
the process was killed. The directory records what it searches (``identity.json``: model, data,
training settings, space; `tune_identity`) and a resume with other ones is refused; one process
at a time works in it (`tfopt._rundir.claim_run`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tfopt import _rundir

PROJECT = "search"

_logger = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """What a training search wrote (see the module docstring)."""

    out_dir: Path
    best: dict | None
    model_path: Path | None
    config_path: Path | None
    report: dict[str, Path] = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _load_config(config, overrides=()):
    """The validated config and its raw mapping; a setting `tfopt tune` would ignore is refused."""
    from tfopt.config._checks import check_no_strategy

    cfg, raw = _read_config(config, overrides)
    check_no_strategy(cfg, "tfopt tune")
    return cfg, raw


def _read_config(config, overrides=()):
    from tfopt import config as config_mod
    from tfopt.config import RunConfig

    if isinstance(config, RunConfig):
        if overrides:
            raw = config_mod.apply_overrides(
                config.model_dump(serialize_as_any=True), list(overrides)
            )
            return config_mod.validate(raw), raw
        return config, config.model_dump(serialize_as_any=True)
    file = config_mod.default_config_path() if config is None else config_mod.resolve_config(config)
    # relative model/data paths are found next to the config, as `tfopt run` finds them
    raw = config_mod._schema._relative_to(config_mod._schema.read_yaml(file), file.parent)
    raw = config_mod.apply_overrides(raw, list(overrides))
    return config_mod.validate(raw), raw


def tune_identity(cfg) -> dict:
    """What a search directory records about its search (`tfopt._rundir.claim_run`): the model,
    the data, the training settings, the seed and the ``tune:`` section. The budgets of trials
    and time are left out: a resumed search may get more of them."""
    tune = cfg.tune.model_dump(exclude={"max_trials", "time_budget"})
    return {
        **_rundir.config_inputs(cfg),
        "train": cfg.train.model_dump(),
        "transfer": None if cfg.transfer is None else cfg.transfer.model_dump(),
        "seed": cfg.seed,
        "tune": tune,
    }


def claim(cfg, out_dir, *, overwrite: bool = False):
    """`tfopt._rundir.claim_run` for a training search: a context manager holding ``out_dir``."""
    return _rundir.claim_run(
        out_dir,
        "tune",
        tune_identity(cfg),
        command="tfopt tune",
        what="`tfopt tune` search",
        overwrite=overwrite,
    )


def prepare(cfg, *, max_trials: int | None = None):
    """Loads the data and builds the search space of a validated config (every input error is
    raised here, before any training). Returns ``(data, hypermodel)``."""
    from tfopt import data as data_mod
    from tfopt.errors import ConfigError
    from tfopt.tune._training_space import TrainingHyperModel

    if cfg.model.name is None and cfg.transfer is None:
        raise ConfigError(
            "model.name: tfopt tune searches a zoo builder's width/depth; set model.name (or a "
            "transfer: section to search how to fine-tune model.path)"
        )
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be >= 1. Received: max_trials={max_trials}")
    data = data_mod.load(cfg.data.name, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    source = None
    if cfg.transfer is not None:  # the model `tfopt run` would transfer from
        from tfopt._pipeline import _build_model

        source = _build_model(cfg, data)
        from tfopt.data._checks import check_model_data

        # a new head gets the data's classes; a kept one must already have them
        check_model_data(source, data, what=cfg.data.name, classes=cfg.transfer.head == "keep")
    hm = TrainingHyperModel(
        cfg.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        base=cfg.train,
        base_options=cfg.model.options,
        space=cfg.tune.space,
        max_epochs=cfg.tune.max_epochs,
        transfer=cfg.transfer,
        source=source,
    )
    return data, hm


def make_tuner(cfg, hm, out_dir, *, max_trials=None, overwrite=False, on_trial_done=None):
    """The `TrainingTuner` of a config's ``tune:`` section, in ``out_dir/search``."""
    from tfopt.tune._training_tuner import TrainingTuner, make_oracle

    oracle = make_oracle(
        cfg.tune.algorithm,
        max_trials=max_trials if max_trials is not None else cfg.tune.max_trials,
        max_epochs=cfg.tune.max_epochs,
        time_budget=cfg.tune.time_budget,
        seed=cfg.seed,
    )
    return TrainingTuner(
        oracle,
        hm,
        seed=cfg.seed,
        directory=str(out_dir),
        project_name=PROJECT,
        overwrite=overwrite,
        on_trial_done=on_trial_done,
    )


def progress():
    """An ``on_trial_done`` callback logging one line per trial with the best so far."""
    best = {"val": -1.0}

    def done(r: dict) -> None:
        best["val"] = max(best["val"], r["val_accuracy"])
        test = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        _logger.info(
            f"[tune] trial {r['trial_id']} ({r['tuner_id']}): val {r['val_accuracy']:.4f} "
            f"test {test}, {r['epochs_trained']} epochs, {r['seconds']:.0f} s "
            f"(best val so far here {best['val']:.4f})"
        )

    return done


def search_training(
    config=None,
    *,
    overrides=(),
    out_dir=None,
    max_trials: int | None = None,
    overwrite: bool = False,
    verbose: int = 0,
) -> TuneResult:
    """Searches the training recipe of a config with KerasTuner and writes the best model, a
    `tfopt run` config that retrains it, and a report.

    The search space (`tfopt.tune.TrainingHyperModel`): optimizer (adam, adamw, sgd), learning
    rate and schedule (constant, cosine with warm-up), batch size, epochs with early stopping,
    weight decay, label smoothing, augmentation (noise, shift/scale for 1-D signals, mixup, flips
    and crops for images) and the zoo builder's width, depth, dropout and L2, overridable in the
    config's ``tune.space``. The algorithm (Hyperband by default), trial cap, epochs and time
    budget come from ``tune:``.

    Args:
        config: a YAML path, a `tfopt.config.RunConfig`, or None (the embedded default).
        overrides: ``key=value`` overrides of the config. Defaults to ().
        out_dir: the search directory. Defaults to None (``runs/tune_<name>``).
        max_trials: overrides ``tune.max_trials``. Defaults to None.
        overwrite: start afresh instead of resuming (only a directory tfopt created is
            removed). Defaults to False.
        verbose: Keras fit verbosity of the trials. Defaults to 0. Progress lines go to the
            ``tfopt.tune`` loggers (INFO).

    Returns:
        A `TuneResult`.

    Raises:
        ConfigError: an invalid config or search space (one line), before any training.
        RunMismatchError: ``out_dir`` holds a search of another model, data or settings.
        RunLockedError: another process works in ``out_dir``.

    Example:
        >>> res = tfopt.tune.search_training("configs/default.yaml", max_trials=10,
        ...                                  overrides=["tune.algorithm=random"])
        >>> res.best["val_accuracy"], res.config_path
    """
    started = time.time()
    cfg, raw = _load_config(config, overrides)
    out_dir = Path(out_dir) if out_dir else Path("runs") / f"tune_{cfg.name}"
    data, hm = prepare(cfg, max_trials=max_trials)  # every input error before the directory
    with claim(cfg, out_dir, overwrite=overwrite):
        _logger.info(
            f"[tune] data: {data}; searching {len(hm.names())} hyperparameters with "
            f"{cfg.tune.algorithm}"
        )
        start = record_start(hm, data, out_dir)
        if start is not None:
            _logger.info(
                f"[tune] starting model: val {start['val_accuracy']:.4f} test "
                f"{start['test_accuracy']:.4f}"
            )
        tuner = make_tuner(cfg, hm, out_dir, max_trials=max_trials, on_trial_done=progress())
        tuner.search(data, verbose=verbose)
        return finalize(raw, out_dir, seconds=time.time() - started)


# -- what a search writes ----------------------------------------------------------------------


def record_start(hm, data, out_dir) -> dict | None:
    """The accuracy of the model a transfer search starts from (``hm.source``, as given: not
    trained further), on the validation and test data, written to ``out_dir/start.json`` for
    the report. None (nothing written) for a search of a zoo builder."""
    if getattr(hm, "source", None) is None:
        return None
    from tfopt._rewrite import clone
    from tfopt._training import compile_classifier

    source = clone(hm.source, action="tfopt tune")
    compile_classifier(source, 1e-3)
    start = {"model": hm.source.name}
    for split, (x, y) in (("val", data.val), ("test", data.test)):
        start[f"{split}_accuracy"] = float(
            source.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "start.json").write_text(json.dumps(start, indent=2))
    return start


def _start_lines(data: dict) -> list[str]:
    start, best = data.get("start"), data.get("best")
    if start is None:
        return []
    lines = [
        f"Starting model ({start['model']}, as given): val {start['val_accuracy']:.4f}, test "
        f"{start['test_accuracy']:.4f}.",
    ]
    if best is None or best["val_accuracy"] <= start["val_accuracy"]:
        lines.append(
            "No trial beat the starting model on validation accuracy: keep the model you gave."
        )
    return ["", *lines]


def records(out_dir) -> list[dict]:
    """The records (``tfopt.json``) of the finished trials of a search directory, in trial order."""
    out = []
    for path in sorted((Path(out_dir) / PROJECT).glob("trial_*/tfopt.json")):
        out.append(json.loads(path.read_text()))
    return out


def searched_names(out_dir, trials: list[dict]) -> list[str]:
    """The hyperparameters the search varies (not fixed), from the oracle's saved space."""
    path = Path(out_dir) / PROJECT / "oracle.json"
    if path.exists():
        space = json.loads(path.read_text())["hyperparameters"]["space"]
        return [h["config"]["name"] for h in space if h["class_name"] != "Fixed"]
    return sorted({k for t in trials for k in t["values"] if not k.startswith("tuner/")})


def run_config(raw: dict, best: dict) -> dict:
    """The `tfopt run` config (a plain dict) that retrains ``best`` from scratch: the searched
    config with the trial's ``train:`` section and model options, without ``tune:``; its model
    and data files by absolute path, the model file with its sha256."""
    out = {k: v for k, v in raw.items() if k != "tune"}
    out["name"] = f"{raw.get('name', 'default')}_tuned"
    model = dict(out.get("model") or {})
    model["options"] = dict(best["model_options"])
    if model.get("path"):  # the very file searched, from wherever best.yaml is run
        model["path"] = str(Path(model["path"]).resolve())
        model["sha256"] = _rundir.sha256(model["path"])
    data = dict(out.get("data") or {})
    if str(data.get("name", "")).endswith(".npz"):
        data["name"] = str(Path(data["name"]).resolve())
        out["data"] = data
    out["model"] = model
    out["train"] = best["train"]
    if best.get("transfer") is not None:
        out["transfer"] = best["transfer"]
    return out


def importance(trials: list[dict]) -> dict[str, float]:
    """Hyperparameter importance: for each searched hyperparameter, the share of the variance of
    ``val_accuracy`` explained by its values (the correlation ratio eta squared; numeric values
    with more than 4 levels are grouped in quartiles). Needs >= 3 trials."""
    if len(trials) < 3:
        return {}
    ys = [t["val_accuracy"] for t in trials]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    names = sorted({k for t in trials for k in t["values"] if not k.startswith("tuner/")})
    out = {}
    for name in names:
        values = [t["values"].get(name) for t in trials]
        if len({json.dumps(v) for v in values}) < 2:
            continue
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) > 4:
            cuts = sorted(values)
            q = [cuts[int(len(cuts) * f)] for f in (0.25, 0.5, 0.75)]
            keys = [sum(v > c for c in q) for v in values]
        else:
            keys = [json.dumps(v) for v in values]
        groups: dict = {}
        for key, y in zip(keys, ys):
            groups.setdefault(key, []).append(y)
        between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
        out[name] = 0.0 if total <= 0 else between / total
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def plot_importance(path: Path, scores: dict[str, float]) -> Path:
    """A horizontal bar chart of `importance` (a `matplotlib.figure.Figure`, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 0.35 * max(len(scores), 3) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names], color="#1f77b4")
    ax.set_xlabel("share of val-accuracy variance explained (eta squared)")
    ax.set_xlim(0, 1)
    ax.set_title("hyperparameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(data: dict) -> str:
    trials = sorted(data["trials"], key=lambda t: -t["val_accuracy"])
    searched = data["searched"]
    head = ["trial", "val acc", "test acc", "epochs", "seconds", *searched]
    lines = [
        f"# tfopt tune: {data['name']}",
        "",
        f"{len(trials)} trials, {data['seconds']:.0f} s. Best: trial {data['best']['trial_id']} "
        f"(val {data['best']['val_accuracy']:.4f}, test "
        f"{_fmt(data['best']['test_accuracy'])}); retrain it with `tfopt run {data['config']}`."
        if data["best"]
        else f"{len(trials)} trials; none completed.",
        *_start_lines(data),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    if data.get("start"):
        start = data["start"]
        cells = ["start", f"{start['val_accuracy']:.4f}", f"{start['test_accuracy']:.4f}", "0"]
        lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
    for t in trials:
        test = "-" if t["test_accuracy"] is None else f"{t['test_accuracy']:.4f}"
        cells = [t["trial_id"], f"{t['val_accuracy']:.4f}", test, str(t["epochs_trained"])]
        cells.append(f"{t['seconds']:.0f}")
        cells += [_fmt(t["values"].get(n, "")) for n in searched]
        lines.append("| " + " | ".join(cells) + " |")
    if data["importance"]:
        lines += ["", "## Hyperparameter importance (eta squared of val accuracy)", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in data["importance"].items()]
    lines += ["", f"TensorBoard hparams: `tensorboard --logdir {data['tensorboard']}`", ""]
    return "\n".join(lines)


def finalize(raw: dict, out_dir, *, seconds: float = 0.0) -> TuneResult:
    """Writes best.keras, best.yaml (validated), report.md/.json and importance.png from the
    trial records of ``out_dir`` (also after a distributed search, whose workers wrote them)."""
    import yaml

    from tfopt import config as config_mod

    out_dir = Path(out_dir)
    trials = records(out_dir)
    best = max(trials, key=lambda t: (t["val_accuracy"], -t["epochs_trained"]), default=None)
    model_path = config_path = None
    if best is not None:
        model_path = out_dir / "best.keras"
        shutil.copyfile(out_dir / PROJECT / f"trial_{best['trial_id']}" / "model.keras", model_path)
        run = run_config(raw, best)
        config_mod.validate(run)  # what we write, `tfopt run` reads
        config_path = out_dir / "best.yaml"
        config_path.write_text(
            f"# Found by `tfopt tune` (trial {best['trial_id']}, val accuracy "
            f"{best['val_accuracy']:.4f}). Retrain with: tfopt run {config_path.name}\n"
            + yaml.safe_dump(run, sort_keys=False)
        )
    searched = searched_names(out_dir, trials)
    scores = importance(trials)
    start_path = out_dir / "start.json"
    data = {
        "name": raw.get("name", "default"),
        "seconds": round(seconds, 1),
        "start": json.loads(start_path.read_text()) if start_path.exists() else None,
        "best": best,
        "config": str(config_path) if config_path else None,
        "model": str(model_path) if model_path else None,
        "trials": trials,
        "searched": searched,
        "importance": scores,
        "tensorboard": str(out_dir / PROJECT / "tensorboard"),
    }
    report = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    report["json"].write_text(json.dumps(data, indent=2, default=str))
    report["markdown"].write_text(markdown(data))
    if scores:
        report["plot"] = plot_importance(out_dir / "importance.png", scores)
    if best is not None:
        _logger.info(
            f"[tune] best: trial {best['trial_id']} val {best['val_accuracy']:.4f} test "
            f"{_fmt(best['test_accuracy'])} -> {model_path}; retrain: tfopt run {config_path}"
        )
    _logger.info(f"[tune] report: {report['markdown']}")
    return TuneResult(
        out_dir=out_dir,
        best=best,
        model_path=model_path,
        config_path=config_path,
        report=report,
        trials=trials,
        seconds=round(seconds, 1),
    )
