"""``scripts/gpu_check.py`` away from a GPU: every check reported as not run, and the founding command's shape
(the one check that needs most set-up) run on the CPU at a tiny size without fp16."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report without CUDA")
def test_without_cuda_every_check_is_reported_as_not_run(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(report)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in report.read_text().splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    assert len(rows) == 4 and all("| not run |" in row and "no CUDA device" in row for row in rows)


@pytest.mark.slow  # a whole train_and_eval.py run in a subprocess: ~30 s
def test_founding_command_shape_runs_on_cpu_at_a_tiny_size(tmp_path: Path, monkeypatch) -> None:
    gpu_check = _gpu_check()
    monkeypatch.setattr(
        gpu_check, "PYTHIA_410M_SHAPE", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    )
    command = gpu_check.founding_command(tmp_path)
    command.remove("--fp16")  # CUDA only
    _, status, _, last = gpu_check.run_check("founding", [*command, "--threads", "1"], timeout=120)
    assert status == "ok", last
    assert (tmp_path / "run" / "metrics.json").is_file()
