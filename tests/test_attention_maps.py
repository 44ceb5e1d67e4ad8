"""``mathpe attention``: a PNG of attention maps of a saved model (run folder or model folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import perturb_parameters
from mathpe.cli.main import main
from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.eval.attention_maps import write_attention_png
from mathpe.model import MathPEConfig, MathPEForCausalLM

PROMPT = "12+34="


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a tiny alibi decoder and its tokenizer in ``model/``."""
    tokenizer = ArithmeticTokenizer()
    config = MathPEConfig(
        pe="alibi", vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4
    )
    model = MathPEForCausalLM(config)
    perturb_parameters(model)
    root = tmp_path_factory.mktemp("run")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_attention_command_writes_the_maps_the_model_returns(run_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "maps.png"
    assert main(["attention", str(run_dir), "--prompt", PROMPT, "--layers", "0,1", "--heads", "1,3",
                 "--output", str(output)]) == 0  # fmt: skip
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = write_attention_png(run_dir / "model", PROMPT, tmp_path / "again.png", layers=[1], heads=[3])
    model = MathPEForCausalLM.from_pretrained(run_dir / "model").eval()
    ids = ArithmeticTokenizer.from_pretrained(run_dir / "model")(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids, output_attentions=True).attentions[1][0, 3]
    assert list(maps) == [(1, 3)]
    torch.testing.assert_close(maps[1, 3], expected, rtol=0, atol=0)
    assert maps[1, 3].shape == (len(PROMPT), len(PROMPT))


def test_attention_command_bad_input_is_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["attention", str(run_dir), "--prompt", PROMPT, "--layers", "5",
                 "--output", str(tmp_path / "x.png")]) == 2  # fmt: skip
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == "mathpe: error: layer 5 out of range; the model has 2 layers (0-1)"
    assert main(["attention", str(tmp_path), "--prompt", PROMPT]) == 2
    assert "is neither a run folder nor a saved model" in capsys.readouterr().err
