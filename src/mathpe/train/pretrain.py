"""``mathpe pretrain``: a Pythia-architecture GPT-NeoX trained from scratch on math text, a stand-in base model.

The founding workflow starts from a pretrained RoPE model. Where none can be downloaded, this recipe makes
one: a byte-level BPE tokenizer trained on GSM8K and MATH training problems with their solutions
(``mathpe.data.corpus``), a GPT-NeoX with Pythia's choices (partial rotary 0.25, parallel residual, untied
embeddings, Adam betas 0.9/0.95) trained on packed blocks of ``context`` tokens, held-out perplexity on the
test splits' text along the way. The result is an ordinary transformers GPT-NeoX folder (``OUTPUT/model``)
that ``mathpe.hf.load_model`` and the swap study read like a hub checkpoint.

Output folder:
    tokenizer/        the trained tokenizer (kept for ``--resume``)
    checkpoint-N/     Trainer checkpoints (atomic), for ``--resume``
    model/            the final model and tokenizer
    pretrain.json     settings, parameter and token counts, the loss curve, held-out perplexity at 1x/2x/4x
    loss_curve.png    training loss and held-out perplexity against step
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
    PrinterCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

import mathpe
from mathpe.data.corpus import math_documents, pack_blocks, token_stream, train_bpe_tokenizer
from mathpe.errors import ConfigError, DataError
from mathpe.eval.perplexity import perplexity
from mathpe.eval.report import write_json
from mathpe.train.trainer import MathPETrainer, last_checkpoint

#: Held-out perplexity is reported at these multiples of the pretraining context.
CONTEXT_MULTIPLES = (1, 2, 4)


@dataclass
class PretrainConfig:
    """Every setting of ``mathpe pretrain`` (the command's flags are generated from these fields)."""

    output_dir: str = field(default="runs/pretrain-math", metadata={"help": "where the run folder goes"})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder with gsm8k/ and math/ JSON Lines files (default $MATHPE_DATA)"},
    )
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size"})
    hidden_size: int = field(default=256, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "transformer layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    rotary_fraction: float = field(
        default=0.25, metadata={"help": "share of each head rotated (Pythia: 0.25)"}
    )
    context: int = field(default=256, metadata={"help": "training context in tokens"})
    batch_size: int = field(default=16, metadata={"help": "blocks per step"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine decay)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    eval_steps: int = field(default=250, metadata={"help": "held-out perplexity every this many steps"})
    eval_tokens: int = field(
        default=65536, metadata={"help": "held-out tokens scored (a multiple of 4x the context)"}
    )
    save_steps: int = field(default=250, metadata={"help": "checkpoint every this many steps"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and data order"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)"})
    resume: bool = field(default=False, metadata={"help": "continue from the folder's last checkpoint"})

    def validate(self) -> PretrainConfig:
        """Raise ``ConfigError`` naming the first bad setting."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "context", "batch_size",
                     "max_steps", "eval_steps", "save_steps"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"--hidden_size {self.hidden_size} is not divisible by --num_heads {self.num_heads}"
            )
        if not 0 < self.rotary_fraction <= 1:
            raise ConfigError(f"--rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        longest = self.context * max(CONTEXT_MULTIPLES)
        if self.eval_tokens < longest or self.eval_tokens % longest:
            raise ConfigError(
                f"--eval_tokens {self.eval_tokens} must be a positive multiple of {longest} (4x --context)"
            )
        if self.learning_rate <= 0 or self.warmup_steps < 0:
            raise ConfigError("--learning_rate must be positive and --warmup_steps >= 0")
        return self


def model_config(config: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPTNeoXConfig:
    """A Pythia-style GPT-NeoX config of the requested size."""
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=4 * config.hidden_size,
        max_position_embeddings=config.context,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": config.rotary_fraction,
        },
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class BlockDataset(torch.utils.data.Dataset):
    """Packed token blocks as causal-LM examples: ``input_ids`` and ``labels`` both the block."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


class BlockTrainingSettings(Protocol):
    """Settings of block training and held-out scoring (``PretrainConfig`` and ``SwapStudyConfig`` have them)."""

    batch_size: int
    learning_rate: float
    warmup_steps: int
    eval_steps: int
    eval_tokens: int
    seed: int


def block_lm_trainer(
    model: torch.nn.Module,
    settings: BlockTrainingSettings,
    *,
    output_dir: Path,
    train_blocks: torch.Tensor,
    eval_blocks: torch.Tensor,
    max_steps: int,
    progress: bool,
    **arguments: Any,
) -> MathPETrainer:
    """A trainer for causal-LM training on packed blocks (batch, context), cosine schedule, held-out loss
    every ``settings.eval_steps``; ``arguments`` set the other ``TrainingArguments`` (saving, weight decay,
    betas)."""
    trainer = MathPETrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size,
            max_steps=max_steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=settings.warmup_steps,
            max_grad_norm=1.0,
            seed=settings.seed,
            eval_strategy="steps",
            eval_steps=settings.eval_steps,
            report_to=[],
            disable_tqdm=not progress,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
            **arguments,
        ),
        train_dataset=BlockDataset(train_blocks),
        eval_dataset=BlockDataset(eval_blocks),
        data_collator=default_data_collator,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def context_perplexities(
    model: torch.nn.Module, held_out: torch.Tensor, context: int, settings: BlockTrainingSettings
) -> dict[str, float]:
    """Perplexity on the first ``settings.eval_tokens`` of ``held_out`` (tokens,) at each multiple of
    ``context`` in ``CONTEXT_MULTIPLES``, keyed by the length as a string."""
    return {
        str(context * multiple): perplexity(
            model,
            held_out,
            context * multiple,
            max_tokens=settings.eval_tokens,
            batch_size=settings.batch_size,
        )
        for multiple in CONTEXT_MULTIPLES
    }


