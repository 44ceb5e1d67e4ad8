"""The model contracts transformers' own test suites check, for mathpe's decoder and swapped GPT-NeoX / Llama,
with every registry PE: tuple outputs, hidden states, attention weights, eager == SDPA, the ``past_key_values``
alias, meta-device init, checkpointing and cache refusals, generation outputs, assisted decoding and PEFT."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModel, PreTrainedModel
from transformers.cache_utils import Cache

from helpers import left_pad, perturb_parameters
from mathpe import attention
from mathpe.hf import PE_MODULE_NAME, load_model
from mathpe.model import MathPEConfig, MathPEForCausalLM, MathPEModel
from mathpe.pe import list_pes, pe_class
from test_hf_swap import pe_kwargs, save_tiny, tiny_config
from test_model import make_model

ALL_PES = list_pes()
MODELS = ("decoder", "gpt_neox", "llama")
PAD = 0
VOCAB = 24  # ids below the decoder's vocabulary, valid for the swapped models too


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("contracts")
    return {family: save_tiny(tiny_config(family), root / family) for family in MODELS[1:]}


def build(checkpoints: dict[str, str], kind: str, pe: str) -> PreTrainedModel:
    """A tiny eval-mode model: mathpe's decoder, or a saved GPT-NeoX / Llama with ``pe`` swapped in; PE weights
    perturbed so zero-initialised parts (gates, tables) matter."""
    if kind == "decoder":
        return make_model(pe)
    model = load_model(checkpoints[kind], pe, **pe_kwargs(pe)).eval()
    perturb_parameters(getattr(model.get_decoder(), PE_MODULE_NAME))
    return model


def prompts(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (1, length), generator=generator) for length in lengths]


def padded_batch(side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 9 and 5 tokens, padded on ``side``: (2, 9) ids and mask."""
    ids, mask = left_pad(prompts(9, 5), PAD)
    if side == "right":
        ids[1], mask[1] = ids[1].roll(-4), mask[1].roll(-4)
    return ids, mask


def attention_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    decoder = model.get_decoder()
    names = ("attn", "attention", "self_attn")  # mathpe's decoder, GPT-NeoX, Llama
    return [next(getattr(layer, name) for name in names if hasattr(layer, name)) for layer in decoder.layers]


