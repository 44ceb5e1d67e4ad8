"""``mathpe compare --launcher ray``: a Ray task per run, the same comparison as the local launcher."""

from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from mathpe.cli.main import main
from mathpe.train import compare
from mathpe.train.config import RunConfig
from test_cli import TINY_ADDITION
from test_run_folders import one_error_line

STUDY = ["compare", "--pe", "rope,alibi", *TINY_ADDITION, "--max_steps", "4", "--save_steps", "2",
         "--logging_steps", "1", "--seeds", "0"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--launcher", "slurm"], "--launcher 'slurm' is not one of: local, ray"),
        (
            ["--ray_address", "10.0.0.1:6379"],
            "--ray_address '10.0.0.1:6379' needs --launcher ray, not 'local'",
        ),
    ],
)
def test_a_bad_launcher_setting_is_one_error_line(flags, message, tmp_path, capsys):
    assert main([*STUDY, *flags, "--output_dir", str(tmp_path)]) == 2
    assert one_error_line(capsys) == f"mathpe: error: {message}"
    assert not any(tmp_path.iterdir())  # refused before any run started


def test_the_ray_launcher_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` raises ImportError
    assert main([*STUDY, "--launcher", "ray", "--output_dir", str(tmp_path)]) == 2
    assert one_error_line(capsys) == (
        'mathpe: error: --launcher ray needs Ray, which is not installed: pip install "mathpe[ray]"'
    )


class _Ref:
    """A fake task's result: its value or the error it ended with."""

    def __init__(self, **outcome: Any) -> None:
        self.__dict__.update(outcome)


class FakeRay:
    """The part of Ray's API ``launch_runs`` uses, recording what it asks for; tasks run when submitted."""

    exceptions = SimpleNamespace(RayError=RuntimeError)

    def __init__(self, gpus: float) -> None:
        self.gpus, self.initialized, self.calls = gpus, False, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **options: Any) -> None:
        self.initialized = True
        self.calls.append(("init", options))

    def shutdown(self) -> None:
        self.initialized = False
        self.calls.append(("shutdown", {}))

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 64.0, "GPU": self.gpus} if self.gpus else {"CPU": 64.0}

    def remote(self, **task_options: Any):
        def task(function):
            def options(**run_options: Any):
                def remote(run: RunConfig):
                    self.calls.append(("task", {**task_options, **run_options}))
                    try:
                        return _Ref(value=function(run))
                    except RuntimeError as error:
                        return _Ref(error=error)

                return SimpleNamespace(remote=remote)

            return SimpleNamespace(options=options)

        return task

    def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
        return refs[-num_returns:], refs[:-num_returns]  # the last submitted finishes first

    def get(self, ref: Any) -> Any:
        if hasattr(ref, "error"):
            raise ref.error
        return ref.value


def _summary_or_crash(config: RunConfig) -> dict[str, Any]:
    if config.pe == "alibi":
        raise RuntimeError("The worker died unexpectedly\nwhile executing the task")
    return {"pe": config.pe, "seed": config.seed, "ran": True}


@pytest.mark.parametrize(("gpus", "address"), [(0, None), (2.0, None), (0, "10.0.0.1:6379")])
def test_each_run_is_a_ray_task_asking_for_its_threads_and_a_gpu_where_there_are_some(
    gpus, address, monkeypatch
):
    fake = FakeRay(gpus)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(compare, "_run_one", _summary_or_crash)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address:
        monkeypatch.setenv("RAY_ADDRESS", address)
    runs = [RunConfig(pe=pe, threads=3) for pe in ("rope", "alibi", "nope")]

    results = list(compare.launch_runs(runs, jobs=2, launcher="ray"))

    assert [index for index, _ in results] == [2, 1, 0]  # as they finish
    assert results[0][1] == {"pe": "nope", "seed": 0, "ran": True}
    failed = results[1][1]  # a dead worker is a failed run, reported like a run that raised
    assert failed["pe"] == "alibi" and failed["error"] == (
        "RuntimeError: The worker died unexpectedly"  # its first line; all of it in the traceback
    )
    assert "Traceback" in failed["traceback"] and "while executing the task" in failed["traceback"]
    init = {"address": address} if address else {"num_cpus": 2 * 3, "include_dashboard": False}
    task = {"max_retries": 0, "num_cpus": 3, "num_gpus": 1 if gpus else 0}
    assert fake.calls == [("init", init), *[("task", task)] * 3, ("shutdown", {})]


def test_a_ray_instance_already_connected_is_used_and_left_running(monkeypatch):
    fake = FakeRay(0)
    fake.initialized = True
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(compare, "_run_one", _summary_or_crash)
    assert list(compare.launch_runs([RunConfig(threads=1)], jobs=4, launcher="ray", ray_address="x:1"))
    assert [call for call, _ in fake.calls] == ["task"]


def test_ray_runs_give_the_local_comparison_and_resume_like_local_runs(tmp_path):
    """Two PEs through a local Ray instance: the local launcher's numbers; --resume reads finished runs back
    and continues an interrupted one from its checkpoint."""
    pytest.importorskip("ray")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main([*STUDY, "--jobs", "1", "--output_dir", str(local)]) == 0
    assert main([*STUDY, "--launcher", "ray", "--jobs", "2", "--output_dir", str(on_ray)]) == 0
    expected = _numbers(local)
    assert _numbers(on_ray) == expected
    assert expected["runs"]["alibi-seed0"]["loss_history"]  # the comparison compares losses at every step

    # alibi was interrupted after its first checkpoint; rope had finished.
    for made_later in ("metrics.json", "model", "checkpoint-4"):
        path = on_ray / "alibi-seed0" / made_later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    rope_metrics = (on_ray / "rope-seed0" / "metrics.json").stat().st_mtime_ns
    assert main([*STUDY, "--launcher", "ray", "--jobs", "2", "--resume", "--output_dir", str(on_ray)]) == 0
    assert _numbers(on_ray) == expected
    assert (on_ray / "rope-seed0" / "metrics.json").stat().st_mtime_ns == rope_metrics
    assert "(1 runs read back from earlier, not timed)" in (on_ray / "comparison.md").read_text()
    resumed = json.loads((on_ray / "alibi-seed0" / "metrics.json").read_text())["train"]["resumed_from"]
    assert resumed == str(on_ray / "alibi-seed0" / "checkpoint-2")


def _numbers(output_dir) -> dict[str, Any]:
    """comparison.json's scores and each run's metrics and losses, without timings and paths."""
    comparison = json.loads((output_dir / "comparison.json").read_text())
    for row in comparison["pes"].values():
        row.pop("train_seconds_mean")
    runs = {}
    for run in ("rope-seed0", "alibi-seed0"):
        metrics = json.loads((output_dir / run / "metrics.json").read_text())
        runs[run] = {"datasets": metrics["datasets"], "loss_history": metrics["train"]["loss_history"]}
    return {"pes": comparison["pes"], "seeds": comparison["seeds"], "runs": runs}
