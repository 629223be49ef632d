from dataclasses import replace

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from mmcaption.demo.synthetic import COLOURS, Scene, draw_scene
from mmcaption.model import MultimodalCausalLM
from mmcaption.model.backbones import load_language_model
from mmcaption.model.optim import adamw


@pytest.fixture
def inputs(backbones):
    language_dir, vision_dir = backbones
    tokenizer = AutoTokenizer.from_pretrained(language_dir)
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    import random

    rng = random.Random(0)
    images = [draw_scene(Scene("red", "circle", "left"), 64, rng), draw_scene(Scene("blue", "square", "right"), 64, rng)]
    ids = tokenizer(["a red circle on the left", "a blue square on"], add_special_tokens=False)["input_ids"]
    length = min(len(i) for i in ids)
    return {
        "input_ids": torch.tensor([i[:length] for i in ids]),
        "attention_mask": torch.ones(2, length, dtype=torch.long),
        "pixel_values": processor(images=images, return_tensors="pt")["pixel_values"],
    }


def open_gates_and_adapters(model: MultimodalCausalLM) -> None:
    """Move the zero-initialised parts away from zero, as training would."""
    with torch.no_grad():
        for block in model.cross_attention_blocks:
            block.attn_gate.fill_(0.5)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)


def test_logits_equal_plain_language_model_at_initialisation(model, model_config, inputs):
    plain = load_language_model(model_config.language_model, model_config.quantization, model_config.compute_dtype)
    with torch.no_grad():
        expected = plain(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        got = model(**inputs).logits
    assert torch.equal(got, expected)

    # ...and the images do reach the logits once a gate opens.
    open_gates_and_adapters(model)
    with torch.no_grad():
        opened = model(**inputs).logits
        swapped = model(**{**inputs, "pixel_values": inputs["pixel_values"].flip(0)}).logits
    assert not torch.allclose(opened, expected)
    assert not torch.allclose(opened, swapped)


def test_every_trainable_parameter_gets_a_gradient_and_the_base_none(model, inputs):
    open_gates_and_adapters(model)
    model.train()
    logits = model(**inputs).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs["input_ids"][:, 1:].flatten()).backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("attn_gate" in n for n in trainable)
    assert any(n.startswith("projection") for n in trainable)
    for name, param in trainable.items():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("vision_model") for n, _ in frozen)
    assert all(p.grad is None for _, p in frozen)


def test_language_model_is_really_quantized_to_4bit(model):
    base = model.language_model.get_base_model()
    linear4bit = [n for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    # every q/k/v/dense/fc1/fc2 of the 4 decoder layers is a 4-bit layer (the LoRA wraps the base layer)
    assert len(linear4bit) == 4 * 6
    weight = base.model.layers[0].self_attn.q_proj.base_layer.weight
    assert isinstance(weight, bnb.nn.Params4bit)
    assert weight.quant_state.quant_type == "nf4"
    assert weight.numel() * weight.element_size() == 64 * 64 // 2  # packed: 4 bits per weight
    frozen_base = [p for n, p in base.named_parameters() if "lora_" not in n and ".cross_attention." not in n]
    assert frozen_base and all(not p.requires_grad for p in frozen_base)


def test_bfloat16_compute_keeps_the_residual_stream_in_bfloat16(model, model_config, inputs):
    # The real configs (nf4, compute bfloat16, bf16-mixed): the embeddings, head, biases and norms follow the
    # compute dtype, so what the decoder keeps for backward is bfloat16, not float32; LoRA stays float32 (trained).
    base = model.language_model.get_base_model()
    assert model_config.compute_dtype == "bfloat16" and model_config.quantization == "nf4"
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.get_output_embeddings().weight.dtype == torch.bfloat16
    assert base.model.layers[0].self_attn.q_proj.base_layer.bias.dtype == torch.bfloat16
    norms = [p for n, p in base.named_parameters() if "layernorm" in n]
    assert norms and all(p.dtype == torch.bfloat16 for p in norms)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        hidden = base.model(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states
    assert {h.dtype for h in hidden[:-1]} == {torch.bfloat16}  # every decoder layer's input
    with torch.no_grad():  # and outside autocast (generation), with no dtype mismatch anywhere
        assert model(**inputs).logits.dtype == torch.bfloat16

    # float32 compute (the demo configs on a CPU) keeps them float32
    float32 = MultimodalCausalLM.from_config(replace(model_config, compute_dtype="float32"))
    assert float32.language_model.get_base_model().get_input_embeddings().weight.dtype == torch.float32


def test_4bit_layers_give_bfloat16_after_float32_norms_as_torch_linear_does(model, inputs):
    # A GPU's autocast computes layer norms in float32 (a CPU's keeps bfloat16; emulated here). bitsandbytes returned
    # its input's dtype, so the 4-bit q/k/v/fc1 after a norm gave float32 where torch.nn.Linear under autocast gives
    # bfloat16: the GELU kept 4 x the width a token in float32 for backward and the MLP's output turned the residual
    # stream float32 (on an H200 at 16 x 512 tokens in nf4: 36.5 GiB peak, 26.9 GiB once they give bfloat16).
    base = model.language_model.get_base_model()
    norms = [m for m in base.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms
    seen = []
    handles = [norm.register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype),)) for norm in norms]
    handles += [norm.register_forward_hook(lambda module, args, output: output.float()) for norm in norms]
    fc1 = [module for name, module in base.named_modules() if name.endswith("mlp.fc1")]
    handles += [module.register_forward_hook(lambda module, args, output: seen.append(output.dtype)) for module in fc1]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = base.model(input_ids=inputs["input_ids"], output_hidden_states=True).hidden_states
            plain = torch.nn.Linear(64, 64)(hidden[0].float())
    finally:
        for handle in handles:
            handle.remove()
    assert plain.dtype == torch.bfloat16  # what autocast makes of a float32 input to torch's own Linear
    assert len(fc1) == 4 and seen == [torch.bfloat16] * 4  # the GELU's input, kept for backward
    assert {h.dtype for h in hidden[1:-1]} == {torch.bfloat16}  # each decoder layer's output: the residual stream


