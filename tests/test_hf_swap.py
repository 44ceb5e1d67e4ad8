"""mathpe.hf: swap the PE of tiny random GPT-NeoX and Llama models saved with save_pretrained, loaded by path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from mathpe.hf import (
    PE_MODULE_NAME,
    SUPPORTED_ARCHITECTURES,
    TRANSFORMERS_VERSION_RANGE,
    load_model,
    lora_target_modules,
    swap_positional_encoding,
    transformers_version_supported,
)
from mathpe.hf.swap import resolve_pe
from mathpe.pe import list_pes, pe_class, pe_options

VOCAB = 100
PAD = 0
DIGITS = list(range(10, 60))  # half the vocabulary, so beams often differ in digit state
NEW_TOKENS = 16
FAMILIES = ("gpt_neox", "llama")
# Prompts of different lengths with digit runs, so token-aware PEs see numbers.
PROMPTS = [
    [21, 12, 13, 14, 30],
    [40, 11, 11, 19, 18, 50, 15, 16, 60],
    [70, 17, 12, 80, 13, 14, 90],
]


def tiny_config(family: str, **overrides: object) -> PretrainedConfig:
    """2 layers, hidden 64; a wide init so greedy argmaxes are far from ties."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        initializer_range=0.3,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "gpt_neox":
        # Partial rotary (a quarter of each 32-dim head) and a non-default base, as Pythia.
        rope = {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.25}
        return GPTNeoXConfig(
            **{**common, "num_attention_heads": 2, "rotary_pct": 0.25, "rope_parameters": rope, **overrides}
        )
    # Grouped-query attention: 2 key/value heads for 4 query heads.
    rope = {"rope_type": "default", "rope_theta": 1000.0}
    return LlamaConfig(**{**common, "num_key_value_heads": 2, "rope_parameters": rope, **overrides})


def save_tiny(config: PretrainedConfig, path: Path) -> str:
    model_class = GPTNeoXForCausalLM if config.model_type == "gpt_neox" else LlamaForCausalLM
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_tiny(tiny_config(family), root / family) for family in FAMILIES}


def pe_kwargs(pe: str) -> dict[str, object]:
    """Options for ``pe`` in these tests: digit ids for the token-aware PEs."""
    return {"digit_token_ids": DIGITS} if "digit_token_ids" in pe_options(pe) else {}


