"""The benchmark's sections 1-5; each returns a ``Table`` (section 6, CUDA, reruns them in ``cuda.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from mathpe.attention import build_pe_context
from mathpe.bench.measure import Measurement, measure, memory_use
from mathpe.bench.models import (
    NEOX_SHAPES,
    Shape,
    generation,
    mathpe_decoder,
    neox,
    random_tokens,
    swapped,
    train_step,
    x_transformer,
    x_transformers_available,
)
from mathpe.bench.report import Table, Target
from mathpe.pe import list_pes, pe_class

MIB = 2**20

#: Targets of the issue, on the same run of the same machine.
PE_OVERHEAD_TARGET = Target("<=", 1.15)  # every PE's step time against nope, at the first (full: 512) length
BASELINE_TARGET = Target("<=", 1.0)  # mathpe rope against GPT-NeoX and x-transformers
SWAP_TARGET = Target("<=", 1.05)  # swapped rope model against the unswapped one, step and generate time
GENERATION_TARGET = Target(">=", 0.95)  # cached generation tokens/s against native GPT-NeoX
#: Scaling: step time grows at most as L^2 (log-log slope between the two longest lengths, with noise margin).
TIME_EXPONENT_TARGET = Target("<=", 2.2)
#: Scaling: bias PEs hold no (batch, heads, L, L) tensor per layer (in units of layers x batch x one bias).
PER_LAYER_TARGET = Target("<", 0.5)
SCALING_PES = ("rope", "alibi", "t5_relative", "fire")
#: Bias PEs against nope (``bias_attention``): step time at the shorter and the longer length, peak memory at
#: the longer one.
BIAS_TIME_TARGETS = (Target("<=", 1.15), Target("<=", 1.3))
BIAS_MEMORY_TARGET = Target("<=", 1.25)


@dataclass(frozen=True)
class Sizes:
    """Sizes of one benchmark profile (``PROFILES``)."""

    shape: Shape  # mathpe's decoder in sections 1, 2, 4 and 5, and its GPT-NeoX / x-transformers twins
    batch: int  # sections 1 and 2
    seqs: tuple[int, ...]  # section 1; section 2 uses the first
    swap_shapes: tuple[str, ...]  # section 3: keys of NEOX_SHAPES
    swap_every_pe: tuple[str, ...]  # section 3: shapes on which every PE is timed (the others: rope only)
    swap_batch: int
    swap_seq: int
    prompt: int  # sections 3 and 4: prompt length and new tokens of cached generation
    new_tokens: int
    gen_batches: tuple[int, ...]  # section 4
    scaling_seqs: tuple[int, ...]  # section 5
    scaling_batch: int
    bias_shape: Shape  # section 6: the decoder of the bias-attention comparisons ...
    bias_runs: tuple[tuple[int, int], ...]  # ... and the (batch, seq) of each
    throughput_shape: str  # section cuda: tokens/s and MFU of this NEOX_SHAPES model
    throughput_batch: int
    throughput_seq: int
    warmup: int
    repeats: int  # at least this many timed rounds per comparison ...
    min_seconds: float  # ... and more while a comparison's timed runs total less than this
    expected_minutes: str  # on this project's 2-core CPU machine at 1 thread, for the header


@dataclass(frozen=True)
class Setting:
    """Where a section runs: device, dtype, sizes; ``key_prefix`` / ``title_prefix`` mark a rerun (CUDA)."""

    device: torch.device
    dtype: torch.dtype
    sizes: Sizes
    key_prefix: str = ""
    title_prefix: str = ""

    def measure(self, sides: Mapping[str, Callable[[], object]], *, memory: bool = False) -> Measurement:
        sizes = self.sizes
        return measure(
            sides,
            warmup=sizes.warmup,
            repeats=sizes.repeats,
            min_seconds=sizes.min_seconds,
            device=self.device,
            memory=memory,
        )

    def table(self, key: str, title: str, columns: list[str]) -> Table:
        return Table(self.key_prefix + key, self.title_prefix + title, columns)

    def tokens(self, batch: int, seq: int, vocab: int) -> torch.Tensor:
        return random_tokens(batch, seq, vocab, self.device)

    def place(self, model: torch.nn.Module, *, train: bool) -> torch.nn.Module:
        """``model`` on this setting's device and dtype, in train or eval mode (dropout is 0 anyway)."""
        return model.to(device=self.device, dtype=self.dtype).train(train)

    def decoder(self, pe: str, max_position: int, *, train: bool, **options: object) -> torch.nn.Module:
        return self.place(mathpe_decoder(pe, self.sizes.shape, max_position, **options), train=train)