def test_fp4_and_no_quantization_choices(model_config):
    fp4 = load_language_model(model_config.language_model, "fp4", "bfloat16")
    assert fp4.model.layers[0].self_attn.q_proj.weight.quant_state.quant_type == "fp4"
    plain = load_language_model(model_config.language_model, "none", "float32")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())


def test_cross_attention_wraps_the_configured_layers(model):
    layers = model.decoder_layers
    assert model.cross_attention_layer_indices == [2, 3]
    assert [hasattr(layer, "cross_attention") for layer in layers] == [False, False, True, True]
    assert model.gate_values() == {2: {"attn": 0.0}, 3: {"attn": 0.0}}


def test_layer_outside_the_model_is_refused(model_config):
    model_config.cross_attention_layers = [7]
    with pytest.raises(ValueError, match="has 4 decoder layers"):
        MultimodalCausalLM.from_config(model_config)


def test_synthetic_colours_are_distinct():
    assert len(set(COLOURS.values())) == len(COLOURS)
    image = draw_scene(Scene("red", "square", "left"), 64, __import__("random").Random(0))
    assert isinstance(image, Image.Image) and image.getpixel((12, 32)) != image.getpixel((52, 32))


def test_training_after_an_evaluation_pass_still_reaches_the_first_layer(model, inputs):
    """bitsandbytes' CPU inference repacking must not break training after validation."""
    open_gates_and_adapters(model)
    with torch.no_grad():
        before = model(**inputs).logits
    model.train()
    model(**inputs).logits.square().mean().backward()
    first = model.decoder_layers[0].self_attn.q_proj.lora_A["default"].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_several_vision_layers_are_concatenated_along_the_width(model_config, inputs):
    from dataclasses import replace

    model = MultimodalCausalLM.from_config(replace(model_config, vision_feature_layer=[-2, -1])).eval()
    width = model.vision_model.config.hidden_size
    assert model.projection.in_features == 2 * width
    with torch.no_grad():
        features = model.vision_features(inputs["pixel_values"])
        hidden = model.vision_model(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(features, torch.cat([hidden[-2], hidden[-1]], dim=-1))
    assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_a_text_only_row_reads_no_image_in_a_mixed_batch(model, inputs):
    open_gates_and_adapters(model)
    mask = torch.tensor([True, False])
    with torch.no_grad():
        mixed = model(**inputs, image_mask=mask).logits
        with_images = model(**inputs).logits
        text_only = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(mixed[1], text_only[1], rtol=0, atol=0)  # exactly the language model (+ LoRA)
    torch.testing.assert_close(mixed[0], with_images[0], rtol=0, atol=0)  # the image row is untouched
    assert not torch.allclose(with_images[1], text_only[1])  # the image did matter for that row

    # generation: the text-only row generates what the language model alone generates
    prompt = {"input_ids": inputs["input_ids"][:, :2], "attention_mask": inputs["attention_mask"][:, :2]}
    tokens = model.generate(**prompt, pixel_values=inputs["pixel_values"], image_mask=mask, max_new_tokens=4, do_sample=False)
    alone = model.language_model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)[:, 2:]
    assert torch.equal(tokens[1], alone[1])


