"""mathpe's decoder with every PE: cached == uncached generation, padded == unpadded, training, save/load."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import DEVICES
from helpers import DIGIT_IDS, default_pe_options, left_pad, perturb_parameters, step_by_step_logits
from mathpe.model import MathPEConfig, MathPEForCausalLM, preset_config
from mathpe.pe import list_pes

VOCAB, PAD, EOS = 24, 0, 1
MAX_POSITION = 64
ALL_PES = list_pes()


def make_model(pe: str, **overrides) -> MathPEForCausalLM:
    config = MathPEConfig(
        pe=pe,
        pe_options=default_pe_options(pe),
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=MAX_POSITION,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
        **overrides,
    )
    model = MathPEForCausalLM(config)
    perturb_parameters(model.model.pe)
    return model.eval()


def prompt(length: int, seed: int) -> torch.Tensor:
    """(1, length) ids, about half of them digits, none of them pad or eos."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (1, length), generator=generator)


def greedy(model, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
    return model.generate(
        input_ids,
        attention_mask=attention_mask if attention_mask is not None else torch.ones_like(input_ids),
        max_new_tokens=24,
        min_new_tokens=24,
        do_sample=False,
        pad_token_id=PAD,
        **kwargs,
    )


@pytest.mark.parametrize("pe", ALL_PES)
def test_cached_and_uncached_greedy_generation_agree(pe: str):
    model = make_model(pe)
    ids = prompt(9, seed=1)
    with_cache = greedy(model, ids, use_cache=True)
    without_cache = greedy(model, ids, use_cache=False)
    assert with_cache.shape == (1, 9 + 24)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("pe", ALL_PES)
def test_full_sequence_logits_equal_step_by_step_cached_logits(pe: str):
    model = make_model(pe)
    ids = prompt(20, seed=2)
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(step_by_step_logits(model, ids, prefix=5), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pe", ALL_PES)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(pe: str):
    model = make_model(pe)
    prompts = [prompt(length, seed=10 + length) for length in (4, 11, 7)]
    batch, mask = left_pad(prompts, PAD)
    width = batch.shape[1]
    batched = greedy(model, batch, mask)
    for row, p in enumerate(prompts):
        alone = greedy(model, p)
        assert torch.equal(batched[row, width - p.shape[1] :], alone[0]), f"row {row} differs"


@pytest.mark.parametrize("pe", ALL_PES)
def test_sampling_and_beam_search_run(pe: str):
    model = make_model(pe)
    ids = prompt(6, seed=3).repeat(2, 1)
    sampled = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=5, pad_token_id=PAD)
    beams = model.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=PAD)
    assert sampled.shape[0] == 2 and beams.shape[0] == 2
    assert sampled.shape[1] > 6 and beams.shape[1] > 6


def test_beam_search_keeps_digit_state_with_its_beam():
    """Beam search reorders the carried PE state with the cache: cached and uncached beams agree."""
    model = make_model("abacus")
    ids = torch.tensor([DIGIT_IDS[:5]])
    cached = model.generate(ids, max_new_tokens=10, num_beams=4, do_sample=False, pad_token_id=PAD)
    uncached = model.generate(
        ids, max_new_tokens=10, num_beams=4, do_sample=False, pad_token_id=PAD, use_cache=False
    )
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("pe", ALL_PES)
def test_forward_up_to_four_times_the_training_length(pe: str):
    model = make_model(pe)
    ids = prompt(4 * MAX_POSITION, seed=4)
    if pe == "learned":
        with pytest.raises(ValueError, match=f"supports positions 0..{MAX_POSITION - 1}"):
            model(ids)
        return
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 4 * MAX_POSITION, VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pe", ["rope", "abacus", "alibi"])
def test_save_pretrained_then_auto_from_pretrained_gives_identical_logits(pe: str, tmp_path):
    model = make_model(pe)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MathPEForCausalLM)
    ids = prompt(15, seed=5)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def training_batch() -> dict[str, torch.Tensor]:
    ids = torch.cat([prompt(16, seed=s) for s in range(4)])
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def train_steps(model, steps: int = 8, lr: float = 3e-3) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch, losses = training_batch(), []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("pe", ALL_PES)
def test_optimisation_steps_reduce_the_loss(pe: str, checkpointing: bool):
    model = make_model(pe)
    if checkpointing:
        model.gradient_checkpointing_enable()
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model("t5_relative" if "t5_relative" in ALL_PES else "alibi")
    model.train()
    batch = training_batch()
    model(**batch).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(**batch).loss.backward()
    for expected, parameter in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, expected)


@pytest.mark.parametrize("pe", ["rope", "alibi", "abacus"])
def test_lora_trains_only_the_adapters(pe: str):
    model = make_model(pe)
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "out_proj", "fc_in", "fc_out"])
    )
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    losses = train_steps(lora, steps=8, lr=1e-2)
    assert losses[-1] < losses[0]
    changed = {name for name, p in lora.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)


def test_presets_have_the_documented_shapes():
    tiny = MathPEForCausalLM(preset_config("tiny", vocab_size=32))
    assert 0.5e6 < tiny.num_parameters() < 1.5e6
    base = preset_config("base")
    assert (base.hidden_size, base.num_layers, base.num_heads, base.max_position_embeddings) == (
        768,
        12,
        12,
        2048,
    )
    with pytest.raises(ValueError, match="unknown model size 'huge'; presets are tiny, small, base"):
        preset_config("huge")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pe", ALL_PES)
def test_runs_on_device_in_each_dtype(pe: str, device: str, dtype: torch.dtype):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("fp16 matmuls are a CUDA feature")
    model = make_model(pe).to(device=device, dtype=dtype)
    ids = prompt(10, seed=6).to(device)
    logits = model(ids).logits
    assert logits.dtype == dtype and logits.device.type == device
    assert torch.isfinite(logits).all()
    generated = greedy(model, ids)
    assert generated.shape == (1, 34)


def test_config_checks_field_types_and_ranges_as_transformers_configs_do(tmp_path):
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import LlamaConfig

    from mathpe.errors import ConfigError, ModelLoadError
    from mathpe.hf import load_model

    for config_class, field in ((LlamaConfig, "num_hidden_layers"), (MathPEConfig, "num_layers")):
        with pytest.raises(StrictDataclassFieldValidationError, match="expected int, got float"):
            config_class(**{field: 1.5})
    assert MathPEConfig(dropout=0).dropout == 0  # an int where a float is expected, as transformers allows
    with pytest.raises(
        ConfigError, match=r"^Validation error for field 'dropout': ValueError: .* got 1.5\.$"
    ):
        preset_config("tiny", dropout=1.5)
    with pytest.raises(ConfigError, match=r"^hidden_size=128 is not divisible by num_heads=3$"):
        preset_config("tiny", num_heads=3)

    MathPEForCausalLM(preset_config("tiny")).save_pretrained(tmp_path)
    saved = tmp_path / "config.json"
    saved.write_text(saved.read_text().replace('"num_layers": 4', '"num_layers": 0'))
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tmp_path))
    assert "\n" not in str(error.value)
    assert str(error.value).endswith(
        "field 'num_layers': ValueError: Value must be a positive integer, got 0"
    )