def _mib(value: int) -> float:
    return value / MIB


def _describe(shape: Shape) -> str:
    return f"hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads"


def pe_overhead(setting: Setting) -> Table:
    """1. Forward+backward step time and peak memory of every PE, as ratios to ``nope``."""
    sizes = setting.sizes
    table = setting.table(
        "pe_overhead",
        f"1. PE overhead: forward+backward of mathpe's decoder ({_describe(sizes.shape)}, batch {sizes.batch}), "
        "ratio to nope",
        [
            "pe",
            "kind",
            "seq",
            "step_ms",
            "time_ratio_vs_nope",
            "peak_mib",
            "memory_ratio_vs_nope",
            "target",
            "met",
        ],
    )
    models = {pe: setting.decoder(pe, max(sizes.seqs), train=True) for pe in list_pes()}
    for seq in sizes.seqs:
        tokens = setting.tokens(sizes.batch, seq, sizes.shape.vocab)
        result = setting.measure({pe: train_step(model, tokens) for pe, model in models.items()}, memory=True)
        for pe in models:
            ratio = result.ratio(pe, "nope")
            checked = seq == sizes.seqs[0] and pe != "nope"
            table.add(
                [("", PE_OVERHEAD_TARGET, ratio)] if checked else (),
                pe=pe,
                kind=pe_class(pe).kind,
                seq=seq,
                step_ms=1000 * result.median(pe),
                time_ratio_vs_nope=ratio,
                peak_mib=_mib(result.peak_bytes[pe]),
                memory_ratio_vs_nope=result.peak_bytes[pe] / result.peak_bytes["nope"],
            )
    table.notes.append(
        f"Target {PE_OVERHEAD_TARGET} x nope at seq {sizes.seqs[0]} (the issue's 512 in the full run). Digit-aware "
        "PEs get digit token ids, so a third of the random tokens are digits."
    )
    return table


def against_baselines(setting: Setting) -> Table:
    """2. mathpe's decoder against transformers' GPT-NeoX and x-transformers of the same shape."""
    sizes = setting.sizes
    seq = sizes.seqs[0]
    table = setting.table(
        "baselines",
        f"2. mathpe against transformers and x-transformers ({_describe(sizes.shape)}, batch {sizes.batch}, "
        f"seq {seq}, forward+backward)",
        ["comparison", "mathpe_ms", "other_ms", "time_ratio", "memory_ratio", "target", "met"],
    )
    models = {
        "mathpe rope": setting.decoder("rope", seq, train=True),
        "transformers GPT-NeoX": setting.place(neox(sizes.shape, seq), train=True),
    }
    pairs = [("mathpe rope", "transformers GPT-NeoX", BASELINE_TARGET)]
    if x_transformers_available():
        for pe, name, options in (
            ("rope", "x-transformers rotary", {}),
            ("alibi", "x-transformers ALiBi", {}),
            ("alibi", "x-transformers ALiBi", {"learnable_slopes": False}),
            ("t5_relative", "x-transformers T5 bias", {}),
        ):
            ours = f"mathpe {pe}" + (" (fixed slopes)" if options else "")
            models.setdefault(ours, setting.decoder(pe, seq, train=True, **options))
            models.setdefault(name, setting.place(x_transformer(sizes.shape, seq, pe), train=True))
            pairs.append((ours, name, BASELINE_TARGET if pe == "rope" else None))
    else:
        table.notes.append(
            "x-transformers comparisons skipped: x-transformers is not installed (pip install 'mathpe[bench]')."
        )
    tokens = setting.tokens(sizes.batch, seq, sizes.shape.vocab)
    result = setting.measure({name: train_step(model, tokens) for name, model in models.items()}, memory=True)
    for ours, other, target in pairs:
        ratio = result.ratio(ours, other)
        table.add(
            [("", target, ratio)] if target else (),
            comparison=f"{ours} / {other}",
            mathpe_ms=1000 * result.median(ours),
            other_ms=1000 * result.median(other),
            time_ratio=ratio,
            memory_ratio=result.peak_bytes[ours] / result.peak_bytes[other],
        )
    table.notes.append(
        "Ratios below 1: mathpe is faster / smaller. Same shape on both sides: pre-LayerNorm blocks, GELU MLP 4x, "
        "SDPA attention, whole-head rotary (GPT-NeoX with sequential residual, rotary fraction 1.0). "
        "x-transformers' ALiBi has fixed slopes (mathpe's default learns them; the fixed-slopes row matches it); "
        "its T5 bias cannot use SDPA and is recomputed in every layer."
    )
    return table