def test_the_training_loss_reads_the_logits_the_model_generates_from_soft_capped_or_scaled(model):
    # Gemma 2's soft-capping and Granite's and Cohere's scaling happen in the model's forward, after its head: the training
    # loss, which applies the head itself, trained another distribution than generation samples from (a Gemma 2 at real
    # logit sizes: 230 where the model's own loss is 33)
    from transformers import (
        CohereConfig,
        CohereForCausalLM,
        Gemma2Config,
        Gemma2ForCausalLM,
        GraniteConfig,
        GraniteForCausalLM,
        HyperCLOVAXConfig,
        HyperCLOVAXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from mmcaption.model.loss import FinalLogits, final_logits

    multimodal = model
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2)
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 7))
    for model in (Gemma2ForCausalLM(Gemma2Config(**small, head_dim=8, final_logit_softcapping=3.0)),
                  GraniteForCausalLM(GraniteConfig(**small, logits_scaling=8.0)),
                  HyperCLOVAXForCausalLM(HyperCLOVAXConfig(**small, logits_scaling=0.125)),  # (a multiplier, Granite's divides)
                  CohereForCausalLM(CohereConfig(**small, logit_scale=0.25)), LlamaForCausalLM(LlamaConfig(**small))):
        model.lm_head.weight.data *= 50  # logits large enough for the cap and the scales to change them
        model.eval()
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state
            assert torch.allclose(final_logits(model.lm_head, model.config)(hidden), model(input_ids=ids).logits, atol=1e-4), \
                type(model).__name__
    assert final_logits(model.lm_head, model.config) is model.lm_head  # a Llama's (a Phi's): the head itself
    # the model's own head is the one the loss applies: a backbone soft-capped (Gemma 2's setting on the tiny Phi)
    multimodal.language_model.get_base_model().config.final_logit_softcapping = 3.0
    head = multimodal.output_head
    assert isinstance(head, FinalLogits) and head.cap == 3.0 and head.head is multimodal.language_model.get_base_model().lm_head
    unset = __import__("types").SimpleNamespace(model_type="granitemoe", logits_scaling=None, logit_scale=None)  # (typed so)
    assert final_logits(model.lm_head, unset) is model.lm_head  # None: unscaled, as the model's forward reads it


def test_chunked_loss_equals_the_plain_loss_and_its_gradients(model, inputs):
    from mmcaption.model.loss import IGNORE_INDEX, chunked_cross_entropy

    open_gates_and_adapters(model)
    model.eval()  # no dropout: both passes see the same function
    labels = inputs["input_ids"].clone()
    labels[0, :2] = IGNORE_INDEX  # a prompt the loss skips, as the collators mask it
    trainable = [p for p in model.parameters() if p.requires_grad]

    logits = model(**inputs).logits[:, :-1].float()
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
    plain_grads = torch.autograd.grad(plain, trainable)

    hidden = model.hidden_states(**inputs)
    chunked, tokens = chunked_cross_entropy(hidden, model.output_head, labels, chunk_size=3)  # several chunks
    chunked_grads = torch.autograd.grad(chunked, trainable)

    assert tokens == (labels[:, 1:] != IGNORE_INDEX).sum()
    assert torch.allclose(chunked, plain, rtol=1e-5)
    for got, expected in zip(chunked_grads, plain_grads):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)

    # a batch without any label: zero, and backward still runs (a DDP rank may get such a batch)
    empty, none = chunked_cross_entropy(model.hidden_states(**inputs), model.output_head, torch.full_like(labels, IGNORE_INDEX))
    empty.backward()
    assert empty.item() == 0 and none == 0


def test_the_optimizer_is_torchs_fused_adamw_with_the_plain_update():
    """Training steps use the fused kernel on CPU and CUDA tensors; its update is the same AdamW, weight
    decay groups included, as the per-tensor loop's."""
    torch.manual_seed(0)
    weights = [torch.randn(8, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_() for w in weights]
    initial = [w.detach().clone() for w in weights]
    settings = {"lr": 1e-2, "betas": (0.9, 0.95)}
    fused = adamw([{"params": weights[:1], "weight_decay": 0.1}, {"params": weights[1:], "weight_decay": 0.0}], **settings)
    plain = torch.optim.AdamW([{"params": copies[:1], "weight_decay": 0.1}, {"params": copies[1:], "weight_decay": 0.0}],
                              foreach=False, **settings)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for group, optimizer in ((weights, fused), (copies, plain)):
            for w, g in zip(group, grads):
                w.grad = g.clone()
            optimizer.step()
    for w, c, start in zip(weights, copies, initial):
        torch.testing.assert_close(w, c)
        assert torch.all(w != start)  # every weight moved