def attention_from_weights(
    module: torch.nn.Module, hidden: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The attention module's output for input ``hidden`` (batch, seq, hidden) if it attended with ``weights``
    (batch, heads, seq, seq): the values of the module's own projections, mixed by ``weights``, then its output
    projection."""
    batch, seq, _ = hidden.shape
    if hasattr(module, "qkv_proj"):  # mathpe's decoder: [q | k | v], each (heads, head_dim)
        value = module.qkv_proj(hidden).view(batch, seq, 3, module.num_heads, module.head_dim)[:, :, 2]
        project = module.out_proj
    elif hasattr(module, "query_key_value"):  # GPT-NeoX: per head [q | k | v]
        qkv = module.query_key_value(hidden).view(batch, seq, -1, 3 * module.head_size)
        value = qkv.chunk(3, dim=-1)[2]
        project = module.dense
    else:  # Llama, grouped-query
        value = module.v_proj(hidden).view(batch, seq, -1, module.head_dim)
        value = value.repeat_interleave(module.num_key_value_groups, dim=2)
        project = module.o_proj
    mixed = weights @ value.transpose(1, 2)  # (batch, heads, seq, head_dim)
    return project(mixed.transpose(1, 2).reshape(batch, seq, -1))


# --- 1. return_dict, hidden states, attention weights, eager == sdpa ------------------------------------------


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_return_dict_false_gives_tuples_in_transformers_order(checkpoints, kind: str, pe: str) -> None:
    model = build(checkpoints, kind, pe)
    ids = prompts(8)[0]
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=False)
        loss, logits = model(ids, labels=ids, return_dict=False, use_cache=False)
        logits_cached, cache, hidden_states, attentions = model(
            ids, return_dict=False, output_hidden_states=True, output_attentions=True
        )
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
    assert isinstance(cache, Cache) and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(logits_cached, out.logits)
    layers = model.config.num_hidden_layers
    assert len(hidden_states) == layers + 1 and len(attentions) == layers


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_hidden_states_are_the_embeddings_then_each_layer_output(checkpoints, kind: str, pe: str) -> None:
    model = build(checkpoints, kind, pe)
    ids, mask = padded_batch()
    decoder = model.get_decoder()
    layer_inputs, layer_outputs = [], []
    hooks = [
        decoder.layers[0].register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0])),
        *(
            layer.register_forward_hook(lambda m, a, out: layer_outputs.append(out))
            for layer in decoder.layers
        ),
    ]
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        last = decoder(ids, attention_mask=mask).last_hidden_state
    for hook in hooks:
        hook.remove()
    hidden_states = out.hidden_states
    assert len(hidden_states) == len(decoder.layers) + 1
    torch.testing.assert_close(hidden_states[0], layer_inputs[0], rtol=0, atol=0)
    for index in range(1, len(decoder.layers)):
        torch.testing.assert_close(hidden_states[index], layer_outputs[index - 1], rtol=0, atol=0)
    torch.testing.assert_close(
        hidden_states[-1], last, rtol=0, atol=0
    )  # after the final norm, as transformers
    if pe_class(pe).kind != "additive":  # no dropout: the first hidden state is the token embeddings
        torch.testing.assert_close(hidden_states[0], model.get_input_embeddings()(ids), rtol=0, atol=0)


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_attentions_are_the_probabilities_sdpa_attends_with(checkpoints, kind: str, pe: str) -> None:
    model = build(checkpoints, kind, pe)
    ids, mask = padded_batch()
    modules = attention_modules(model)
    inputs, outputs = {}, {}

    def record(module, args, kwargs, out) -> None:
        inputs[module] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        outputs[module] = out[0]

    hooks = [module.register_forward_hook(record, with_kwargs=True) for module in modules]
    with torch.no_grad():
        model(ids, attention_mask=mask)  # SDPA: records each attention module's input and output
        for hook in hooks:
            hook.remove()
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
        assert len(attentions) == len(modules)
        real = mask.bool()
        causal = torch.ones(9, 9, dtype=torch.bool).tril()
        for module, weights in zip(modules, attentions, strict=True):
            assert weights.shape == (2, model.config.num_attention_heads, 9, 9)
            sums = weights.sum(-1)
            torch.testing.assert_close(sums, torch.ones_like(sums))
            for row in range(2):  # real queries put no weight on later tokens nor on padding
                allowed = causal[real[row]] & real[row]
                assert (weights[row][:, real[row]][:, ~allowed] == 0).all()
            rebuilt = attention_from_weights(module, inputs[module], weights)
            torch.testing.assert_close(rebuilt[real], outputs[module][real], rtol=1e-4, atol=1e-4)


def assert_close_in(dtype: torch.dtype, got: torch.Tensor, expected: torch.Tensor) -> None:
    """float32: elementwise within 1e-4. bfloat16: relative (Frobenius) error below 2.5%; eager rounds logits and
    probabilities to bfloat16 where SDPA keeps float32 (transformers' own Llama and GPT-NeoX show 0.7-1.5% between
    their eager and SDPA attention on these tiny models)."""
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    else:
        error = (got.float() - expected.float()).norm() / expected.float().norm()
        assert error < 0.025, f"relative error {error:.4f}"


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_eager_attention_equals_sdpa_in_float32_and_bfloat16_with_left_and_right_padding(
    checkpoints, kind: str, pe: str
) -> None:
    model = build(checkpoints, kind, pe)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        for side in ("left", "right"):
            ids, mask = padded_batch(side)
            real = mask.bool()
            with torch.no_grad():
                model.set_attn_implementation("sdpa")
                sdpa = model(ids, attention_mask=mask, output_hidden_states=True)
                model.set_attn_implementation("eager")
                eager = model(ids, attention_mask=mask, output_hidden_states=True)
            assert model.config._attn_implementation == "eager"
            for got, expected in zip(eager.hidden_states, sdpa.hidden_states, strict=True):
                assert_close_in(dtype, got[real], expected[real])
            assert_close_in(dtype, eager.logits[real], sdpa.logits[real])


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_attention_weights_are_computed_only_when_asked(checkpoints, kind: str, pe: str, monkeypatch) -> None:
    model = build(checkpoints, kind, pe)
    calls = []
    explicit = attention.explicit_attention
    monkeypatch.setattr(attention, "explicit_attention", lambda *a, **k: calls.append(1) or explicit(*a, **k))
    ids = prompts(6)[0]
    with torch.no_grad():
        out = model(ids)
        assert out.attentions is None and not calls  # SDPA alone
        model(ids, output_attentions=True)
        assert len(calls) == len(attention_modules(model))
        model.set_attn_implementation("eager")  # the explicit path, weights returned though not asked for
        assert len(model(ids).attentions or ()) == 0 and len(calls) == 2 * len(attention_modules(model))


# --- 2. past_key_values, meta-device init, AutoModel, checkpointing, static cache, inputs_embeds ---------------


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_past_key_values_alias_decodes_step_by_step_as_the_full_sequence(
    checkpoints, kind: str, pe: str
) -> None:
    """``past_key_values=`` is ``cache=`` with transformers' deprecation warning (as its Llama and GPT-NeoX)."""
    model = build(checkpoints, kind, pe)
    ids = prompts(12)[0]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :4])
        steps = [out.logits]
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
            for index in range(4, ids.shape[1]):
                out = model(ids[:, index : index + 1], past_key_values=out.cache)
                steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pe", ALL_PES)