def swapped_models(setting: Setting) -> Table:
    """3. Random GPT-NeoX models with their PE swapped, against the same model unswapped."""
    sizes = setting.sizes
    table = setting.table(
        "swapped",
        f"3. Swapped GPT-NeoX against the unswapped model (step: batch {sizes.swap_batch}, seq {sizes.swap_seq}; "
        f"generate: {sizes.new_tokens} tokens after {sizes.prompt}); time ratios swapped / unswapped",
        ["model", "pe", "unswapped_step_ms", "step_time_ratio", "generate_time_ratio", "target", "met"],
    )
    max_position = max(2048, sizes.swap_seq, sizes.prompt + sizes.new_tokens)
    for key in sizes.swap_shapes:
        shape = NEOX_SHAPES[key]
        base = setting.place(neox(shape, max_position), train=True)
        tokens = setting.tokens(sizes.swap_batch, sizes.swap_seq, shape.vocab)
        prompt = setting.tokens(sizes.swap_batch, sizes.prompt, shape.vocab)
        models = {"unswapped": base}
        models.update(
            (pe, swapped(base, pe)) for pe in (list_pes() if key in sizes.swap_every_pe else ["rope"])
        )
        step = setting.measure({name: train_step(model.train(), tokens) for name, model in models.items()})
        generate = setting.measure(
            {name: generation(model.eval(), prompt, sizes.new_tokens) for name, model in models.items()}
        )
        for pe in list(models)[1:]:
            ratios = [step.ratio(pe, "unswapped"), generate.ratio(pe, "unswapped")]
            table.add(
                [("step", SWAP_TARGET, ratios[0]), ("generate", SWAP_TARGET, ratios[1])]
                if pe == "rope"
                else (),
                model=shape.name,
                pe=pe,
                unswapped_step_ms=1000 * step.median("unswapped"),
                step_time_ratio=ratios[0],
                generate_time_ratio=ratios[1],
            )
        del base, models
    table.notes.append(
        "The unswapped model runs transformers' own RoPE (Pythia's: partial rotary 0.25, parallel residual). "
        f"`rope` reproduces it exactly (target {SWAP_TARGET}); the other rows are each PE's cost on a "
        "pretrained-model architecture. Only rope is timed on the shapes not listed in the profile's "
        f"swap_every_pe ({', '.join(sizes.swap_every_pe) or 'none'})."
    )
    return table


