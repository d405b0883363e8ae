import pytest
from _helpers import random_npz

import tfopt
from tfopt.config import apply_overrides, load, validate
from tfopt.errors import ConfigError


def test_default_config_is_embedded_and_valid():
    cfg = load()
    assert cfg.data.name == "mnist1d" and cfg.model.name == "mnist1d_cnn"
    assert cfg.export.formats == ["tflite", "tflite-int8"]
    assert tfopt.config.default_config_path().name == "default.yaml"


def test_overrides_parse_yaml_values():
    cfg = load(
        overrides=["train.epochs=5", "export.formats=[tflite]", "model.options.width=16", "name=x"]
    )
    assert cfg.train.epochs == 5 and cfg.export.formats == ["tflite"]
    assert cfg.model.options == {"width": 16} and cfg.name == "x"


TRAIN_KEYS = (
    "['augment', 'batch_size', 'early_stopping', 'epochs', 'label_smoothing', 'learning_rate', "
    "'lr_schedule', 'momentum', 'optimizer', 'peer_timeout', 'strategy', 'warmup_epochs', "
    "'weight_decay']"
)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.epochz=3",
            "train.epochz: unknown key 'epochz' (did you mean 'epochs'?). Allowed: " + TRAIN_KEYS,
        ),
        ("trian.epochs=3", "trian: unknown key 'trian' (did you mean 'train'?)."),
        ("train.epochs=-1", "train.epochs: Input should be greater than or equal to 0 (got -1)"),
        (
            "train.epochs=abc",
            "train.epochs: Input should be a valid integer (got 'abc')",
        ),
        ("data.name=mnist1e", "data.name: unknown dataset 'mnist1e' (did you mean 'mnist1d'?)."),
        (
            "export.formats=[tflite-int9]",
            "export.formats: unknown format 'tflite-int9' (did you mean 'tflite-int8'?).",
        ),
        (
            "model.path=model.pt",
            "model.path: must be a .keras (or legacy .h5) file. Received: 'model.pt'",
        ),
        ("steps=[{type: prnue}]", "steps[0].type: unknown step type 'prnue'"),
        ("steps=3", "steps: must be a list of steps (got 3)"),
        ("train", "override 'train' must look like key.path=value"),
    ],
)
def test_config_errors_are_one_line_with_key_path(override, message):
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        load(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        validate([1, 2])


def test_apply_overrides_does_not_mutate_and_checks_list_indices():
    raw = {"steps": [{"type": "x"}]}
    out = apply_overrides(raw, ["steps.0.epochs=2"])
    assert out["steps"][0]["epochs"] == 2 and "epochs" not in raw["steps"][0]
    with pytest.raises(ConfigError, match=r"steps\[3\] does not exist"):
        apply_overrides(raw, ["steps.3.epochs=2"])


def test_fine_tuning_keys_are_shared_by_the_fine_tuning_steps():
    from tfopt.config import DistillLoss, FineTuneStepConfig, validate_steps

    raw = [
        {"type": t, "lr_schedule": "cosine", "batch_size": 32, "distill": {"temperature": 2.0}}
        for t in ("prune", "qat", "cluster", "prune_channels")
    ]
    for step in validate_steps(raw):
        assert isinstance(step, FineTuneStepConfig)
        assert step.lr_schedule == "cosine" and step.batch_size == 32
        assert step.distill == DistillLoss(temperature=2.0, alpha=0.1)
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.distill\.alpha: Input should be less"):
        validate_steps([{"type": "prune", "distill": {"alpha": 2}}])
    with pytest.raises(ConfigError, match=r"^steps\[1\]\.lr_schedule: Input should be 'constant'"):
        validate_steps([{"type": "qat"}, {"type": "qat", "lr_schedule": "linear"}])
    with pytest.raises(ConfigError, match="give filters or scope, not both"):
        validate_steps([{"type": "prune", "scope": "large", "filters": "conv"}])
    with pytest.raises(ConfigError, match=r"steps\[0\]\.scope: Input should be 'all' or 'widest"):
        validate_steps([{"type": "prune_channels", "scope": "large"}])
    with pytest.raises(ConfigError, match="distill: unknown key 'distill'"):
        validate_steps([{"type": "distill", "distill": {}}])  # the distill step is the student's


# -- every value checked up front (issue 12) -----------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs='5'", "train.epochs: Input should be a valid integer (got '5')"),
        ("train.epochs=true", "train.epochs: Input should be a valid integer (got True)"),
        ("train.batch_size=100000000000000000000", "train.batch_size: Input should be less than"),
        ("steps=[{type: cluster, n_clusters: 100000000}]", "steps[0].n_clusters: Input should be"),
        ("steps=[{type: prune, filters: '['}]", "steps[0].filters: invalid regular expression '['"),
        ("steps=[{type: qat, filters: [a, '(']}]", "steps[0].filters: invalid regular expression"),
        (
            "steps=[{type: prune, m_by_n: [4, 2]}]",
            "steps[0].m_by_n: m_by_n must be [m, n] with 0 <",
        ),
        ("steps=[{type: prune, block_size: [0, 4]}]", "steps[0].block_size: block_size must be"),
        (
            "steps=[{type: prune, m_by_n: [2, 4], block_size: [1, 4]}]",
            "steps[0]: give m_by_n or block_size, not both",
        ),
        ("model.options.foo=1", "model.options: unknown option 'foo' of model 'mnist1d_cnn'"),
        ("model.name=resnet", "model: unknown zoo model name='resnet' (did you mean"),
        (
            "steps=[{type: distill, student: {model: mnist1d_cnn, widht: 8}}]",
            "steps[0].student: unknown option 'widht' of model 'mnist1d_cnn' (did you mean 'width'?)",
        ),
        (
            "steps=[{type: distill, teacher: no_such.keras}]",
            "steps[0].teacher: no such .keras file",
        ),
        ("steps=[{type: prune, distill: {alpha: '0.5'}}]", "steps[0].distill.alpha: Input should"),
    ],
)
def test_bad_values_fail_at_load_with_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load(overrides=[override])
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_yaml_lists_still_give_pairs_and_ints_still_give_floats():
    cfg = load(overrides=["steps=[{type: prune, m_by_n: [2, 4]}]", "train.learning_rate=1"])
    assert cfg.steps[0].m_by_n == (2, 4) and cfg.train.learning_rate == 1.0


def test_tensorrt_format_needs_the_package_up_front():
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(ConfigError, match=r"^export.formats: format 'tensorrt' needs tensorrt"):
        load(overrides=["export.formats=[tflite, tensorrt]"])


_BOMB = "".join(
    f"{b}: &{b} [" + ",".join([f"*{a}"] * 9) + "]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text", ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + _BOMB]
)
def test_yaml_alias_bomb_is_refused_fast(tmp_path, text, monkeypatch):
    import yaml

    from tfopt.config import _yaml

    assert len(text) < 400  # a few hundred bytes that describe ~4e8 values
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    visits, size = [], _yaml._expanded_size

    def counted(node, memo, active):
        visits.append(node)
        return size(node, memo, active)

    def never(*args, **kwargs):
        raise AssertionError("the bomb was built")

    monkeypatch.setattr(_yaml, "_expanded_size", counted)
    monkeypatch.setattr(yaml.SafeLoader, "construct_document", never)
    with pytest.raises(ConfigError, match=r"^bomb.yaml: refused: the YAML expands to 4"):
        load(path)
    # fast: each alias is sized once (memoized), not 4e8 times, and nothing is built
    assert len(visits) < 200
    monkeypatch.undo()
    # hidden where anything goes (the zoo builder's options): refused before validation
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("i: &i", "model:\n  options:\n    i: &i"))
    with pytest.raises(ConfigError, match="more than the 100,000 a config may hold"):
        load(nested)
    with pytest.raises(ConfigError, match="more than the 100,000"):
        load(
            overrides=[
                "model.options={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,"
                "*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,"
                "*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
            ]
        )
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="cycle.yaml: invalid YAML: an alias refers to a value"):
        load(cycle)
    # anchors and aliases of ordinary size still work
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "model:\n  options: &o {width: 8}\nsteps:\n  - {type: distill, student: "
        "{model: mnist1d_cnn, width: 8}}\n"
    )
    assert load(ok).model.options == {"width": 8}