def test_meta_device_model_gets_every_pe_tensor_back_from_init_weights(pe: str) -> None:
    config = make_model(pe).config
    reference = MathPEForCausalLM(config)
    with torch.device("meta"):
        model = MathPEForCausalLM(config)
    model.to_empty(device="cpu")
    with torch.no_grad():  # whatever to_empty left, make it visibly wrong
        for tensor in model.state_dict().values():
            tensor.fill_(
                True if tensor.dtype == torch.bool else float("nan") if tensor.is_floating_point() else 7
            )
    model.init_weights()
    pe_module, reference_pe = model.model.pe, reference.model.pe
    for name, buffer in reference_pe.named_buffers():
        assert torch.equal(pe_module.get_buffer(name), buffer), name
    for name, parameter in reference_pe.named_parameters():
        restored = pe_module.get_parameter(name)
        assert torch.isfinite(restored).all(), name
        if (parameter == parameter.flatten()[0]).all():  # a constant initialisation (ones, zeros): exactly it
            assert torch.equal(restored, parameter), name
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    ids = prompts(10)[0]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_auto_model_from_config_builds_the_base_model() -> None:
    assert isinstance(AutoModel.from_config(MathPEConfig()), MathPEModel)
    assert isinstance(AutoModel.from_config(MathPEConfig(pe="alibi", num_layers=1)).pe, pe_class("alibi"))


@pytest.mark.parametrize("pe", ALL_PES)
def test_reentrant_checkpointing_works_or_is_refused_up_front(pe: str) -> None:
    model = make_model(pe).train()
    ids = torch.cat(prompts(12, 12, seed=3))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(0)  # the same training-time randomness (abacus offsets) in both runs
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    try:
        model(ids, labels=ids)
    except ValueError as error:  # refused in the forward, before any backward, with one line
        assert "use_reentrant" in str(error) and "\n" not in str(error)
        return
    checkpointed_loss, checkpointed_grads = loss_and_grads()
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_static_cache_is_refused_up_front(checkpoints, kind: str, pe: str) -> None:
    model = build(checkpoints, kind, pe)
    ids = prompts(6)[0]
    with pytest.raises(ValueError, match=r"^mathpe models do not support a static cache \(StaticCache"):
        model.generate(ids, max_new_tokens=3, cache_implementation="static", pad_token_id=PAD)


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_token_aware_pe_warns_when_given_inputs_embeds_without_input_ids(
    checkpoints, kind: str, pe: str
) -> None:
    model = build(checkpoints, kind, pe)
    ids = prompts(6)[0]
    embeds = model.get_input_embeddings()(ids).detach()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(inputs_embeds=embeds)
        model(ids)
    messages = [str(warning.message) for warning in caught if "reads token ids" in str(warning.message)]
    expected = [f"PE {pe!r} reads token ids but got inputs_embeds without input_ids"] * pe_class(
        pe
    ).uses_token_ids
    assert [message.split(":")[0] for message in messages] == expected


