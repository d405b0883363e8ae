import os
import subprocess
import sys

import pytest

import tfopt
from tfopt._backend import check_model


def _import_in_subprocess(env_updates):
    env = {**os.environ, **env_updates}
    return subprocess.run(
        [sys.executable, "-c", "import tfopt"], env=env, capture_output=True, text=True
    )


def test_import_fails_clearly_with_another_backend():
    proc = _import_in_subprocess({"KERAS_BACKEND": "jax"})
    assert proc.returncode == 1
    assert (
        "BackendError: tfopt needs Keras 3 with the TensorFlow backend, but KERAS_BACKEND='jax'"
        in proc.stderr
    )


def test_import_fails_clearly_with_legacy_keras():
    proc = _import_in_subprocess({"TF_USE_LEGACY_KERAS": "1"})
    assert proc.returncode == 1
    assert "TF_USE_LEGACY_KERAS='1' is set" in proc.stderr
    assert "do not import tensorflow_model_optimization" in proc.stderr


def test_keras2_model_is_rejected_with_its_module():
    fake = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})()
    with pytest.raises(
        TypeError,
        match=r"Keras 2 \(tf_keras\) model \(tf_keras\.src\.engine\.sequential\.Sequential\)",
    ):
        check_model(fake)


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="Received: model=list from module builtins"):
        check_model([1, 2])


def test_lazy_subpackages():
    assert "data" in dir(tfopt)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tfopt.nope  # noqa: B018


def test_quiet_hides_chatter_but_attaches_it_to_an_exception(capfd):
    from tfopt._backend import quiet

    with quiet():
        os.write(2, b"C++ chatter\n")
        print("a Python print")
    assert capfd.readouterr() == ("", "")

    with pytest.raises(RuntimeError, match="conversion failed") as info, quiet():
        os.write(2, b"error: loc(fused[conv2]): op not supported\n")
        raise RuntimeError("conversion failed")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "error: loc(fused[conv2]): op not supported" in notes
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "restored\n"
