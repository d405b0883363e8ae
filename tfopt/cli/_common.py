"""What several subcommands share: ``--model`` / ``--data`` / a model given as CONFIG."""

from __future__ import annotations

from pathlib import Path

MODEL_SUFFIXES = (".keras", ".h5")


def is_model_file(text: str | None) -> bool:
    """Whether ``text`` names a Keras model file (``.keras``, or a Keras 2 ``.h5``)."""
    return bool(text) and str(text).lower().endswith(MODEL_SUFFIXES)


def input_overrides(*, model: str | None = None, data: str | None = None) -> list[str]:
    """``key=value`` config overrides for ``--model M.keras|M.h5|ZOO_NAME`` and ``--data NAME|D.npz``."""
    out = []
    if data:
        out.append(f"data.name={_quoted(data)}")
    if model:
        if is_model_file(model) or Path(model).is_file():
            out += [f"model.path={_quoted(model)}", "model.name=null", "model.options={}"]
            out.append("model.sha256=null")  # the user's own file replaces a recorded one
        else:
            out += [f"model.name={_quoted(model)}", "model.path=null"]
    return out


def _quoted(value: str) -> str:
    """``value`` as a YAML string whatever it looks like (``null``, ``1e3``, ``a: b``)."""
    return "'" + str(value).replace("'", "''") + "'"


def split_config_arg(config: str | None, model: str | None) -> tuple[str | None, str | None]:
    """``tfopt run my.keras``: a model file given as CONFIG is the model of the default config.

    Returns ``(config, model)``; raises ValueError when both name a model.
    """
    if not is_model_file(config):
        return config, model
    if model:
        raise ValueError(
            f"{config!r} is a model, not a config, and --model {model!r} is given too; "
            "pass the model once: tfopt run [CONFIG] --model M.keras"
        )
    return None, config


def add_distributed_args(p, *, workers_help: str, chief_help: str) -> None:
    """The options `tfopt tune` and `tfopt auto` share for KerasTuner's distributed mode."""
    import argparse

    p.add_argument("--workers", type=int, default=0, help=workers_help)
    p.add_argument("--chief", metavar="HOST:PORT", help=chief_help)
    p.add_argument(
        "--connect-timeout",
        type=_seconds("--connect-timeout"),
        default=10.0,
        help="seconds a worker waits for the chief before giving up (default 10)",
    )
    p.add_argument("--serve", metavar="HOST:PORT", help=argparse.SUPPRESS)  # the chief's role


def _seconds(flag: str):
    """An argparse type for a timeout: a finite number of seconds > 0 (``nan``, ``inf`` and 0
    would never end a wait, or end it at once)."""
    import argparse

    def parse(text: str) -> float:
        from tfopt.tune._distributed import check_timeout

        try:
            return check_timeout(float(text), flag)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse
