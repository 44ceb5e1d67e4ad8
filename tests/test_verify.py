"""``mathpe verify`` runs its checks and reports them honestly (a smoke test at small lengths)."""

from __future__ import annotations

import json

import torch

from mathpe.cli.main import main
from mathpe.verify import VerifyRow, verify_one


def test_verify_command_passes_and_writes_json(tmp_path, capsys):
    path = tmp_path / "verify.json"
    code = main(["verify", "--quick", "--pe", "rope,alibi,abacus,learned,math_adaptive", "--json", str(path)])
    assert code == 0
    rows = json.loads(path.read_text())
    assert len(rows) == 5 * 3 * 2  # PEs x models x (cpu fp32, cpu bf16)
    assert all(row["ok"] for row in rows)
    assert "30 passed, 0 failed" in capsys.readouterr().out


def test_a_broken_cache_is_reported_as_a_failure(monkeypatch):
    """The cache check can fail: a model whose cached steps drift is caught."""
    row = verify_one("mathpe", "rope", "cpu", torch.float32, (64,))
    assert row.ok

    def drifting_forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if kwargs.get("cache") is not None:
            output.logits = output.logits + 1e-2
        return output

    from mathpe.model import MathPEForCausalLM

    original = MathPEForCausalLM.forward
    monkeypatch.setattr(MathPEForCausalLM, "forward", drifting_forward)
    broken = verify_one("mathpe", "rope", "cpu", torch.float32, (64,))
    assert not broken.ok and broken.cache == "FAIL" and isinstance(broken, VerifyRow)
    assert any("cached logits differ" in error for error in broken.errors)
