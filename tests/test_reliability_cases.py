"""Issue 25's cases, one row each, with the test that pins it (the reliability suite as a table).

Each row names a case of the issue's "Why" section and the test (``module::function[id]``) that
fails on the code before its fix. The test below checks that every named test and table row
exists, so a renamed or dropped regression test is noticed here.
"""

import importlib

import pytest

CASES = [
    # tune mixes searches
    ("tune resumes a search with other data", "test_reliability_runs::test_tune_refuses_to_resume_another_search"),
    ("tune with another model or settings", "test_rundir::test_auto_cli_refuses_to_resume_another_model_data_or_settings"),
    ("two runs on one --out at once (no lock)", "test_reliability_runs::test_a_run_directory_in_use_is_refused_in_one_line[auto]"),
    # recipes
    ("a copied recipe replays another baseline.keras", "test_reliability_runs::test_a_copied_recipe_replays_its_own_baseline_or_nothing"),
    ("best.yaml names its files", "test_reliability_runs::test_tune_best_yaml_names_its_files_absolutely_with_the_model_sha256"),
    # bounded resources, bounded waits
    ("--workers 100000", "test_reliability_runs::test_workers_above_what_the_machine_can_run_are_refused[tune]"),
    ("the launcher outlives its parent", "test_reliability_runs::test_the_launcher_dies_with_its_parent"),
    ("multi_worker peer that never comes", "test_reliability_runs::test_a_multi_worker_peer_that_never_comes_is_one_line"),
    ("multi_worker peer that listens, never joins", "test_reliability_runs::test_a_multi_worker_peer_that_listens_but_never_joins_ends_the_command_in_one_line"),
    ("a command deaf to timeout's SIGTERM", "test_reliability_runs::test_the_guard_kills_a_command_deaf_to_sigterm"),
    ("bench --processes: a replica stalls at start", "test_reliability_runs::test_a_replica_that_stalls_while_starting_is_one_error_within_its_timeout"),
    ("bench --processes: a replica dies at start", "test_bench::test_a_replica_that_dies_while_starting_is_an_error_at_once"),
    ("--connect-timeout nan", "test_reliability_runs::test_a_connect_timeout_that_never_ends_is_refused[nan]"),
    # bad data, at load, for every command
    ("NaN in training inputs: run", "test_bad_inputs::test_cli_refuses_bad_npz_before_training[nan_in_x_train-run]"),
    ("NaN in training inputs: tune", "test_bad_inputs::test_cli_refuses_bad_npz_before_training[nan_in_x_train-tune]"),
    ("NaN in training inputs: auto", "test_bad_inputs::test_cli_refuses_bad_npz_before_training[nan_in_x_train-auto]"),
    ("inf in test inputs", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[inf_in_x_test]"),
    ("x/y length mismatch", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[x_y_length_mismatch]"),
    ("negative labels", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[negative_label]"),
    ("empty test split", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[empty_test_split]"),
    ("string arrays", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[string_inputs]"),
    ("one-hot labels", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[one_hot_labels]"),
    ("missing channel axis", "test_bad_inputs::test_from_npz_refuses_bad_data_in_one_line[channel_axis_missing_in_one_split]"),
    # wrong in silence
    ("QAT model exported as tflite-float16", "test_bad_inputs::test_qat_model_is_never_labelled_float16"),
    ("bench --robust-epsilon 1e9", "test_bad_inputs::test_bench_refuses_meaningless_settings_up_front[robust_epsilon_beyond_range]"),
    ("transfer: freezes every layer: run", "test_bad_inputs::test_transfer_that_freezes_every_layer_is_refused[run]"),
    ("transfer: freezes every layer: tune", "test_bad_inputs::test_transfer_that_freezes_every_layer_is_refused[tune]"),
    ("tune.space point that trains nothing", "test_bad_inputs::test_tune_space_without_never_may_freeze_every_layer_until_an_epoch"),
    ("multi_worker without TF_CONFIG", "test_train::test_strategy_errors_are_one_line"),
    ("multi_worker in tune (into best.yaml)", "test_bad_inputs::test_config_mistakes_are_one_line[tune_multi_worker]"),
    ("duplicate train: key", "test_bad_inputs::test_config_mistakes_are_one_line[duplicate_key]"),
    ("a truncated best artifact", "test_rundir::test_auto_never_trusts_a_damaged_artifact"),
    # refused wrongly
    ("learning_rate: 1e-3; formats: [tflm]", "test_bad_inputs::test_yaml_reads_numbers_as_written_and_finds_installed_tflm"),
    # unclear
    ("auto --max-flash 1B names the budget", "test_auto::test_cli_nothing_fits_writes_the_closest_and_names_the_budgets"),
    ("model.options.width=-5", "test_bad_inputs::test_config_mistakes_are_one_line[negative_width]"),
    ("bench --max-batch 0", "test_bad_inputs::test_bench_refuses_meaningless_settings_up_front[max_batch_zero]"),
    ("dangling --out of run/tune/auto", "test_reliability_runs::test_a_dangling_out_is_one_line_for_every_command[auto]"),
    ("dangling --out of export", "test_bad_inputs::test_export_refuses_outputs_in_one_line[dangling_symlink]"),
    ("export --out notes.md", "test_bad_inputs::test_export_refuses_outputs_in_one_line[existing_file]"),
    ("tfopt.export.export() on an existing file", "test_bad_inputs::test_export_api_never_replaces_a_file_unless_asked[existing_file]"),
]  # fmt: skip


def _ids(function) -> set[str]:
    """The ids pytest gives ``function``'s parametrized cases (explicit ids or plain values)."""
    ids = set()
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        if mark.kwargs.get("ids"):
            ids.update(mark.kwargs["ids"])
        elif isinstance(names, str) and "," not in names:
            ids.update(str(v) for v in values)
        else:
            ids.update("-".join(str(x) for x in v) for v in values)
    return ids


@pytest.mark.parametrize("case, test", CASES, ids=[c[0] for c in CASES])
def test_every_case_has_its_regression_test(case, test):
    module, _, name = test.partition("::")
    function, _, case_id = name.partition("[")
    found = getattr(importlib.import_module(module), function, None)
    assert callable(found), f"{case}: no test {test}"
    if case_id:
        assert case_id.rstrip("]") in _ids(found), f"{case}: {function} has no case {case_id}"