def cached_generation(setting: Setting) -> Table:
    """4. Cached generation tokens/s of every PE against transformers' native GPT-NeoX of the same shape."""
    sizes = setting.sizes
    table = setting.table(
        "generation",
        f"4. Cached generation: {sizes.new_tokens} new tokens after a {sizes.prompt}-token prompt "
        f"({_describe(sizes.shape)}), tokens/s ratio to native GPT-NeoX",
        [
            "pe",
            "batch",
            "tokens_per_s",
            "native_tokens_per_s",
            "tokens_per_s_ratio_vs_native",
            "target",
            "met",
        ],
    )
    max_position = sizes.prompt + sizes.new_tokens
    native = setting.place(neox(sizes.shape, max_position), train=False)
    models = {pe: setting.decoder(pe, max_position, train=False) for pe in list_pes()}
    for batch in sizes.gen_batches:
        prompt = setting.tokens(batch, sizes.prompt, sizes.shape.vocab)
        runs = {"native": generation(native, prompt, sizes.new_tokens)}
        runs.update({pe: generation(model, prompt, sizes.new_tokens) for pe, model in models.items()})
        result = setting.measure(runs)
        native_rate = batch * sizes.new_tokens / result.median("native")
        for pe in models:
            ratio = result.ratio("native", pe)  # native time / PE time = PE tokens/s / native tokens/s
            table.add(
                [("", GENERATION_TARGET, ratio)],
                pe=pe,
                batch=batch,
                tokens_per_s=batch * sizes.new_tokens / result.median(pe),
                native_tokens_per_s=native_rate,
                tokens_per_s_ratio_vs_native=ratio,
            )
    table.notes.append(
        "Greedy `generate` with a DynamicCache on both sides; the time includes the prompt's forward. "
        "Native: transformers' GPTNeoXForCausalLM of the same shape with its own RoPE."
    )
    return table


def scaling(setting: Setting) -> Table:
    """5. Step time and peak memory against sequence length for rope and the bias PEs."""
    sizes = setting.sizes
    shape = sizes.shape
    batch = sizes.scaling_batch
    table = setting.table(
        "scaling",
        f"5. Scaling with sequence length ({_describe(shape)}, batch {batch}, forward+backward)",
        [
            "pe",
            "seq",
            "step_ms",
            "time_ratio_vs_rope",
            "time_exponent",
            "peak_mib",
            "pe_context_mib",
            "per_layer_batch_copies",
            "target",
            "met",
        ],
    )
    max_position = max(sizes.scaling_seqs)
    variants: dict[str, tuple[str, dict[str, object]]] = {pe: (pe, {}) for pe in SCALING_PES}
    variants["alibi (fixed slopes)"] = ("alibi", {"learnable_slopes": False})
    models = {
        name: setting.decoder(pe, max_position, train=True, **options)
        for name, (pe, options) in variants.items()
    }
    previous: dict[str, float] = {}  # each model's median seconds at the previous length
    previous_seq = 0
    for seq in sizes.scaling_seqs:
        tokens = setting.tokens(batch, seq, shape.vocab)
        result = setting.measure(
            {name: train_step(model, tokens) for name, model in models.items()}, memory=True
        )
        one_bias = shape.heads * seq * seq * 4  # bytes of one float32 (heads, L, L) bias
        last = seq == sizes.scaling_seqs[-1]
        seconds = {name: result.median(name) for name in models}
        for name, model in models.items():
            exponent = (
                math.log(seconds[name] / previous[name]) / math.log(seq / previous_seq) if previous else None
            )
            checks = (
                [("time exponent", TIME_EXPONENT_TARGET, exponent)] if last and exponent is not None else []
            )
            context_bytes = copies = None
            if pe_class(model.config.pe).kind == "bias":
                context_bytes = _pe_context_bytes(model, tokens, setting.device)
                extra = result.peak_bytes[name] - result.peak_bytes["rope"] - context_bytes
                copies = extra / (shape.layers * batch * one_bias)
                if last:
                    checks.append(("per-layer copies", PER_LAYER_TARGET, copies))
            table.add(
                checks,
                pe=name,
                seq=seq,
                step_ms=1000 * seconds[name],
                time_ratio_vs_rope=result.ratio(name, "rope"),
                time_exponent=exponent,
                peak_mib=_mib(result.peak_bytes[name]),
                pe_context_mib=None if context_bytes is None else _mib(context_bytes),
                per_layer_batch_copies=copies,
            )
        previous, previous_seq = seconds, seq
    table.notes.extend(
        [
            "time_exponent: log-log slope of step time from the previous length (1: linear; attention alone "
            f"tends to 2); checked at the longest length, target {TIME_EXPONENT_TARGET}.",
            "pe_context_mib: what the PE context holds through a step, built once per forward for all layers "
            "(the bias folded with the causal mask, and what autograd keeps for the PE's backward). "
            "per_layer_batch_copies: the step's peak above rope's, minus that, in units of "
            "layers x batch x one (heads, L, L) float32 bias: about 0 when no layer holds an O(L^2) tensor per "
            f"batch element, about 1 or more when each layer does; target {PER_LAYER_TARGET} at the longest length.",
            "A bias that requires grad sends SDPA to its math kernel, which keeps each layer's (batch, heads, L, L) "
            "attention probabilities for backward; with a frozen bias (alibi with fixed slopes) SDPA uses its "
            "fused kernel.",
        ]
    )
    return table


