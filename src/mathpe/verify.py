"""``mathpe verify``: the verification table the project was founded on, measured on this machine.

For every PE, in mathpe's decoder and in swapped GPT-NeoX and Llama models, on every available device
(CPU; CUDA when present) and dtype (fp32, bf16; fp16 on CUDA): forward passes at lengths 64..4096, a
backward pass, and cached decoding against uncached (step-by-step logits within the dtype's tolerance;
greedy generation identical in fp32). Every row is measured, nothing is assumed; the exit status is
non-zero when any row fails.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from mathpe.data.tokenizer import digit_options
from mathpe.errors import ConfigError
from mathpe.eval.report import markdown_table, write_json
from mathpe.model import MathPEConfig, MathPEForCausalLM
from mathpe.pe import list_pes, pe_class

VOCAB = 64
CONTEXT = 512
LENGTHS = (64, 256, 1024, 4096)
QUICK_LENGTHS = (64, 256)
#: Largest |cached - uncached| logit difference accepted per dtype (logits of a random tiny model are O(1)).
CACHE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2, torch.float16: 1e-2}


@dataclass
class VerifyRow:
    model: str
    pe: str
    device: str
    dtype: str
    forward: str = "-"
    backward: str = "-"
    cache: str = "-"
    seconds: float = 0.0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


def build_mathpe(pe: str) -> PreTrainedModel:
    config = MathPEConfig(
        pe=pe, pe_options=digit_options(pe), vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4,
        max_position_embeddings=CONTEXT, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return MathPEForCausalLM(config)


def build_gpt_neox(pe: str) -> PreTrainedModel:
    from mathpe.hf import swap_positional_encoding

    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=CONTEXT, rotary_pct=0.25, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return swap_positional_encoding(GPTNeoXForCausalLM(config), pe, **digit_options(pe))


def build_llama(pe: str) -> PreTrainedModel:
    from mathpe.hf import swap_positional_encoding

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=CONTEXT, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return swap_positional_encoding(LlamaForCausalLM(config), pe, **digit_options(pe))


MODELS: dict[str, Callable[[str], PreTrainedModel]] = {
    "mathpe": build_mathpe,
    "gpt-neox": build_gpt_neox,
    "llama": build_llama,
}


def devices_and_dtypes() -> list[tuple[str, torch.dtype]]:
    pairs = [("cpu", torch.float32), ("cpu", torch.bfloat16)]
    if torch.cuda.is_available():
        pairs += [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)]
    return pairs


def check_forward(model: PreTrainedModel, pe: str, device: str, lengths: tuple[int, ...]) -> str:
    """Forward at each length: finite logits on the right device; a PE with a position limit (a table) must
    refuse lengths past it."""
    limit = pe_class(pe).position_limit(CONTEXT)
    passed = []
    for length in lengths:
        ids = torch.randint(2, VOCAB, (1, length), device=device)
        if limit is not None and length > limit:
            try:
                model(ids)
            except ConfigError:
                passed.append(f"{length}:refused")
                continue
            raise AssertionError(f"{pe} accepted length {length} past its limit of {limit} positions")
        with torch.no_grad():
            logits = model(ids).logits
        if logits.device.type != device or not torch.isfinite(logits).all():
            raise AssertionError(
                f"length {length}: logits on {logits.device} finite={bool(torch.isfinite(logits).all())}"
            )
        passed.append(str(length))
    return " ".join(passed)


def check_backward(model: PreTrainedModel, device: str) -> str:
    ids = torch.randint(2, VOCAB, (2, 64), device=device)
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    model.eval()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise AssertionError("missing or non-finite gradients")
    return f"loss {loss.item():.2f}"


@torch.no_grad()
def check_cache(model: PreTrainedModel, device: str, dtype: torch.dtype) -> str:
    """Step-by-step cached logits against one full forward; in fp32 also greedy generate with/without cache."""
    ids = torch.randint(2, VOCAB, (1, 24), device=device)
    full = model(ids, use_cache=False).logits.float()
    out = model(ids[:, :8], use_cache=True)
    steps, cache = [out.logits.float()], out.cache
    for t in range(8, ids.shape[1]):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(out.logits.float())
        cache = out.cache
    difference = (torch.cat(steps, 1) - full).abs().max().item()
    if difference > CACHE_TOLERANCE[dtype]:
        raise AssertionError(f"cached logits differ by {difference:.2e} (> {CACHE_TOLERANCE[dtype]:.0e})")
    if dtype == torch.float32:
        kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
        if not torch.equal(
            model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs)
        ):
            raise AssertionError("greedy generation differs with and without cache")
        return f"max diff {difference:.0e}, greedy equal"
    return f"max diff {difference:.0e}"


def verify_one(
    model_name: str, pe: str, device: str, dtype: torch.dtype, lengths: tuple[int, ...]
) -> VerifyRow:
    row = VerifyRow(model_name, pe, device, str(dtype).removeprefix("torch."))
    started = time.monotonic()
    torch.manual_seed(0)
    try:
        model = MODELS[model_name](pe).to(device=device, dtype=dtype).eval()
        for name, check in (
            ("forward", lambda: check_forward(model, pe, device, lengths)),
            ("backward", lambda: check_backward(model, device)),
            ("cache", lambda: check_cache(model, device, dtype)),
        ):
            try:
                setattr(row, name, check())
            except Exception as error:  # every failure is reported in its row, then the run goes on
                setattr(row, name, "FAIL")
                row.errors.append(f"{name}: {type(error).__name__}: {error}")
    except Exception as error:
        row.errors.append(f"build: {type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}")
    row.ok = not row.errors
    row.seconds = round(time.monotonic() - started, 2)
    return row


def run_verification(json_path: str | None = None, quick: bool = False, pes: list[str] | None = None) -> bool:
    """Run every check, print the table, optionally write JSON; True when every row passed."""
    lengths = QUICK_LENGTHS if quick else LENGTHS
    rows = [
        verify_one(model_name, pe, device, dtype, lengths)
        for device, dtype in devices_and_dtypes()
        for model_name in MODELS
        for pe in (pes or list_pes())
    ]
    table = markdown_table(
        [
            "model",
            "PE",
            "device",
            "dtype",
            "forward lengths",
            "backward",
            "cached vs uncached",
            "s",
            "result",
        ],
        [
            [
                r.model,
                r.pe,
                r.device,
                r.dtype,
                r.forward,
                r.backward,
                r.cache,
                f"{r.seconds:.1f}",
                "ok" if r.ok else "FAIL",
            ]
            for r in rows
        ],
    )
    print(table)
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"FAIL {row.model}/{row.pe}/{row.device}/{row.dtype}: " + " | ".join(row.errors))
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    if json_path:
        write_json(Path(json_path), [asdict(r) for r in rows])
    return not failed
