"""``mathpe attention RUN_OR_MODEL --prompt ...``: a PNG of attention maps over a prompt's tokens.

The maps are the attention probabilities the model returns with ``output_attentions=True`` (PE bias and masks
included), one panel per chosen layer and head, with the prompt's tokens on both axes (query rows, key columns).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from mathpe.errors import ConfigError
from mathpe.train.evaluate_run import load_run_tokenizer


def resolve_model_dir(path: Path) -> Path:
    """A model folder itself, or the ``model/`` folder of a run; a one-line ConfigError otherwise."""
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file() and (candidate / "tokenizer_config.json").is_file():
            return candidate
    raise ConfigError(f"{path} is neither a run folder nor a saved model with its tokenizer")


def load_model_and_tokenizer(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The eval-mode model (mathpe's decoder, or a swapped GPT-NeoX / Llama) and tokenizer saved in ``path``."""
    model_dir = resolve_model_dir(path)
    tokenizer_class = json.loads((model_dir / "tokenizer_config.json").read_text()).get("tokenizer_class", "")
    tokenizer = load_run_tokenizer(model_dir, tokenizer_class)
    if json.loads((model_dir / "config.json").read_text()).get("model_type") == "mathpe":
        import mathpe.model  # noqa: F401  (registers the decoder with AutoModelForCausalLM)

        model = AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        from mathpe.hf import load_model

        model = load_model(str(model_dir))
    return model.eval(), tokenizer


def _choose(requested: Sequence[int] | None, available: int, what: str) -> list[int]:
    """The requested indices (all when None), each checked against ``available``."""
    if requested is None:
        return list(range(available))
    bad = [index for index in requested if not 0 <= index < available]
    if bad:
        listed = ", ".join(map(str, bad))
        raise ConfigError(
            f"{what} {listed} out of range; the model has {available} {what}s (0-{available - 1})"
        )
    return list(requested)


@torch.no_grad()
def attention_maps(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> dict[tuple[int, int], torch.Tensor]:
    """Attention probabilities of one sequence: ``{(layer, head): (seq, seq) float32 tensor}``.

    Args:
        model: a causal LM returning ``attentions`` with ``output_attentions=True``.
        input_ids: (1, seq) token ids.
        layers, heads: indices to keep (None: all).
    """
    attentions = model(input_ids, output_attentions=True, use_cache=False).attentions
    layers = _choose(layers, len(attentions), "layer")
    heads = _choose(heads, attentions[0].shape[1], "head")
    return {(layer, head): attentions[layer][0, head].float().cpu() for layer in layers for head in heads}


def plot_attention_maps(
    maps: dict[tuple[int, int], torch.Tensor], tokens: Sequence[str], title: str
) -> object:
    """A matplotlib figure: one panel per (layer, head), rows by layer, tokens on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({layer for layer, _ in maps})
    heads = sorted({head for _, head in maps})
    size = 0.28 * len(tokens) + 1.5
    figure, axes = plt.subplots(
        len(layers), len(heads), figsize=(size * len(heads), size * len(layers)), squeeze=False
    )
    labels = [repr(token)[1:-1] for token in tokens]  # shows spaces and newlines
    for row, layer in enumerate(layers):
        for column, head in enumerate(heads):
            axis = axes[row][column]
            axis.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            axis.set_title(f"layer {layer}, head {head}", fontsize=9)
            axis.set_xticks(range(len(tokens)), labels, rotation=90, fontsize=7)
            axis.set_yticks(range(len(tokens)), labels, fontsize=7)
            axis.set_xlabel("key")
            axis.set_ylabel("query")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def write_attention_png(
    source: Path,
    prompt: str,
    output: Path,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> dict[tuple[int, int], torch.Tensor]:
    """Plot the attention maps of ``prompt`` in the model at ``source`` (run or model folder) to ``output``.

    Returns:
        the plotted maps, ``{(layer, head): (seq, seq) tensor}``.
    """
    if not prompt:
        raise ConfigError("--prompt is empty; give the text whose attention to plot, e.g. '12+34='")
    model, tokenizer = load_model_and_tokenizer(source)
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    maps = attention_maps(model, input_ids, layers, heads)
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    pe = getattr(model.config, "pe", None) or getattr(model.config, "mathpe_pe", None) or "own PE"
    figure = plot_attention_maps(maps, tokens, f"{source.name} ({pe}): {prompt!r}")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return maps
