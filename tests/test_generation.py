import pytest
import torch
from transformers import AutoTokenizer

from mmcaption.collate import collate


@pytest.fixture
def open_model(model):
    """The tiny model with open gates and non-zero LoRA, so images and adapters shape the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for block in model.cross_attention_blocks:
            block.attn_gate.fill_(1.0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


@pytest.fixture
def prompts(backbones):
    tokenizer = AutoTokenizer.from_pretrained(backbones[0])
    texts = ["a", "there are two", "a picture of a red"]
    samples = [{"input_ids": torch.tensor(tokenizer(t)["input_ids"])} for t in texts]
    return collate(samples, pad_token_id=tokenizer.eos_token_id, padding_side="left"), torch.randn(3, 3, 64, 64)


def test_cached_and_uncached_generation_return_the_same_tokens(open_model, prompts):
    batch, pixels = prompts
    cached = open_model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=10, do_sample=False)
    uncached = open_model.generate(
        batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=10, do_sample=False,
        use_cache=False, cache_image_key_values=False,
    )
    assert cached.shape == (3, 10)
    assert torch.equal(cached, uncached)


def test_image_key_values_are_computed_once_per_generate_call(open_model, prompts, monkeypatch):
    batch, pixels = prompts
    calls = []
    block = open_model.cross_attention_blocks[0]
    original = block.image_key_values
    monkeypatch.setattr(block, "image_key_values", lambda embeds: calls.append(1) or original(embeds))
    open_model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=6, do_sample=False)
    assert len(calls) == 1
    assert all(layer.generation_images is None for layer in open_model.decoder_layers if hasattr(layer, "generation_images"))


def test_left_padded_batch_gives_what_each_prompt_gives_alone(open_model, prompts):
    batch, pixels = prompts
    together = open_model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=8, do_sample=False)
    for i in range(3):
        mask = batch["attention_mask"][i].bool()
        alone = open_model.generate(
            batch["input_ids"][i][mask][None], torch.ones(1, int(mask.sum()), dtype=torch.long),
            pixel_values=pixels[i : i + 1], max_new_tokens=8, do_sample=False,
        )
        assert torch.equal(together[i], alone[0]), i


def test_images_steer_generation_and_beam_search_follows_its_images(open_model, prompts):
    batch, pixels = prompts
    greedy = open_model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=8, do_sample=False)
    other = open_model.generate(batch["input_ids"], batch["attention_mask"], pixel_values=pixels.roll(1, 0), max_new_tokens=8, do_sample=False)
    assert not torch.equal(greedy, other)
    beams = open_model.generate(
        batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=8, num_beams=3, num_return_sequences=2
    )
    assert beams.shape[0] == 6
    sampled = open_model.generate(
        batch["input_ids"], batch["attention_mask"], pixel_values=pixels, max_new_tokens=8, do_sample=True, top_p=0.9
    )
    assert sampled.shape[0] == 3


def test_the_language_models_own_generation_settings_do_not_change_what_the_run_records(open_model, prompts, backbones):
    """transformers fills what a generate call leaves unset from the language model's generation_config.json: a
    repetition_penalty there changed every caption while results.json recorded plain greedy search."""
    from mmcaption.tasks import Tasks

    batch, pixels = prompts
    tokenizer = AutoTokenizer.from_pretrained(backbones[0])
    plain = Tasks(open_model, tokenizer, {"max_new_tokens": 12}).generate(batch["input_ids"], batch["attention_mask"], pixels)
    file_settings = open_model.language_model.generation_config
    file_settings.repetition_penalty, file_settings.no_repeat_ngram_size = 5.0, 1
    file_settings.temperature = 0.6  # a sampling setting, which greedy search would not use anyway: not named
    with pytest.warns(UserWarning, match=r"generation_config.json sets repetition_penalty 5.0, no_repeat_ngram_size 1: not "
                                         r"used.*give --model.generation.repetition_penalty 5.0, --model.generation.no_repeat_ngram_size 1 to use them$"):
        tasks = Tasks(open_model, tokenizer, {"max_new_tokens": 12}, option="--model.generation.")  # the command line's
        assert tasks.generate(batch["input_ids"], batch["attention_mask"], pixels) == plain
    with pytest.warns(UserWarning, match=r"give repetition_penalty=5.0, no_repeat_ngram_size=1 \(a setting of the call"):
        assert Tasks(open_model, tokenizer, {"max_new_tokens": 12}).generate(batch["input_ids"], batch["attention_mask"], pixels) == plain
    # ... and the file's settings are used when the run gives them: then they change the texts
    asked = Tasks(open_model, tokenizer, {"max_new_tokens": 12, "repetition_penalty": 5.0, "no_repeat_ngram_size": 1})
    assert asked.generate(batch["input_ids"], batch["attention_mask"], pixels) != plain


def test_sampling_settings_without_sampling_are_said_to_change_nothing(monkeypatch):
    import warnings

    from mmcaption import generation_settings

    monkeypatch.setattr(generation_settings, "_SAID", set())
    # `--model.generation.temperature 0.7` alone: greedy captions as before, and transformers said only "The following
    # generation flags are not valid and may be ignored: ['temperature']"
    with pytest.warns(UserWarning) as said:
        generation_settings.check_run_generation({"temperature": 0.7, "top_p": 0.9}, "model.generation")
    assert [str(w.message) for w in said] == [
        "model.generation: temperature 0.7, top_p 0.9 take effect only when sampling, and do_sample is not true: generation "
        "is greedy (or beam search) without it. Give do_sample true with it to sample"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generation_settings.check_run_generation({"temperature": 0.7, "do_sample": True})  # used
        generation_settings.check_run_generation({"temperature": 1.0, "num_beams": 3})  # transformers' own default: no change
        generation_settings.check_run_generation({"temperature": 0.7, "top_p": 0.9})  # said once a process, not per batch
        # a greedy call (Captioner.caption(image, do_sample=False)) of a model that samples at 0.5: the call asked for none
        generation_settings.check_generation({"do_sample": False, "temperature": 0.5}, asked={"do_sample": False})
