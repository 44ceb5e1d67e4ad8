"""7. CUDA: sections 1-6 in bfloat16, training throughput and MFU, and ALiBi through ``flex_attention``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from mathpe.attention import build_pe_context, pe_attention
from mathpe.bench.models import NEOX_SHAPES, neox, swapped, train_step
from mathpe.bench.report import Table
from mathpe.bench.sections import MIB, SECTIONS, Setting, Sizes
from mathpe.errors import error_summary
from mathpe.pe import PEShape, build_pe

#: Dense bfloat16 peak FLOP/s by device name fragment (vendor datasheets, SXM parts), for MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def cuda_tables(sizes: Sizes) -> Iterator[Table]:
    """Section 7 when CUDA is present (one table each); a single note table otherwise."""
    if not torch.cuda.is_available():
        table = Table("cuda", "7. CUDA", [])
        table.notes.append("Skipped: no CUDA device (torch.cuda.is_available() is False).")
        yield table
        return
    setting = Setting(torch.device("cuda"), torch.bfloat16, sizes, "cuda_", "7. CUDA bf16 / ")
    for section in SECTIONS:
        yield section(setting)
    yield throughput(setting)
    yield flex_alibi(setting, compiled=True)


def training_flops(model: torch.nn.Module, tokens: int, seq: int) -> float:
    """FLOPs of one forward+backward over ``tokens`` tokens (PaLM, appendix B): ``6 N + 12 layers hidden seq``.

    N counts the matrices a token goes through: every parameter but the input embedding, plus the LM head.
    """
    config = model.config
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    parameters = sum(p.numel() for p in model.parameters()) - embedding.numel()
    if head is embedding:  # tied: the shared matrix was just subtracted, but the head still multiplies
        parameters += head.numel()
    per_token = 6 * parameters + 12 * config.num_hidden_layers * config.hidden_size * seq
    return float(per_token * tokens)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` from ``PEAK_BF16_FLOPS``, or None for a device not listed."""
    name = torch.cuda.get_device_name(device)
    return next((flops for fragment, flops in PEAK_BF16_FLOPS.items() if fragment in name), None)


def throughput(setting: Setting) -> Table:
    """Training tokens/s and model FLOPs utilisation of a Pythia-shaped model, native and swapped to ``rope``."""
    sizes = setting.sizes
    shape = NEOX_SHAPES[sizes.throughput_shape]
    batch, seq = sizes.throughput_batch, sizes.throughput_seq
    table = setting.table(
        "throughput",
        f"Training throughput: {shape.name}-shaped GPT-NeoX, batch {batch}, seq {seq}, forward+backward",
        ["model", "tokens_per_s", "tflops_per_s", "mfu", "time_ratio_vs_native", "peak_mib"],
    )
    native = setting.place(neox(shape, seq), train=True)
    models = {"transformers GPT-NeoX": native, "mathpe-swapped rope": swapped(native, "rope").train()}
    tokens = setting.tokens(batch, seq, shape.vocab)
    result = setting.measure({name: train_step(model, tokens) for name, model in models.items()}, memory=True)
    flops = training_flops(native, batch * seq, seq)
    peak = peak_flops(setting.device)
    for name in models:
        achieved = flops / result.median(name)
        table.add(
            model=name,
            tokens_per_s=batch * seq / result.median(name),
            tflops_per_s=achieved / 1e12,
            mfu=None if peak is None else achieved / peak,
            time_ratio_vs_native=result.ratio(name, "transformers GPT-NeoX"),
            peak_mib=result.peak_bytes[name] / MIB,
        )
    table.notes.append(
        f"MFU: 6 N + 12 layers hidden seq FLOPs per token over the dense bf16 peak of {torch.cuda.get_device_name()}"
        + ("" if peak else " (not in PEAK_BF16_FLOPS: MFU not reported)")
        + "."
    )
    return table


def flex_alibi(setting: Setting, *, compiled: bool) -> Table:
    """ALiBi with learnable slopes: ``flex_attention`` with a ``score_mod`` against mathpe's SDPA float mask.

    Attention alone, forward+backward with gradients into q, k, v and the slopes; forward only on the CPU,
    where flex_attention has no backward. ``compiled=False`` runs flex_attention eagerly (its unfused
    reference, slow but exact: the smoke test runs this code so on the CPU).
    """
    sizes = setting.sizes
    shape, batch, seq = sizes.shape, sizes.batch, max(sizes.seqs)
    backward = setting.device.type != "cpu"
    table = setting.table(
        "flex_alibi",
        f"ALiBi attention via flex_attention against the SDPA float mask (batch {batch}, {shape.heads} heads, "
        f"seq {seq}, head dim {shape.head_dim}; attention forward{'+backward' if backward else ''})",
        ["path", "ms", "time_ratio_vs_float_mask", "peak_mib", "memory_ratio_vs_float_mask", "max_abs_diff"],
    )
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        table.notes.append("torch.nn.attention.flex_attention is not available in this torch: skipped.")
        return table
    device, dtype = setting.device, setting.dtype
    pe = build_pe("alibi", PEShape(shape.heads, shape.head_dim, shape.hidden, seq)).to(device)
    query, key, value = (
        torch.randn(
            batch, shape.heads, seq, shape.head_dim, device=device, dtype=dtype, requires_grad=backward
        )
        for _ in range(3)
    )
    grad_output = torch.randn_like(query)
    embeddings = torch.zeros(batch, seq, shape.hidden, device=device, dtype=dtype)
    leaves = (query, key, value, pe.slope_scale)

    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return score - pe.slopes[h] * pe.slope_scale[h] * (q_idx - kv_idx)

    def causal(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return q_idx >= kv_idx

    block_mask = create_block_mask(causal, None, None, seq, seq, device=device)
    attend = torch.compile(flex_attention) if compiled else flex_attention

    def float_mask() -> torch.Tensor:
        context = build_pe_context(pe, inputs_embeds=embeddings)
        return pe_attention(query, key, value, context, cache=None, layer_idx=0)

    def flex() -> torch.Tensor:
        return attend(query, key, value, score_mod=score_mod, block_mask=block_mask)

    def step(forward: Callable[[], torch.Tensor]) -> None:
        if not backward:
            with torch.no_grad():
                forward()
            return
        forward().backward(grad_output)
        for leaf in leaves:
            leaf.grad = None

    try:
        with torch.no_grad():
            difference = (flex().float() - float_mask().float()).abs().max().item()
        result = setting.measure(
            {"SDPA float mask": lambda: step(float_mask), "flex_attention": lambda: step(flex)}, memory=True
        )
    except Exception as error:  # whatever flex_attention cannot do here (compile, backward), the report says
        table.notes.append(f"flex_attention failed here: {type(error).__name__}: {error_summary(error)}")
        return table
    for name in ("SDPA float mask", "flex_attention"):
        table.add(
            path=name,
            ms=1000 * result.median(name),
            time_ratio_vs_float_mask=result.ratio(name, "SDPA float mask"),
            peak_mib=result.peak_bytes[name] / MIB,
            memory_ratio_vs_float_mask=result.peak_bytes[name] / result.peak_bytes["SDPA float mask"],
            max_abs_diff=0.0 if name == "SDPA float mask" else difference,
        )
    table.notes.append(
        "flex_attention"
        + (" compiled with torch.compile" if compiled else " run eagerly (unfused reference)")
        + ": the bias is computed inside the kernel from the per-head slopes, and the slope gradient flows "
        "through the captured parameter, so no (heads, L, L) mask is built and no attention matrix is stored."
    )
    return table
