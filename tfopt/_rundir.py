"""Output directories that tfopt owns: create, claim, remove, write atomically, verify, identify.

One place for the rules every command follows (`tfopt run`, `tfopt auto`, `tfopt export`):

* a directory tfopt creates gets a marker file (`MARKER`); only a directory with the marker is
  ever removed, and only when the user asked (``overwrite``);
* every file name that comes from a config (a run's ``name``, a step's ``name``) is a plain file
  name (`check_name`), so a path never escapes the output directory;
* files are written atomically (`write_text`, `write_json`, `save_model`, `copy_file`: a temporary
  file in the same directory, then `os.replace`), so a killed run leaves either the old file or
  the new one, never half of one;
* an artifact a record points to carries its size and sha256 (`digest`), checked on resume
  (`verify`);
* a run directory records the identity of its model, data and settings (`claim_identity`); a
  resume with different ones is refused with a message that says what differs;
* one process at a time works in a run directory (`lock`: an exclusive ``flock`` on `LOCK`,
  which the OS drops when the process ends, even by SIGKILL); a second one is refused with a
  line that says who holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tfopt.errors import OutputDirError, RunLockedError, RunMismatchError

MARKER = ".tfopt-run"
IDENTITY = "identity.json"
LOCK = ".tfopt-lock"


def is_owned(path) -> bool:
    """Whether ``path`` is a directory that tfopt created (it holds `MARKER`)."""
    return (Path(path) / MARKER).is_file()


def mark(path, by: str) -> None:
    """Marks ``path`` (a directory) as created by tfopt (``by`` says which command)."""
    path = Path(path)
    write_json(path / MARKER, {"created_by": by})


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def remove(path, *, what: str = "directory") -> None:
    """Removes ``path`` (a directory) only if tfopt created it; else raises `OutputDirError`."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputDirError(f"{what} {str(path)!r} is a file, not a directory: not removed")
    if not is_owned(path):
        raise OutputDirError(
            f"--overwrite refused: {what} {str(path)!r} was not created by tfopt (it has no "
            f"{MARKER} file), so it is not deleted; choose another --out or remove it yourself"
        )
    shutil.rmtree(path)


def _holds_only(path: Path, names) -> bool:
    """Whether ``path`` is a directory whose entries are all in ``names``."""
    return path.is_dir() and all(p.name in names for p in path.iterdir())


@contextmanager
def discard_if_refused(path, *, written=()) -> Iterator[Path]:
    """Removes ``path`` when the block raises before it made anything: ``path`` held only its
    marker (and lock) when the block began, as a directory `prepare` just made does, and holds
    only tfopt's bookkeeping (`MARKER`, `LOCK`, `IDENTITY` and the names in ``written``) now. A
    `tfopt run` or `tfopt auto` that refuses its data leaves no empty run directory behind; a
    directory with anything else in it, or an earlier run's, is kept."""
    path = Path(path)
    fresh = _holds_only(path, {MARKER, LOCK})
    try:
        yield path
    except Exception:
        if fresh and _holds_only(path, {MARKER, LOCK, IDENTITY, *written}):
            shutil.rmtree(path, ignore_errors=True)
        raise


def refuse_dangling(path: Path, *, arg: str = "--out") -> None:
    """Raises `OutputDirError` when ``path`` is a symbolic link to nothing (writing through it
    would create a file wherever the link points); ``arg`` names the argument in the message."""
    if path.is_symlink() and not path.exists():
        raise OutputDirError(
            f"{arg} {str(path)!r} is a dangling symbolic link (to {str(path.readlink())!r}); "
            f"remove it or choose another {arg}"
        )


