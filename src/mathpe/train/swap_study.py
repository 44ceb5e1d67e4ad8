"""``mathpe swap-study``: what swapping the PE of a pretrained model costs, and whether LoRA wins it back.

For a pretrained GPT-NeoX or Llama (a hub model, or the stand-in from ``mathpe pretrain``) and each PE:
1. zero-shot after the swap: held-out perplexity at 1x, 2x and 4x the model's context (full windows);
2. adaptation on the pretraining text for a fixed token budget under each trainable regime (``REGIMES``),
   with held-out perplexity at 1x every ``eval_steps`` (the recovery curve);
3. after adaptation: perplexity at 1x/2x/4x, and GSM8K strict-match and plain 1-3 digit addition on a
   few items (``eval_items``; reported whatever the base scores).
``rope`` (the model's own RoPE, an identity swap) is the control every number is read against.

Output folder: ``cells/<pe>-<regime>.json`` per finished cell (``--resume`` reads them back), then
``summary.json``, ``summary.md`` and ``recovery.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mathpe.data.corpus import math_documents, pack_blocks, token_stream
from mathpe.data.tokenizer import digit_options, digit_token_ids
from mathpe.errors import ConfigError, DataError
from mathpe.eval.evaluate import evaluate_task
from mathpe.eval.report import markdown_table, write_json, write_text
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.pe import list_pes
from mathpe.train.pretrain import CONTEXT_MULTIPLES, block_lm_trainer, context_perplexities
from mathpe.train.setup import pe_parameters

#: The founding eight PEs and NoPE.
STUDY_PES = "rope,math_rope,long_rope,sinusoidal,t5_relative,diet,alibi,math_adaptive,nope"
#: The PEs that really change the base's positions (math_rope, math_adaptive and long_rope start equal or close
#: to RoPE): the study's recovery target counts these.
POSITION_CHANGING_PES = ("sinusoidal", "t5_relative", "diet", "alibi", "nope")
#: Recovery target: 1x perplexity within 5% of the rope control's after the same tokens, at <= 2% of pretraining.
CONTROL_TOLERANCE, TOKEN_BUDGET = 1.05, 0.02
#: A PE extrapolates when its adapted perplexity at 4x the context is within 10% of that at 1x.
EXTRAPOLATION_TOLERANCE = 1.10

#: Trainable set of each regime beside LoRA on the attention projections: module types trained in full.
#: ``lora_pe``: the PE's own parameters only; ``lora_pe_norm_embed``: also every LayerNorm and the input
#: embeddings (LongLoRA's finding that LoRA alone leaves a gap in context extension); ``full``: every weight (the
#: upper bound LoRA is read against, as DroPE recalibrates the whole model).
REGIMES: dict[str, tuple[type[nn.Module], ...]] = {
    "lora_pe": (),
    "lora_pe_norm_embed": (nn.LayerNorm, nn.Embedding),
    "full": (nn.Module,),
}
#: The regimes run unless ``--regimes`` says otherwise (``full`` costs a full fine-tune's optimizer state).
DEFAULT_REGIMES = ("lora_pe", "lora_pe_norm_embed")


@dataclass
class SwapStudyConfig:
    """Every setting of ``mathpe swap-study`` (the command's flags are generated from these fields)."""

    base: str = field(
        metadata={"help": "the pretrained model: a hub id or a folder (e.g. runs/pretrain-math/model)"}
    )
    output_dir: str = field(default="runs/swap-adapt", metadata={"help": "where the study folder goes"})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder with gsm8k/ and math/ JSON Lines files (default $MATHPE_DATA)"},
    )
    pes: str = field(default=STUDY_PES, metadata={"help": "comma list of PEs ('rope' is the control)"})
    regimes: str = field(
        default=",".join(DEFAULT_REGIMES), metadata={"help": f"comma list of: {', '.join(REGIMES)}"}
    )
    adapt_steps: int = field(
        default=40,
        metadata={"help": "adaptation steps per PE and regime (40: 2% of the default pretraining's tokens)"},
    )
    batch_size: int = field(default=16, metadata={"help": "blocks of the model's context per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine decay)"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (alpha = 2 x rank)"})
    eval_steps: int = field(default=10, metadata={"help": "held-out perplexity every this many steps"})
    eval_tokens: int = field(
        default=65536, metadata={"help": "held-out tokens scored (a multiple of 4x context)"}
    )
    eval_items: int = field(default=50, metadata={"help": "GSM8K and addition items generated (0: skip)"})
    pretrain_tokens: int | None = field(
        default=None,
        metadata={"help": "the base's pretraining tokens (default: read from its pretrain.json)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of LoRA initialisation and data order"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)"})
    resume: bool = field(default=False, metadata={"help": "keep finished cells of the folder, run the rest"})

    @property
    def pe_list(self) -> list[str]:
        return [name.strip() for name in self.pes.split(",") if name.strip()]

    @property
    def regime_list(self) -> list[str]:
        return [name.strip() for name in self.regimes.split(",") if name.strip()]

    def validate(self) -> SwapStudyConfig:
        """Raise ``ConfigError`` naming the first bad setting."""
        unknown_pes = [name for name in self.pe_list if name not in list_pes()]
        if unknown_pes or not self.pe_list:
            raise ConfigError(
                f"unknown PE(s) {unknown_pes or '(none)'}; choose from: {', '.join(list_pes())}"
            )
        unknown = [name for name in self.regime_list if name not in REGIMES]
        if unknown or not self.regime_list:
            raise ConfigError(f"unknown regime(s) {unknown or '(none)'}; choose from: {', '.join(REGIMES)}")
        for name in ("adapt_steps", "batch_size", "lora_r", "eval_steps", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        return self


@dataclass
class StudyData:
    """The base model's tokenizer and context, its pretraining text as blocks, and the held-out stream."""

    tokenizer: PreTrainedTokenizerBase
    context: int
    train_blocks: torch.Tensor
    held_out: torch.Tensor


def load_study_data(config: SwapStudyConfig) -> StudyData:
    """Tokenize the math corpus with the base's tokenizer; blocks of the base's context length."""
    context = AutoConfig.from_pretrained(config.base).max_position_embeddings
    longest = context * max(CONTEXT_MULTIPLES)
    if config.eval_tokens % longest:
        raise ConfigError(
            f"--eval_tokens {config.eval_tokens} must be a multiple of {longest} (4x the context)"
        )
    tokenizer = AutoTokenizer.from_pretrained(config.base, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    held_out = token_stream(tokenizer, math_documents("test", config.data_dir))
    if held_out.numel() < config.eval_tokens:
        raise DataError(
            f"the held-out text has {held_out.numel()} tokens, fewer than --eval_tokens {config.eval_tokens}"
        )
    train_blocks = pack_blocks(token_stream(tokenizer, math_documents("train", config.data_dir)), context)
    return StudyData(tokenizer, context, train_blocks, held_out)


def load_swapped(config: SwapStudyConfig, pe: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The base with its PE swapped to ``pe`` (digit-aware PEs get the tokenizer's digit ids)."""
    from mathpe.hf import load_model

    options = digit_options(pe, digit_token_ids(tokenizer))
    return load_model(config.base, pe=pe, dtype=torch.float32, **options)


def generation_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: SwapStudyConfig
) -> dict[str, float]:
    """GSM8K strict-match and plain 1-3 digit addition exact match on ``eval_items`` items each."""
    if not config.eval_items:
        return {}
    tasks = [
        build_task(
            "gsm8k",
            seed=config.seed,
            train_samples=0,
            eval_samples=config.eval_items,
            data_dir=config.data_dir,
        ),
        build_task(
            "addition",
            seed=config.seed,
            train_samples=0,
            eval_samples=config.eval_items,
            arithmetic=ArithmeticSettings(
                train_digits=(1, 3), eval_lengths=(1, 2, 3), fmt="plain", reverse_operands=False
            ),
        ),
    ]
    scores = {}
    for task in tasks:
        metrics, _ = evaluate_task(model, tokenizer, task, batch_size=config.batch_size)
        scores[f"{task.name}_{metrics['headline']}"] = metrics[metrics["headline"]]
    return scores


def make_trainable(model: PreTrainedModel, regime: str, lora_r: int) -> PreTrainedModel:
    """Wrap ``model`` with LoRA on its attention projections; train the PE and the regime's module types."""
    from peft import LoraConfig, get_peft_model

    from mathpe.hf import lora_target_modules

    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, target_modules=lora_target_modules(model), task_type="CAUSAL_LM"
        ),
    )
    for parameter in pe_parameters(peft_model):
        parameter.requires_grad_(True)
    for module in peft_model.modules():
        if isinstance(module, REGIMES[regime]):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
    return peft_model


def adapt(
    model: PreTrainedModel, data: StudyData, config: SwapStudyConfig, cell_dir: Path
) -> tuple[list[list[float]], float]:
    """Train ``model`` (already made trainable) on the pretraining blocks; returns the curve and seconds."""
    eval_blocks = pack_blocks(data.held_out[: config.eval_tokens], data.context)
    trainer = block_lm_trainer(
        model,
        config,
        output_dir=cell_dir,
        train_blocks=data.train_blocks,
        eval_blocks=eval_blocks,
        max_steps=config.adapt_steps,
        progress=False,
        weight_decay=0.0,
        save_strategy="no",
        logging_steps=config.eval_steps,
    )
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    curve = [
        [entry["step"], math.exp(entry["eval_loss"])]
        for entry in trainer.state.log_history
        if "eval_loss" in entry
    ]
    return curve, seconds


def run_cell(
    config: SwapStudyConfig, data: StudyData, pe: str, regime: str, swapped_ppl: dict[str, float]
) -> dict[str, Any]:
    """Adapt a fresh swap of ``pe`` under ``regime`` and measure it."""
    torch.manual_seed(config.seed)
    model = make_trainable(load_swapped(config, pe, data.tokenizer), regime, config.lora_r)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    curve, seconds = adapt(model, data, config, Path(config.output_dir) / "cells" / f"{pe}-{regime}")
    model = model.merge_and_unload()
    return {
        "ppl_swapped": swapped_ppl,
        "ppl_adapted": context_perplexities(model, data.held_out, data.context, config),
        "adapt_tokens": config.adapt_steps * config.batch_size * data.context,
        "trainable_parameters": trainable,
        "seconds": round(seconds, 1),
        "curve": [[0, swapped_ppl[str(data.context)]], *curve],
        "generation": generation_scores(model, data.tokenizer, config),
    }


def run_swap_study(config: SwapStudyConfig) -> dict[str, Any]:
    """Every PE x regime cell, then summary.json / summary.md / recovery.png; returns the summary."""
    from mathpe.hf import load_model

    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output_dir)
    if not config.resume and (output / "cells").is_dir() and any((output / "cells").glob("*.json")):
        raise ConfigError(f"{output} already holds a swap study; pass --resume to continue it")
    data = load_study_data(config)
    base_model = load_model(config.base, dtype=torch.float32)
    base = {
        "name": config.base,
        "params": base_model.num_parameters(),
        "pretrain_tokens": config.pretrain_tokens or _pretrain_tokens(config.base),
        "context": data.context,
        "ppl": context_perplexities(base_model, data.held_out, data.context, config),
        "generation": generation_scores(base_model, data.tokenizer, config),
    }
    del base_model
    pes: dict[str, dict[str, Any]] = {}
    for pe in config.pe_list:
        swapped_ppl = None
        for regime in config.regime_list:
            cell_file = output / "cells" / f"{pe}-{regime}.json"
            if config.resume and cell_file.is_file():
                cell = json.loads(cell_file.read_text())
            else:
                if swapped_ppl is None:
                    swapped_ppl = context_perplexities(
                        load_swapped(config, pe, data.tokenizer), data.held_out, data.context, config
                    )
                cell = run_cell(config, data, pe, regime, swapped_ppl)
                write_json(cell_file, cell)
            pes.setdefault(pe, {})[regime] = cell
    summary = {"base": base, "pes": pes, "settings": dataclasses.asdict(config)}
    summary["findings"] = study_findings(summary)
    write_json(output / "summary.json", summary)
    write_text(output / "summary.md", summary_markdown(summary))
    plot_recovery(summary, output / "recovery.png")
    return summary


def _pretrain_tokens(base: str) -> int | None:
    """Pretraining tokens from ``mathpe pretrain``'s pretrain.json beside the model folder, when there is one."""
    record = Path(base).parent / "pretrain.json"
    return json.loads(record.read_text())["pretrain_tokens"] if record.is_file() else None


def study_findings(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per regime, the recovery target and who extrapolates, read off the cells against the ``rope`` control.

    Recovery: a PE's 1x perplexity at the last curve step within ``TOKEN_BUDGET`` of the pretraining tokens is
    within ``CONTROL_TOLERANCE`` of the control's at the same step; the target is met when at least three of
    ``POSITION_CHANGING_PES`` recover. Extrapolation: adapted perplexity at 4x within ``EXTRAPOLATION_TOLERANCE``
    of 1x. Empty without a ``rope`` control or the base's pretraining tokens.
    """
    base, control = summary["base"], summary["pes"].get("rope", {})
    if not base.get("pretrain_tokens"):
        return {}
    lengths = list(base["ppl"])
    tokens_per_step = summary["settings"]["batch_size"] * base["context"]
    budget_step = int(TOKEN_BUDGET * base["pretrain_tokens"] // tokens_per_step)
    findings: dict[str, dict[str, Any]] = {}
    for regime, rope_cell in control.items():
        rope_curve = dict(rope_cell["curve"])
        steps = [step for step in rope_curve if step <= budget_step]
        if not steps:
            continue
        step = max(steps)
        ratios, extrapolates = {}, []
        for pe, cells in summary["pes"].items():
            cell = cells.get(regime)
            if cell is None:
                continue
            curve = dict(cell["curve"])
            if step in curve:
                ratios[pe] = curve[step] / rope_curve[step]
            if cell["ppl_adapted"][lengths[-1]] <= EXTRAPOLATION_TOLERANCE * cell["ppl_adapted"][lengths[0]]:
                extrapolates.append(pe)
        recovered = [pe for pe, ratio in ratios.items() if ratio <= CONTROL_TOLERANCE]
        counted = [pe for pe in recovered if pe in POSITION_CHANGING_PES]
        findings[regime] = {
            "step": step,
            "tokens_fraction": step * tokens_per_step / base["pretrain_tokens"],
            "ppl_ratio_to_rope": ratios,
            "recovered": recovered,
            "position_changing_recovered": counted,
            "target_met": len(counted) >= 3,
            "extrapolate": extrapolates,
            "do_not_extrapolate": [
                pe for pe in summary["pes"] if regime in summary["pes"][pe] and pe not in extrapolates
            ],
        }
    return findings


def summary_markdown(summary: dict[str, Any]) -> str:
    """The study's table (perplexity swapped and adapted at 1x/2x/4x per PE and regime, against the control,
    and the generation scores after adaptation), then the findings (``study_findings``)."""
    base = summary["base"]
    lengths = list(base["ppl"])
    control = summary["pes"].get("rope", {})
    scores = list(base.get("generation", {}))
    header = ["PE", "regime", *(f"swapped {n}" for n in lengths), *(f"adapted {n}" for n in lengths),
              "adapted 1x / rope", "4x / 1x", *(f"{name} %" for name in scores), "adapt tokens", "s"]  # fmt: skip
    rows = [["base (no swap)", "-", *(f"{base['ppl'][n]:.2f}" for n in lengths), *("-" for _ in lengths), "-",
             f"{base['ppl'][lengths[-1]] / base['ppl'][lengths[0]]:.2f}",
             *(f"{100 * base['generation'][name]:.1f}" for name in scores), "-", "-"]]  # fmt: skip
    for pe, regimes in summary["pes"].items():
        for regime, cell in regimes.items():
            adapted = cell["ppl_adapted"]
            reference = control.get(regime, {}).get("ppl_adapted", {}).get(lengths[0])
            rows.append(
                [
                    pe,
                    regime,
                    *(f"{cell['ppl_swapped'][n]:.2f}" for n in lengths),
                    *(f"{adapted[n]:.2f}" for n in lengths),
                    f"{adapted[lengths[0]] / reference:.3f}" if reference else "-",
                    f"{adapted[lengths[-1]] / adapted[lengths[0]]:.2f}",
                    *(f"{100 * cell['generation'][name]:.1f}" for name in scores),
                    f"{cell['adapt_tokens']:,}",
                    f"{cell['seconds']:.0f}",
                ]
            )
    fraction = ""
    if base.get("pretrain_tokens"):
        some_cell = next((cell for regimes in summary["pes"].values() for cell in regimes.values()), None)
        if some_cell:
            fraction = f" Adaptation budget: {100 * some_cell['adapt_tokens'] / base['pretrain_tokens']:.2f}% of the base's {base['pretrain_tokens']:,} pretraining tokens."
    findings = [
        f"- `{regime}`, step {found['step']} ({100 * found['tokens_fraction']:.1f}% of pretraining tokens): "
        f"within {100 * (CONTROL_TOLERANCE - 1):.0f}% of the rope control: {', '.join(found['recovered']) or 'none'}; "
        f"of {', '.join(POSITION_CHANGING_PES)}: {len(found['position_changing_recovered'])} "
        f"(target >= 3: {'met' if found['target_met'] else 'not met'}). Perplexity at 4x within "
        f"{100 * (EXTRAPOLATION_TOLERANCE - 1):.0f}% of 1x: {', '.join(found['extrapolate']) or 'none'}."
        for regime, found in summary.get("findings", {}).items()
    ]
    return (
        f"# PE swap study: {base['name']}\n\nHeld-out perplexity (GSM8K and MATH test text) at 1x/2x/4x the base's "
        f"{base['context']}-token context, after the swap and after adaptation; GSM8K strict-match and 1-3 digit "
        f"addition exact match after adaptation.{fraction}\n\n"
        + markdown_table(header, rows)
        + ("\n\n## Findings\n\n" + "\n".join(findings) + "\n" if findings else "")
    )


def plot_recovery(summary: dict[str, Any], path: Path) -> None:
    """Held-out perplexity at 1x against adaptation step: one line per PE, one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({regime for cells in summary["pes"].values() for regime in cells})
    figure, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4.2), squeeze=False, sharey=True)
    for axis, regime in zip(axes[0], regimes, strict=True):
        for pe, cells in summary["pes"].items():
            if regime in cells:
                steps, ppl = zip(*cells[regime]["curve"], strict=True)
                axis.plot(steps, ppl, marker="o", markersize=3, label=pe)
        axis.axhline(
            summary["base"]["ppl"][str(summary["base"]["context"])], color="grey", linestyle="--", linewidth=1
        )
        axis.set_yscale("log")
        axis.set_title(regime)
        axis.set_xlabel("adaptation step")
    axes[0][0].set_ylabel("held-out perplexity at 1x context")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
