"""The CUDA checks in one run (``make gpu-check``): CUDA test variants, ``mathpe verify`` on CUDA, bench section 6
at quick sizes, and the founding command's shape (LoRA + gradient checkpointing + fp16) on a random
Pythia-410M-shaped model; writes one Markdown report. The checks' time limits add up to under ten minutes.

Each check runs in its own process with a time limit and is reported as ok, failed (with its last output
line) or not run (with why), so one broken check never hides the others. On a machine without CUDA every
check says "not run". See docs/gpu-check.md for running it on a lent GPU machine without internet.

Usage: python scripts/gpu_check.py [REPORT.md]   (default: $OUT/gpu_check.md, else gpu_check.md)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
#: A random model of Pythia-410M's shape: what the founding command fine-tunes, at a size that trains a few
#: steps in seconds on a GPU.
PYTHIA_410M_SHAPE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}


def founding_command(workdir: Path) -> list[str]:
    """Build the random model, its tokenizer and a GSM8K fixture folder; the founding command over them."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mathpe.data import FIXTURES_DIR
    from mathpe.data.corpus import train_bpe_tokenizer

    data = workdir / "data" / "gsm8k"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        shutil.copy(FIXTURES_DIR / "gsm8k.jsonl", data / f"{split}.jsonl")
    texts = (FIXTURES_DIR / "gsm8k.jsonl").read_text().splitlines()
    tokenizer = train_bpe_tokenizer(texts, vocab_size=512)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        intermediate_size=4 * PYTHIA_410M_SHAPE["hidden_size"],
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **PYTHIA_410M_SHAPE,
    )
    model_dir = workdir / "pythia-410m-shape"
    GPTNeoXForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return [
        sys.executable, str(ROOT / "scripts" / "train_and_eval.py"), "--pe", "alibi", "--model_size", str(model_dir),
        "--batch_size", "2", "--max_length", "512", "--use_lora", "--gradient_checkpointing", "--fp16",
        "--experiment_name", "gpu-check", "--datasets", "gsm8k", "--data_dir", str(workdir / "data"),
        "--max_steps", "10", "--eval_samples", "4", "--output_dir", str(workdir / "run"), "--quiet",
    ]  # fmt: skip


def run_check(name: str, command: list[str], timeout: float) -> tuple[str, str, float, str]:
    """(name, status, seconds, last output line) of one check run as a subprocess."""
    started = time.monotonic()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return name, "failed", time.monotonic() - started, f"timed out after {timeout:.0f} s"
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return name, "ok" if result.returncode == 0 else "failed", time.monotonic() - started, last[:200]


def main(report: Path) -> int:
    import transformers

    from mathpe.eval.report import markdown_table

    header = (
        f"# mathpe GPU check\n\ntorch {torch.__version__}, transformers {transformers.__version__}, "
        f"CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}\n\n"
    )
    python = sys.executable
    checks = [
        (
            "CUDA test variants",
            [python, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", "tests"],
            150,
        ),
        (
            "mathpe verify (cpu + cuda fp32/bf16/fp16)",
            [python, "-m", "mathpe.cli.main", "verify", "--quick"],
            100,
        ),
        (
            "bench section 6, quick",
            [python, "-m", "mathpe.cli.main", "bench", "--quick", "--sections", "cuda"],
            90,
        ),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if torch.cuda.is_available():
            checks.append(
                (
                    "founding command shape: Pythia-410M, LoRA, checkpointing, fp16",
                    founding_command(Path(workdir)),
                    150,
                )
            )
            rows = [run_check(*check) for check in checks]
        else:
            rows = [(name, "not run", 0.0, "no CUDA device") for name, _, _ in checks]
            rows.append(
                (
                    "founding command shape: Pythia-410M, LoRA, checkpointing, fp16",
                    "not run",
                    0.0,
                    "no CUDA device",
                )
            )
    body = markdown_table(
        ["check", "result", "s", "last line"],
        [[name, status, f"{seconds:.0f}", last.replace("|", "/")] for name, status, seconds, last in rows],
    )
    report.write_text(header + body)
    print(header + body)
    return 1 if any(status == "failed" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    default = Path(os.environ["OUT"]) / "gpu_check.md" if os.environ.get("OUT") else ROOT / "gpu_check.md"
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