def _pe_context_bytes(model: torch.nn.Module, tokens: torch.Tensor, device: torch.device) -> int:
    """Bytes a ``build_pe_context`` holds for the whole forward and backward (once for all layers)."""
    embeddings = model.get_input_embeddings()(tokens)

    def build() -> object:
        return build_pe_context(model.model.pe, inputs_embeds=embeddings, input_ids=tokens)

    return memory_use(build, device)[1]


def bias_attention(setting: Setting) -> Table:
    """6. Bias PEs (trainable biases through ``mathpe.bias_attention``) against nope: step time and peak memory."""
    sizes = setting.sizes
    table = setting.table(
        "bias_attention",
        f"6. Bias PEs against nope: forward+backward of mathpe's decoder ({_describe(sizes.bias_shape)})",
        [
            "pe",
            "batch",
            "seq",
            "step_ms",
            "time_ratio_vs_nope",
            "peak_mib",
            "memory_ratio_vs_nope",
            "target",
            "met",
        ],
    )
    names = ["nope", *(pe for pe in list_pes() if pe_class(pe).kind == "bias")]
    longest = max(seq for _, seq in sizes.bias_runs)
    models = {pe: setting.place(mathpe_decoder(pe, sizes.bias_shape, longest), train=True) for pe in names}
    for (batch, seq), time_target in zip(sizes.bias_runs, BIAS_TIME_TARGETS, strict=False):
        tokens = setting.tokens(batch, seq, sizes.shape.vocab)
        result = setting.measure({pe: train_step(model, tokens) for pe, model in models.items()}, memory=True)
        for pe in names[1:]:
            ratio = result.ratio(pe, "nope")
            memory_ratio = result.peak_bytes[pe] / result.peak_bytes["nope"]
            checks = [("time", time_target, ratio)]
            if seq == longest:
                checks.append(("memory", BIAS_MEMORY_TARGET, memory_ratio))
            table.add(
                checks,
                pe=pe,
                batch=batch,
                seq=seq,
                step_ms=1000 * result.median(pe),
                time_ratio_vs_nope=ratio,
                peak_mib=_mib(result.peak_bytes[pe]),
                memory_ratio_vs_nope=memory_ratio,
            )
    table.notes.append(
        f"Targets: step time {BIAS_TIME_TARGETS[0]} x nope at the first run, {BIAS_TIME_TARGETS[1]} at the second; "
        f"peak memory {BIAS_MEMORY_TARGET} x nope at the longest length. Trainable biases run blockwise "
        "(mathpe.bias_attention): no (batch, heads, L, L) tensor per layer, the bias recomputed block by block "
        "in every layer's backward."
    )
    return table


SECTIONS: tuple[Callable[[Setting], Table], ...] = (
    pe_overhead,
    against_baselines,
    swapped_models,
    cached_generation,
    scaling,
    bias_attention,
)
