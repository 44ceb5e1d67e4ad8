"""Shared test settings: one thread (tiny tensors are faster so, and runs are repeatable), seeded RNG, and the
test tiers (docs/testing.md): the fast default tier, ``integration`` (end-to-end runs) and ``slow``."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from mathpe.pe import list_pes

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA"))]

#: The PEs that a test parametrised over every registry PE runs in the fast tier: one of each kind (rotary,
#: additive, bias, none), among them a token-aware PE (abacus) and one that reads the hidden states
#: (math_adaptive). The other PEs of such a sweep are marked ``slow``.
FAST_TIER_PES = ("rope", "abacus", "alibi", "math_adaptive", "nope")

#: End-to-end tests (a subprocess, the whole pipeline, a real run that is resumed) in files whose other tests
#: are fast; files that are end-to-end throughout set ``pytestmark = pytest.mark.integration`` themselves.
INTEGRATION_TESTS = (
    "tests/test_artifacts.py::test_saved_folders_load_with_transformers_alone_and_are_refused_without_remote_code",
    "tests/test_bench.py::test_smoke_run_reports_every_section",
    "tests/test_bench.py::test_every_ratio_is_positive_and_finite",
    "tests/test_bench.py::test_missed_targets_are_listed",
    "tests/test_cli.py::test_founding_command_with_a_local_gpt_neox_on_gsm8k",
    "tests/test_cli.py::test_fp16_without_cuda_is_a_clear_error_from_the_console_command",
    "tests/test_cli.py::test_resume_after_a_kill_or_sigterm_matches_the_uninterrupted_run",
    "tests/test_cli.py::test_two_process_data_parallel_matches_one_process_with_the_combined_batch",
    "tests/test_cli.py::test_compare_writes_one_table_and_one_plot",
    "tests/test_compare_ray.py::test_ray_runs_give_the_local_comparison_and_resume_like_local_runs",
    "tests/test_curriculum.py::test_a_resumed_curriculum_run_ends_with_the_uninterrupted_runs_weights",
    "tests/test_data_loaders.py::test_offline_hub_in_a_fresh_interpreter",
    "tests/test_errors.py::test_an_internal_error_keeps_its_traceback_and_exits_1",
    "tests/test_gpu_check.py::test_without_cuda_every_check_is_reported_as_not_run",
    "tests/test_pretrain.py::test_pretrain_writes_a_plain_gpt_neox_folder_and_resumes",
    "tests/test_run_folders.py::test_compare_into_an_existing_comparison_needs_resume_or_overwrite",
    "tests/test_verify.py::test_verify_command_passes_and_writes_json",
)

#: Unit tests that are slow because they go through a whole data set.
SLOW_TESTS = (
    "tests/test_grading.py::test_gsm8k_gold_answers_grade_correct",
    "tests/test_grading.py::test_math500_gold_solutions_grade_correct",
    "tests/test_grading.py::test_math500_solutions_match_their_answer_field",
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by ``-m``
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests named above, and the PEs outside ``FAST_TIER_PES`` in every sweep over all PEs."""
    listed = dict.fromkeys(INTEGRATION_TESTS, pytest.mark.integration) | dict.fromkeys(
        SLOW_TESTS, pytest.mark.slow
    )
    _check_listed_tests_exist(items, listed)
    sweeps: dict[tuple[str, str], set[str]] = defaultdict(set)  # (test, argument) -> its values
    for item in items:
        test = _test_id(item)
        if test in listed:
            item.add_marker(listed[test])
        for argument, value in _params(item).items():
            sweeps[test, argument].add(value)
    every_pe = set(list_pes())
    for item in items:
        for argument, value in _params(item).items():
            if sweeps[_test_id(item), argument] >= every_pe and value not in FAST_TIER_PES:
                item.add_marker(pytest.mark.slow)


def _test_id(item: pytest.Item) -> str:
    """``tests/test_x.py::test_y`` without the parameters."""
    return item.nodeid.partition("[")[0]


def _params(item: pytest.Item) -> dict[str, str]:
    """The item's string parameters (a PE sweep's among them) by argument name."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return {argument: value for argument, value in params.items() if isinstance(value, str)}


def _check_listed_tests_exist(items: list[pytest.Item], listed: dict[str, pytest.MarkDecorator]) -> None:
    """A renamed test would silently fall back into the fast tier: name it instead."""
    missing_pes = set(FAST_TIER_PES) - set(list_pes())
    if missing_pes:
        raise pytest.UsageError(
            f"tests/conftest.py: FAST_TIER_PES names {sorted(missing_pes)}, not registry PEs"
        )
    modules = {
        item.nodeid.partition("::")[0]: item.module for item in items if isinstance(item, pytest.Function)
    }
    for test in listed:
        path, _, name = test.partition("::")
        if path in modules and not hasattr(modules[path], name):
            raise pytest.UsageError(
                f"tests/conftest.py names {test}, which {path} does not define; update the list"
            )