@pytest.mark.parametrize(
    "step, message",
    [
        ("{type: prune, filters: nomatch}", r"steps\[0\] \(1_prune\): filters='nomatch' select no"),
        ("{type: qat, filters: [nomatch]}", r"steps\[0\] \(1_qat\): filters=\['nomatch'\] select"),
        ("{type: qat, bits: {nomatch: 4}}", r"steps\[0\] \(1_qat\): bits key 'nomatch' selects"),
        ("{type: prune, epochs: 1, frequency: 1000}", r"steps\[0\] \(1_prune\): .* reaches target"),
    ],
)
def test_run_checks_steps_against_model_and_data_before_training(tmp_path, step, message):
    from tfopt._pipeline import run

    cfg = load(
        overrides=[
            f"data.name={random_npz(tmp_path / 'tiny.npz', 48, 16)}",
            "train.epochs=1",
            f"steps=[{step}]",
        ]
    )
    with pytest.raises(ConfigError, match=message):
        run(cfg, out_dir=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "baseline.keras").exists()  # nothing trained


@pytest.mark.parametrize(
    "flag", [["--max-trials", "0"], ["--time-budget", "-5"], ["--time-budget", "nan"]]
)
def test_auto_checks_its_options_before_the_baseline_trains(tmp_path, capsys, flag):
    from tfopt.cli import main

    out = tmp_path / "auto"
    code = main(["auto", "--max-accuracy-drop", "0.01", "--epochs", "1", "--out", str(out), *flag])
    assert code != 0
    err = capsys.readouterr().err
    assert ("max_trials must be" in err) or ("time_budget must be" in err), err
    assert not (out / "baseline.keras").exists()


def test_shipped_configs_state_their_measured_accuracy_drop():
    """Each shipped config says what it costs, and that number is benchmarks/shipped_configs.py's."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    results = json.loads((root / "benchmarks/results/shipped_configs.json").read_text())
    import yaml

    # the `tfopt run` configs; a `tune:` config (`tfopt tune`) searches training, it does not compress
    packaged = [
        p
        for p in sorted((root / "tfopt" / "configs").glob("*.yaml"))
        if "tune" not in yaml.safe_load(p.read_text())
    ]
    assert {p.stem for p in packaged} == set(results)  # every shipped run config is measured
    for path in [*packaged, *(root / "configs" / p.name for p in packaged)]:
        header = "".join(line for line in path.read_text().splitlines(True) if line[:1] == "#")
        found = re.search(r"expected accuracy drop: (-?\d+(?:\.\d+)?) pt", header, re.I)
        assert found, f"{path}: no 'expected accuracy drop: X pt' in its header comment"
        assert float(found.group(1)) == pytest.approx(results[path.stem]["drop_points"], abs=0.05)
        assert path.read_text() == (root / "tfopt" / "configs" / path.name).read_text()
        load(path)


def test_pydantic_is_imported_only_by_tfopt_config():
    """Validation at the edge: technique packages receive validated options, not the schema."""
    import re
    from pathlib import Path

    root = Path(tfopt.__file__).parent
    pattern = re.compile(r"^\s*(import pydantic|from pydantic)", re.MULTILINE)
    offenders = [
        str(path.relative_to(root.parent))
        for path in sorted(root.rglob("*.py"))
        if "config" not in path.relative_to(root).parts[:1] and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_the_config_imports_no_technique():
    """`tfopt.config` validates every step type without importing the packages that run them (the
    old schema imported each step module to find its options: config -> step -> config)."""
    import json
    import subprocess
    import sys

    from tfopt._steps import STEPS
    from tfopt.config import STEP_CONFIGS

    assert set(STEP_CONFIGS) == set(STEPS)
    code = (
        "import json, sys\n"
        "import tfopt.config\n"
        "steps = tfopt.config.validate_steps([{'type': t} for t in tfopt.config.STEP_CONFIGS])\n"
        "print(json.dumps([[s.type for s in steps], sorted(sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    types, modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert types == list(STEP_CONFIGS)
    techniques = (
        "prune",
        "quantize",
        "cluster",
        "lowrank",
        "distill",
        "tune",
        "auto",
        "export",
        "bench",
        "train",
        "robust",
    )
    loaded = [m for m in modules if m.split(".")[:2][-1] in techniques and m.startswith("tfopt.")]
    assert loaded == []
    assert "tensorflow" not in modules