def prepare(path, *, overwrite: bool = False, resume: bool = False, by: str = "tfopt") -> Path:
    """Makes ``path`` ready to be an output directory of tfopt and returns it.

    * missing or empty: created and marked;
    * an existing file: refused;
    * a directory tfopt did not create (no `MARKER`): refused, with or without ``overwrite``;
    * a directory tfopt created: removed and re-created when ``overwrite``, else kept when
      ``resume`` (the caller checks its identity), else refused.

    Raises:
        OutputDirError: one line that names the path and says what to do.
    """
    path = Path(path)
    refuse_dangling(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(
            f"--out {str(path)!r} is an existing file, not a directory; choose another --out"
        )
    if path.is_dir() and not _is_empty_dir(path):
        if not is_owned(path):
            if overwrite:
                remove(path)  # raises: never delete what tfopt did not create
            raise OutputDirError(
                f"--out {str(path)!r} exists and is not a tfopt run directory (no {MARKER} "
                "file); choose another --out (an empty or new directory)"
            )
        if overwrite:
            _refuse_if_locked(path)  # never delete a directory another process works in
            remove(path)
        elif not resume:
            raise OutputDirError(
                f"--out {str(path)!r} holds an earlier run; pass --overwrite to replace it or "
                "choose another --out"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, a read-only folder
        raise OutputDirError(
            f"--out {str(path)!r} cannot be created ({e.strerror}); choose another --out"
        ) from None
    if not is_owned(path):
        mark(path, by)
    return path


def check_name(value: Any, key: str = "name") -> Any:
    """Raises ValueError unless ``value`` (when a string) is a plain file-name component."""
    if value is None:
        return value
    text = str(value)
    bad = (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or "\x00" in text
        or text != text.strip()
        or text.startswith(".")
    )
    if bad:
        raise ValueError(
            f"{key} must be a plain file name (no '/', '\\', leading '.' or '..'): it names "
            f"files inside the run directory. Received: {key}={text!r}"
        )
    return value


# -- one process per run directory ----------------------------------------------------------------
_held: dict[str, list] = {}  # resolved run dir -> [open lock file, depth] of this process


def _holder_line(path: Path, info: dict) -> str:
    return (
        f"--out {str(path)!r} is in use by another tfopt process: pid {info.get('pid', '?')} on "
        f"{info.get('host', '?')} ({info.get('command', '?')}, since {info.get('since', '?')}); "
        "wait for it to end, or choose another --out"
    )


def _read_holder(file) -> dict:
    try:
        file.seek(0)
        return json.loads(file.read() or "{}")
    except (ValueError, OSError):
        return {}


def _try_flock(file) -> bool:
    import fcntl

    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _refuse_if_locked(path: Path) -> None:
    """Raises `RunLockedError` when another process holds ``path``'s lock."""
    if str(path.resolve()) in _held or not (path / LOCK).is_file():
        return
    with open(path / LOCK, "a+") as f:
        if not _try_flock(f):
            raise RunLockedError(_holder_line(path, _read_holder(f)))


@contextmanager
def lock(run_dir, *, command: str) -> Iterator[Path]:
    """Holds ``run_dir``'s lock (an exclusive ``flock`` on ``run_dir/.tfopt-lock``) for the block.

    The lock file says who holds it (pid, host, command, since when). The OS drops the lock when
    the process ends, however it ends, so a killed run never leaves a stale lock. Re-entrant
    within a process (`tfopt auto` locks its directory, then `tfopt.auto.optimize` again).
    Needs a POSIX system; elsewhere the block runs unlocked.

    Raises:
        RunLockedError: another process holds the lock; one line that says who.
    """
    path = Path(run_dir)
    key = str(path.resolve())
    if key not in _held and os.name == "posix":
        _held[key] = [_acquire(path, command), 0]
    if key in _held:
        _held[key][1] += 1
    try:
        yield path
    finally:
        if key in _held:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                _held.pop(key)[0].close()  # releases the flock


def _acquire(path: Path, command: str):
    import socket
    import time

    f = open(path / LOCK, "a+")  # noqa: SIM115 - stays open while the lock is held
    if not _try_flock(f):
        info = _read_holder(f)
        f.close()
        raise RunLockedError(_holder_line(path, info))
    f.seek(0)
    f.truncate()
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
               "since": since}, f)  # fmt: skip
    f.flush()
    return f


# -- atomic writes -------------------------------------------------------------------------------
def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(tmp)