def _tokenizer(config: PretrainConfig, documents: list[str]) -> PreTrainedTokenizerFast:
    """The run's tokenizer: trained once, then read back from the run folder (so ``--resume`` sees the same)."""
    folder = Path(config.output_dir) / "tokenizer"
    if folder.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer = train_bpe_tokenizer(documents, config.vocab_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


def pretrain(config: PretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the stand-in base model; returns (and writes) the pretrain.json summary."""
    config.validate()
    run_dir = Path(config.output_dir)
    if not config.resume and ((run_dir / "pretrain.json").exists() or last_checkpoint(run_dir)):
        raise ConfigError(f"{run_dir} already holds a pretraining run; pass --resume to continue it")
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    train_documents = math_documents("train", config.data_dir)
    tokenizer = _tokenizer(config, train_documents)
    train_blocks = pack_blocks(token_stream(tokenizer, train_documents), config.context)
    held_out = token_stream(tokenizer, math_documents("test", config.data_dir))
    if held_out.numel() < config.eval_tokens:
        raise DataError(
            f"the held-out text has {held_out.numel()} tokens, fewer than --eval_tokens {config.eval_tokens}"
        )
    eval_blocks = pack_blocks(held_out[: config.eval_tokens], config.context)
    model = GPTNeoXForCausalLM(model_config(config, tokenizer))

    trainer = block_lm_trainer(
        model,
        config,
        output_dir=run_dir,
        train_blocks=train_blocks,
        eval_blocks=eval_blocks,
        max_steps=config.max_steps,
        progress=progress,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=min(50, config.eval_steps),
    )
    resume_from = last_checkpoint(run_dir) if config.resume else None
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.monotonic() - started

    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    history = trainer.state.log_history
    summary = {
        "settings": dataclasses.asdict(config),
        "params": model.num_parameters(),
        "pretrain_tokens": trainer.state.global_step * config.batch_size * config.context,
        "train_tokens_available": train_blocks.numel(),
        "epochs": trainer.state.global_step * config.batch_size / train_blocks.shape[0],
        "train_seconds": round(seconds, 1),
        "resumed_from": str(resume_from) if resume_from else None,
        "loss_curve": [[entry["step"], entry["loss"]] for entry in history if "loss" in entry],
        "heldout_ppl_curve": [
            [entry["step"], math.exp(entry["eval_loss"])] for entry in history if "eval_loss" in entry
        ],
        "ppl": context_perplexities(model, held_out, config.context, config),
        "versions": {
            "mathpe": mathpe.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(run_dir / "pretrain.json", summary)
    plot_pretraining(summary, run_dir / "loss_curve.png")
    return summary


def plot_pretraining(summary: dict[str, Any], path: Path) -> None:
    """Training loss and held-out perplexity (log scale) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4.2))
    steps, losses = zip(*summary["loss_curve"], strict=True) if summary["loss_curve"] else ((), ())
    loss_axis.plot(steps, losses, color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    ppl_axis = loss_axis.twinx()
    if summary["heldout_ppl_curve"]:
        ppl_steps, ppls = zip(*summary["heldout_ppl_curve"], strict=True)
        ppl_axis.plot(
            ppl_steps, ppls, color="tab:orange", marker="o", markersize=3, label="held-out perplexity"
        )
    ppl_axis.set_yscale("log")
    ppl_axis.set_ylabel("held-out perplexity", color="tab:orange")
    loss_axis.set_title(
        f"pretraining: {summary['params'] / 1e6:.1f}M parameters, {summary['pretrain_tokens'] / 1e6:.1f}M tokens"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
