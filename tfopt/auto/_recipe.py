"""``recipe.yaml``: the best candidate of `tfopt.auto` as a `tfopt run` config that replays it.

The recipe's model is the baseline auto measured, saved as ``<out>/baseline.keras``
(``train.epochs: 0``), not the settings that trained it: the replay then starts from the very
weights (and teacher) the search used, so the only difference left is the fine-tuning itself,
which `tfopt run` seeds like auto (``run_steps(seed=seed)``). Retraining the baseline would add
the spread of a whole float training run, and a model handed to `tfopt.auto.optimize` has no
training settings to repeat. How the baseline was trained is kept as a comment. The recipe
records the baseline's sha256 (``model.sha256``), and `tfopt.config.load` reads its relative
path next to the recipe: a copied recipe refuses any ``baseline.keras`` but its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from tfopt._rundir import sha256

HEADER = """\
# The best candidate of `tfopt auto` ({where}) as a `tfopt run` config:
#   tfopt run {path}
# rebuilds its artifact (accuracy and size as in the auto report: {summary}).
# model: the float baseline auto measured; train.epochs 0 keeps it as it is.{trained}
"""


def recipe_config(
    best: dict,
    *,
    out_dir: Path,
    target: str,
    seed: int,
    run_config: dict | None = None,
) -> dict:
    """The `tfopt run` config (a plain mapping) of the ``best`` candidate (a `Candidate` dict)."""
    base = dict(run_config or {})
    train = dict(base.get("train") or {})
    raw: dict = {"name": f"{base.get('name', Path(out_dir).name)}_recipe", "seed": int(seed)}
    if base.get("data"):
        raw["data"] = dict(base["data"])
        name = str(raw["data"].get("name", ""))
        if name.endswith(".npz") and Path(name).is_file():  # not relative to auto's cwd
            raw["data"]["name"] = str(Path(name).resolve())
    # relative: `tfopt.config.load` finds it next to recipe.yaml, so the run directory can move;
    # its sha256 makes a copied recipe refuse another folder's baseline.keras
    raw["model"] = {"name": None, "path": "baseline.keras"}
    baseline = Path(out_dir) / "baseline.keras"
    if baseline.is_file():
        raw["model"]["sha256"] = sha256(baseline)
    raw["train"] = {
        "epochs": 0,
        "batch_size": int(train.get("batch_size", 64)),
        "learning_rate": float(train.get("learning_rate", 2e-3)),
    }
    raw["steps"] = list(best["steps"])
    raw["export"] = {"formats": [target], "representative_samples": 200}
    raw["bench"] = {"runs": 50, "warmup": 5}
    return raw


def write_recipe(path: Path, raw: dict, *, best: dict, run_config: dict | None = None) -> Path:
    """Validates ``raw`` as a `tfopt run` config and writes it as YAML, with a comment header."""
    from tfopt import config

    # a recipe that `tfopt run` would reject is a bug here, not later (read as `load` reads it)
    config.validate(config._schema._relative_to(copy.deepcopy(raw), Path(path).parent))
    trained = ""
    model, train = (run_config or {}).get("model"), (run_config or {}).get("train")
    if model and train:
        what = model.get("path") or model.get("name")
        trained = (
            f"\n# It was trained by `tfopt auto`: {what} {model.get('options') or ''}, "
            f"{train.get('epochs')} epochs, batch {train.get('batch_size')}, "
            f"Adam {train.get('learning_rate')}, seed {raw['seed']}."
        )
    if "data" not in raw:
        trained += (
            "\n# data: tfopt.auto.optimize got arrays, not a named dataset: set data.name (a "
            "dataset\n# name or a .npz path with the same train/val/test split) before replaying."
        )
    summary = (
        f"val {best['val_accuracy']:.4f}, test "
        + ("-" if best.get("test_accuracy") is None else f"{best['test_accuracy']:.4f}")
        + f", {best['gzip_bytes']} gzip bytes"
    )
    head = HEADER.format(
        where=f"trial {best['trial_id']}", path=path, summary=summary, trained=trained
    )
    body = yaml.safe_dump(raw, sort_keys=False, default_flow_style=False, width=100)
    from tfopt._rundir import write_text

    write_text(path, head + body)
    return path
