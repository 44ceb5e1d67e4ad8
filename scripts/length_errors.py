"""Where an arithmetic run fails past its training length: error kinds per test length, and how sharply the
token that writes the answer's first digit (``=``) reads the operands' units digits, layer by layer.

    python scripts/length_errors.py RUN [RUN ...] [--lengths 8,12,16,20] [--items 30]

RUN: a finished run folder of ``mathpe train`` / ``mathpe compare`` on synthetic arithmetic (``config.json``,
``predictions.jsonl``, ``model/``).

- Error kinds compare the completion's tokens with the reference's (the run's tokenizer): the first wrong
  token is the answer's first (``first``), its last (``last``) or one between (``middle``); ``no_stop``: the
  whole reference was written and generation went on; ``early_stop``: generation ended inside the answer.
- Lookup: per layer, the attention probability from ``=`` on the two operands' units digits together,
  averaged over ``--items`` prompts of each length, of the head with the largest average: 1.0 when a head
  reads exactly those two tokens, as the first answer token needs.

No library gives this breakdown; it reads the run's own files with mathpe's loaders.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mathpe.eval.attention_maps import load_model_and_tokenizer
from mathpe.train.evaluate_run import load_run_config

ERROR_KINDS = ("ok", "first", "middle", "last", "no_stop", "early_stop")


def error_kind(completion: list[str], reference: list[str]) -> str:
    """The kind of a completion's first difference from the reference, both as token lists."""
    if completion[: len(reference)] == reference:
        return "ok" if len(completion) == len(reference) else "no_stop"
    wrong = next((i for i, (a, b) in enumerate(zip(completion, reference, strict=False)) if a != b), None)
    if wrong is None:
        return "early_stop"
    return "first" if wrong == 0 else "last" if wrong == len(reference) - 1 else "middle"


def units_digit_positions(tokens: list[str], reverse_operands: bool) -> list[int]:
    """Indices of the two operands' units digits in a prompt ``<a><op><b>=`` (tokens of the run's tokenizer).

    A token is part of a number when its text is alphanumeric (digits, index hints, fused hint-digits); the
    operator is the first token outside a number, ``=`` the last token.
    """
    operator = next(
        i for i, token in enumerate(tokens) if not token.isalnum() and i > 0 and tokens[i - 1].isalnum()
    )
    spans = (range(0, operator), range(operator + 1, len(tokens) - 1))
    digits = [[i for i in span if any(c.isdigit() for c in tokens[i])] for span in spans]
    return [run[0] if reverse_operands else run[-1] for run in digits]


@torch.no_grad()
def lookup_by_layer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], reverse_operands: bool
) -> list[float]:
    """Per layer: the largest over heads of the mean over prompts of the attention mass from ``=`` on the units
    digits (one head's consistent lookup, not the best head of each prompt)."""
    masses = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(input_ids[0])
        targets = units_digit_positions(tokens, reverse_operands)
        attentions = model(input_ids, output_attentions=True).attentions  # per layer (1, heads, seq, seq)
        masses.append(torch.stack([a[0, :, -1, targets].sum(-1) for a in attentions]))  # (layers, heads)
    return torch.stack(masses).mean(0).max(-1).values.tolist()


def analyse(run: Path, lengths: list[int], items: int) -> list[str]:
    """Markdown rows ``| run | length | errors... | lookup per layer |`` for one run folder."""
    config, _ = load_run_config(run)
    model, tokenizer = load_model_and_tokenizer(run)
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    table = []
    for length in lengths:
        group = [row for row in rows if row["group"] == length]
        if not group:
            continue
        kinds = Counter(
            error_kind(tokenizer.tokenize(row["completion"]), tokenizer.tokenize(row["reference"]))
            for row in group
        )
        prompts = [row["prompt"] for row in group[:items]]
        lookup = lookup_by_layer(model, tokenizer, prompts, config.arithmetic.reverse_operands)
        counts = " | ".join(str(kinds[kind]) for kind in ERROR_KINDS)
        table.append(f"| {run} | {length} | {counts} | {' / '.join(f'{m:.2f}' for m in lookup)} |")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--lengths", default="8,12,16,20", help="test lengths, comma-separated")
    parser.add_argument("--items", type=int, default=30, help="prompts per length for the lookup")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| run | length | {' | '.join(ERROR_KINDS)} | lookup by layer |")
    print(f"|---|---|{'---|' * len(ERROR_KINDS)}---|")
    for run in args.runs:
        for row in analyse(run, [int(n) for n in args.lengths.split(",")], args.items):
            print(row)


if __name__ == "__main__":
    main()