def write_bytes(path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (a temporary file, then `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path, text: str) -> Path:
    """Writes ``text`` (utf-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, data: Any) -> Path:
    """Writes ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def copy_file(src, dst) -> Path:
    """Copies ``src`` to ``dst`` atomically."""
    dst = Path(dst)
    tmp = _tmp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def save_model(model, path) -> Path:
    """``model.save(path)`` atomically (Keras writes a temporary ``.keras`` file, then it is moved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.unlink()
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- verification --------------------------------------------------------------------------------
def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file, recorded next to the path that names it."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256(path)}


def verify(path, expected: dict | None) -> str | None:
    """Why the file at ``path`` is not the one recorded in ``expected`` (a `digest`), or None."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    if not expected:
        return f"{path.name} has no recorded size and sha256 (written by an older tfopt)"
    size = path.stat().st_size
    if size != expected.get("bytes"):
        return f"{path.name} has {size} bytes, {expected.get('bytes')} were written"
    if sha256(path) != expected.get("sha256"):
        return f"{path.name} changed since it was written (sha256 differs)"
    return None


def relative(path, root) -> str:
    """``path`` relative to ``root`` when it lies inside it (records survive a moved run dir)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()
    except ValueError:  # another drive
        return str(path)


# -- identity ------------------------------------------------------------------------------------
def array_digest(*arrays) -> dict:
    """Shapes, dtypes and one sha256 over the bytes of ``arrays`` (None entries are skipped)."""
    import numpy as np

    h = hashlib.sha256()
    shapes = []
    for a in arrays:
        if a is None:
            shapes.append(None)
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
        shapes.append([list(a.shape), a.dtype.name])
    return {"shapes": shapes, "sha256": h.hexdigest()}


def model_digest(model) -> dict:
    """The weights' sha256, parameter count and input/output shapes of a Keras model."""
    import numpy as np

    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(str((w.path, a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return {
        "name": model.name,
        "params": int(model.count_params()),
        "input_shape": str(model.input_shape),
        "output_shape": str(model.output_shape),
        "weights_sha256": h.hexdigest(),
    }


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    if old != new:
        return [f"{where or 'identity'}: {_short(old)} -> {_short(new)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def claim_identity(run_dir, section: str, identity: dict, *, what: str = "run") -> dict:
    """Records ``identity`` as ``section`` of ``run_dir/identity.json``, or checks it on resume.

    Raises:
        RunMismatchError: ``run_dir`` holds a ``section`` with another identity; the one-line
            message lists what differs and says what to do.
    """
    path = Path(run_dir) / IDENTITY
    identity = _normal(identity)
    recorded: dict = {}
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (ValueError, OSError):
            recorded = {}
    if section in recorded:
        diffs = _differences(recorded[section], identity)
        if diffs:
            shown = "; ".join(diffs[:4]) + (
                f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            )
            raise RunMismatchError(
                f"{str(run_dir)!r} holds a {what} of another model, data or settings ({shown}); "
                "pass --out another directory, or --overwrite to discard the earlier run"
            )
        return recorded
    recorded[section] = identity
    write_json(path, recorded)
    return recorded


@contextmanager
def claim_run(
    run_dir, section: str, identity: dict, *, command: str, what: str, overwrite: bool = False
) -> Iterator[Path]:
    """How every command that resumes (`tfopt tune`, `tfopt auto`) opens its run directory:
    `prepare` (resume; ``overwrite`` replaces an earlier run tfopt made), `lock` for the block,
    then `claim_identity` (the same model, data and settings, or a one-line refusal); a block
    that raises before writing anything removes the directory it made (`discard_if_refused`).

    Raises:
        OutputDirError, RunLockedError, RunMismatchError: each one line.
    """
    path = prepare(run_dir, overwrite=overwrite, resume=True, by=command)
    with lock(path, command=command), discard_if_refused(path):
        claim_identity(path, section, identity, what=what)
        yield path


def short_hash(value: Any, n: int = 8) -> str:
    """A short, stable hash of a JSON-able value (for default directory names)."""
    return hashlib.sha256(json.dumps(_normal(value), sort_keys=True).encode()).hexdigest()[:n]


def file_identity(path) -> dict:
    """A file's name, size and sha256 (the identity of a user's model or .npz)."""
    path = Path(path)
    if not path.is_file():
        return {"path": str(path), "missing": True}
    return {"file": path.name, **digest(path)}


# -- trial records -------------------------------------------------------------------------------
def seal_record(record: dict, where) -> dict:
    """Makes a trial record movable and checkable: its artifact (``metrics.path``) and Keras model
    (``keras_model``) become paths relative to ``where`` (the record's directory), each with its
    `digest` (``metrics.digest``, ``keras_digest``). Changes and returns ``record``."""
    metrics = record.get("metrics")
    if isinstance(metrics, dict) and metrics.get("path"):
        path = Path(metrics["path"])
        metrics["path"] = relative(path, where)
        metrics["digest"] = digest(path)
    if record.get("keras_model"):
        path = Path(record["keras_model"])
        record["keras_model"] = relative(path, where)
        record["keras_digest"] = digest(path)
    return record


def record_path(value: str | None, where) -> str | None:
    """A path of a sealed record, resolved against the record's directory ``where``."""
    if value is None or where is None or Path(value).is_absolute():
        return value
    return str(Path(where) / value)


def config_inputs(cfg) -> dict:
    """The identity of a `tfopt.config.RunConfig`'s model and data: a zoo model by name and
    options, a model file or ``.npz`` by name, size and sha256, a named dataset by name."""
    if cfg.model.path:
        model = file_identity(cfg.model.path)
    else:
        model = {"name": cfg.model.name, "options": cfg.model.options}
    data = {"name": cfg.data.name, "val_fraction": cfg.data.val_fraction}
    if str(cfg.data.name).endswith(".npz"):
        data.update(file_identity(cfg.data.name))
    return {"model": model, "data": data}