def swapped(checkpoints: dict[str, str], family: str, pe: str, **kwargs: object) -> PreTrainedModel:
    return load_model(checkpoints[family], pe, **pe_kwargs(pe), **kwargs).eval()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, width) ids and 0/1 mask, prompts right-aligned after PAD tokens."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def generate(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """New tokens only, (batch, NEW_TOKENS); EOS is suppressed so every row has the same length."""
    kwargs = {"do_sample": False, **kwargs}
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        pad_token_id=PAD,
        **kwargs,
    )
    return out[:, ids.shape[1] :]


def pe_module(model: PreTrainedModel) -> torch.nn.Module:
    return getattr(model.get_decoder(), PE_MODULE_NAME)


def test_installed_transformers_is_in_supported_range() -> None:
    assert TRANSFORMERS_VERSION_RANGE == ("5.24", "6.0")  # the tested minimum (tests/test_compat.py)
    assert transformers_version_supported()
    assert transformers_version_supported("5.24.0")
    assert not transformers_version_supported("5.0.0")
    assert not transformers_version_supported("4.57.1")
    assert not transformers_version_supported("6.0.0")


@pytest.mark.parametrize("family", FAMILIES)
def test_rope_swap_with_model_settings_is_identity(checkpoints: dict[str, str], family: str) -> None:
    original = load_model(checkpoints[family]).eval()
    model = load_model(checkpoints[family], "rope").eval()
    rope = pe_module(model)
    assert type(rope) is pe_class("rope")
    expected = (500.0, 8) if family == "gpt_neox" else (1000.0, 16)
    assert (rope.base, rope.rotary_dim) == expected

    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = original(ids).logits
        assert (model(ids).logits - full).abs().max() <= 1e-5
        padded = original(ids, attention_mask=mask, position_ids=positions).logits
        difference = (model(ids, attention_mask=mask).logits - padded)[mask.bool()]
        assert difference.abs().max() <= 1e-5
    assert torch.equal(generate(model, ids, mask), generate(original, ids, mask))


def test_swap_warns_outside_the_supported_transformers_range(
    checkpoints: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(checkpoints["llama"])
    monkeypatch.setattr("mathpe.hf.swap.transformers_version_supported", lambda: False)
    with pytest.warns(UserWarning, match="supports transformers >=5.24,<6.0"):
        swap_positional_encoding(model, "alibi")


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn"])
def test_scaled_rope_maps_to_long_rope(tmp_path: Path, rope_type: str) -> None:
    rope = {"rope_type": rope_type, "rope_theta": 1000.0, "factor": 2.0}
    if rope_type == "yarn":
        rope["original_max_position_embeddings"] = 16
    config = tiny_config("llama", max_position_embeddings=32, rope_parameters=rope)
    if "long_rope" not in list_pes():
        with pytest.raises(ValueError, match="long_rope"):
            resolve_pe(config, "rope", {})
        return
    path = save_tiny(config, tmp_path / rope_type)
    original = load_model(path).eval()
    model = load_model(path, "rope").eval()
    assert model.config.mathpe_pe == "long_rope"
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - original(ids).logits).abs().max() <= 1e-5


def test_unsupported_rope_type_is_a_clear_error() -> None:
    config = tiny_config("llama")
    config.rope_parameters = {"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0}
    with pytest.raises(ValueError, match="rope_type 'llama3'"):
        resolve_pe(config, "rope", {})
    # With options the user asks for a plain RoPE: the model's base fills the rest.
    assert resolve_pe(config, "rope", {"rotary_fraction": 0.5}) == (
        "rope",
        {"base": 1000.0, "rotary_fraction": 0.5},
    )


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_cached_uncached_and_batched(checkpoints: dict[str, str], family: str, pe: str) -> None:
    model = swapped(checkpoints, family, pe)
    ids, mask = left_padded(PROMPTS)
    cached = generate(model, ids, mask)
    assert cached.shape == (len(PROMPTS), NEW_TOKENS)
    assert torch.equal(cached, generate(model, ids, mask, use_cache=False))
    for row, prompt in enumerate(PROMPTS):
        single = generate(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long))
        assert torch.equal(single[0], cached[row]), f"prompt {row}"
    # Beam search reorders the cache, PE positions and state included.
    beams = generate(model, ids, mask, num_beams=4)
    assert torch.equal(beams, generate(model, ids, mask, num_beams=4, use_cache=False))
    torch.manual_seed(0)
    sampled = generate(model, ids, mask, do_sample=True, top_k=20)
    assert sampled.shape == cached.shape and int(sampled.max()) < VOCAB


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_step_by_step_decoding_matches_full_forward(
    checkpoints: dict[str, str], family: str, pe: str
) -> None:
    model = swapped(checkpoints, family, pe)
    ids, mask = left_padded(PROMPTS)
    prefix = 4
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        # No cache passed: the model creates one (use_cache defaults to True), and PE state lives on it.
        out = model(ids[:, :prefix], attention_mask=mask[:, :prefix])
        steps = [out.logits]
        for end in range(prefix + 1, ids.shape[1] + 1):
            out = model(ids[:, end - 1 : end], attention_mask=mask[:, :end], cache=out.cache)
            steps.append(out.logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_from_inputs_embeds(checkpoints: dict[str, str], family: str, pe: str) -> None:
    model = swapped(checkpoints, family, pe)
    ids, mask = left_padded(PROMPTS)
    embeds = model.get_input_embeddings()(ids).detach()
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=PAD,
    )
    assert out.shape == (len(PROMPTS), NEW_TOKENS)
    if not pe_class(pe).uses_token_ids:  # token-aware PEs see no digits in a prompt given as embeddings
        assert torch.equal(out, generate(model, ids, mask))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(
    checkpoints: dict[str, str], family: str, pe: str, reentrant: bool
) -> None:
    model = swapped(checkpoints, family, pe).train()
    ids, mask = left_padded(PROMPTS)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(0)  # the same training-time randomness (abacus offsets) in both runs
        loss = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    try:
        checkpointed_loss, checkpointed_grads = loss_and_grads()
    except ValueError as error:  # trainable tables shared by all layers need non-reentrant checkpointing
        assert reentrant and "use_reentrant" in str(error)
        return
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)
    pe_grads = [name for name in grads if f"{PE_MODULE_NAME}." in name]
    assert len(pe_grads) == sum(p.requires_grad for p in pe_module(model).parameters())


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_training_changes_only_adapters_and_pe(
    checkpoints: dict[str, str], family: str, pe: str
) -> None:
    model = swapped(checkpoints, family, pe)
    pe_has_parameters = any(p.requires_grad for p in pe_module(model).parameters())
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=lora_target_modules(model),
        modules_to_save=[PE_MODULE_NAME] if pe_has_parameters else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.activation_checkpointing_enable()
    peft_model.train()
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    ids, mask = left_padded(PROMPTS)
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert any("lora_" in name for name in changed)
    assert all("lora_" in name or "modules_to_save" in name for name in changed), sorted(changed)
    assert any("modules_to_save" in name for name in changed) == pe_has_parameters

    peft_model.eval()
    out = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert out.shape == (len(PROMPTS), ids.shape[1] + 4)


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(
    checkpoints: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture, family: str, pe: str
) -> None:
    model = swapped(checkpoints, family, pe)
    with torch.no_grad():  # trained-looking PE weights, so loading them is visible
        for parameter in pe_module(model).parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(str(tmp_path)).eval()
    assert "UNEXPECTED" not in caplog.text  # the PE's keys are expected, and loaded after the swap
    assert (loaded.config.mathpe_pe, loaded.config.mathpe_pe_options) == (
        model.config.mathpe_pe,
        model.config.mathpe_pe_options,
    )
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits, rtol=0, atol=0
        )


@pytest.mark.parametrize("pe", list_pes())
@pytest.mark.parametrize("family", FAMILIES)
def test_swap_keeps_weights_and_builds_pe_in_model_dtype(
    checkpoints: dict[str, str], family: str, pe: str
) -> None:
    original = load_model(checkpoints[family], dtype=torch.bfloat16)
    model = load_model(checkpoints[family], dtype=torch.bfloat16, device="cpu")
    assert swap_positional_encoding(model, pe, **pe_kwargs(pe)) is model
    state, original_state = model.state_dict(), original.state_dict()
    prefix = f"{model.base_model_prefix}.{PE_MODULE_NAME}."
    assert {key for key in state if not key.startswith(prefix)} == set(original_state)
    for key, value in original_state.items():
        assert torch.equal(state[key], value), key
    # Angle-setting parameters of rotary PEs stay float32 by design (RotaryEncoding.float32_parameters).
    kept_float32 = getattr(pe_class(pe), "float32_parameters", ())
    for name, parameter in pe_module(model).named_parameters():
        assert parameter.dtype == (torch.float32 if name in kept_float32 else torch.bfloat16), name
        assert parameter.requires_grad and parameter.device == model.device, name
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        assert model(ids, attention_mask=mask).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_swapping_again_replaces_the_pe(checkpoints: dict[str, str], family: str) -> None:
    model = swapped(checkpoints, family, "alibi")
    swap_positional_encoding(model, "nope")
    assert model.config.mathpe_pe == "nope" and not list(pe_module(model).parameters())
    assert not any(PE_MODULE_NAME in key for key in model.state_dict())
    ids, mask = left_padded(PROMPTS)
    with torch.no_grad():
        expected = swapped(checkpoints, family, "nope")(ids, attention_mask=mask).logits
        assert torch.equal(model(ids, attention_mask=mask).logits, expected)


def test_unsupported_architecture_is_a_clear_error(tmp_path: Path) -> None:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(config)
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    with pytest.raises(ValueError, match=f"GPT2LMHeadModel; supported architectures: {supported}"):
        swap_positional_encoding(model, "alibi")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"'gpt2'; supported architectures: {supported}"):
        load_model(str(tmp_path), "alibi")


def test_unreadable_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError, match="no-such-model': no such directory") as error:
        load_model(missing, "rope")
    assert "\n" not in str(error.value)
    config_only = tmp_path / "config-only"
    tiny_config("llama").save_pretrained(config_only)
    with pytest.raises(OSError, match="config-only") as error:
        load_model(str(config_only), "rope")
    assert "\n" not in str(error.value)


def test_bad_pe_arguments_are_clear_errors(checkpoints: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown PE 'spiral'"):
        load_model(checkpoints["llama"], "spiral")
    with pytest.raises(ValueError, match="unknown option"):
        load_model(checkpoints["llama"], "alibi", slope=2.0)
    with pytest.raises(ValueError, match=r"PE options \['base'\] given without a pe"):
        load_model(checkpoints["llama"], base=100.0)