# --- 3. generation outputs, assisted decoding, PEFT -----------------------------------------------------------


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_generate_returns_scores_attentions_and_hidden_states(checkpoints, kind: str, pe: str) -> None:
    model = build(checkpoints, kind, pe)
    ids, mask = left_pad(prompts(7, 4, seed=5), PAD)
    layers, heads, new = model.config.num_hidden_layers, model.config.num_attention_heads, 4
    for strategy in (
        {"do_sample": False},
        {"do_sample": True, "top_k": 4},
        {"num_beams": 2, "do_sample": False},
    ):
        options = {"max_new_tokens": new, "min_new_tokens": new, "pad_token_id": PAD, **strategy}
        torch.manual_seed(0)
        plain = model.generate(ids, attention_mask=mask, **options)
        torch.manual_seed(0)
        out = model.generate(
            ids,
            attention_mask=mask,
            output_scores=True,
            output_attentions=True,
            output_hidden_states=True,
            return_dict_in_generate=True,
            **options,
        )
        assert torch.equal(out.sequences, plain), strategy  # the explicit attention path decodes the same
        rows = ids.shape[0] * strategy.get("num_beams", 1)
        assert len(out.scores) == new and out.scores[0].shape == (rows, model.config.vocab_size)
        assert len(out.attentions) == new and len(out.hidden_states) == new
        for step, (attentions, hidden_states) in enumerate(
            zip(out.attentions, out.hidden_states, strict=True)
        ):
            queries, keys = (ids.shape[1], ids.shape[1]) if step == 0 else (1, ids.shape[1] + step)
            assert len(attentions) == layers and len(hidden_states) == layers + 1
            assert attentions[0].shape == (rows, heads, queries, keys)
            assert hidden_states[-1].shape == (rows, queries, model.config.hidden_size)


def counting_crops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many tokens each ``Cache.crop`` removes."""
    removed: list[int] = []
    crop = Cache.crop

    def recording_crop(cache: Cache, tokens_to_remove: int) -> None:
        removed.append(-tokens_to_remove)
        crop(cache, tokens_to_remove)

    monkeypatch.setattr(Cache, "crop", recording_crop)
    return removed


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_assisted_decoding_equals_greedy_decoding(checkpoints, kind: str, pe: str, monkeypatch) -> None:
    """A different assistant proposes candidates the model rejects: both caches are cropped, and the PE's cached
    positions and state must rewind with them."""
    model = build(checkpoints, kind, pe)
    assistant = copy.deepcopy(model)
    perturb_parameters(assistant, scale=0.1)
    ids = prompts(6, seed=7)[0]
    options = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": PAD}
    greedy = model.generate(ids, **options)
    removed = counting_crops(monkeypatch)
    assisted = model.generate(ids, assistant_model=assistant, **options)
    assert any(removed), "no candidate was rejected: the test would not exercise cropping"
    assert torch.equal(assisted, greedy)
    out = model.generate(
        ids, assistant_model=assistant, output_attentions=True, return_dict_in_generate=True, **options
    )
    assert torch.equal(out.sequences, greedy)
    assert len(out.attentions) == 12 and out.attentions[-1][0].shape[-1] == ids.shape[1] + 11


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("kind", MODELS)
def test_cropped_cache_continues_as_if_the_removed_tokens_never_came(checkpoints, kind: str, pe: str) -> None:
    """What assisted decoding does: a forward over accepted and rejected tokens, ``cache.crop`` of the rejected
    ones mid-forward, then decoding on. The digit run open at the crop continues after it (10-12 are digits for
    every test model), so a PE state that did not rewind gives other logits."""
    model = build(checkpoints, kind, pe)
    ids = torch.tensor([[2, 13, 14, 2, 10, 2, 11, 12, 10, 11, 2, 12, 10, 2]])
    rejected = torch.tensor([[12, 11, 10]])
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = model(ids[:, :6]).cache
        chunk = model(torch.cat([ids[:, 6:9], rejected], 1), cache=cache)
        chunk.cache.crop(-rejected.shape[1])
        steps, cache = [chunk.logits[:, :3]], chunk.cache
        for index in range(9, ids.shape[1]):
            out = model(ids[:, index : index + 1], cache=cache)
            steps.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 6:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pe", ALL_PES)
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_peft_prefix_and_prompt_tuning_train_a_step_on_the_decoder(pe: str, method: str) -> None:
    """Prefix tuning passes its virtual keys and values as ``past_key_values`` (tokens the PE never saw: they get
    positions from the mask), prompt tuning passes ``inputs_embeds``; the virtual tokens must change the logits
    and one optimiser step must train them."""
    config_class = PrefixTuningConfig if method == "prefix" else PromptTuningConfig
    model = get_peft_model(make_model(pe), config_class(task_type="CAUSAL_LM", num_virtual_tokens=4))
    ids = torch.cat(prompts(8, 8, seed=11))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    before = [parameter.detach().clone() for parameter in trained]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # past_key_values deprecation; token-aware PEs given inputs_embeds
        with torch.no_grad(), model.disable_adapter():
            base_logits = model(**batch).logits
        model.train()
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
    assert torch.isfinite(out.loss)
    assert not torch.allclose(out.logits[:, -ids.shape[1] :], base_logits[:, -ids.shape[1] :])
    assert all(not torch.equal(parameter, old) for parameter, old in zip(trained, before, strict=True))
