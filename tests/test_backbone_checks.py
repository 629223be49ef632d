"""Backbones and model settings that do not fit together are refused before anything loads, in one line naming the
setting, what is wrong and what to write instead: other language models (a Llama with Phi-2's LoRA targets, a GPT-2),
other vision towers (SigLIP, ViT, DINOv2), grown tokenizers, mismatched image processors and layer indices beyond the
backbones' all failed after the data was preprocessed (hours at COCO's scale), in a traceback, or not at all."""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPVisionConfig,
    Dinov2Config,
    GPT2Config,
    LlamaConfig,
    Phi3Config,
    PhiConfig,
    Qwen2Config,
    SiglipConfig,
    SiglipVisionConfig,
    ViTConfig,
)

from mmcaption.cli import main
from mmcaption.errors import ConfigError
from mmcaption.model import MultimodalCausalLM, MultimodalConfig

from .conftest import REPO
from .test_interruptions import fit_config, user_error

PHI2_TARGETS = ["q_proj", "k_proj", "v_proj", "dense"]


def problem(config: MultimodalConfig) -> str | None:
    """What the CLI says of ``config`` (imported here: each test fails alone on a version without the check)."""
    from mmcaption.model.compatibility import structure_problem

    return structure_problem(config)


def settings(backbones, language_model: Path | None = None, vision_model: Path | None = None, **given) -> MultimodalConfig:
    return MultimodalConfig(**{"language_model": str(language_model or backbones[0]), "vision_model": str(vision_model or backbones[1]),
                               "cross_attention_layers": [-2, -1], **given})


@pytest.fixture(scope="module")
def other(backbones, tmp_path_factory) -> dict[str, Path]:
    """Folders of other backbones: config.json (and the tiny Phi's tokenizer for the language models), no weights."""
    root = tmp_path_factory.mktemp("other_backbones")
    tokenizer = AutoTokenizer.from_pretrained(backbones[0])
    tokens = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.eos_token_id}
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, **tokens}
    language = {"llama": LlamaConfig(**small), "qwen2": Qwen2Config(**small), "phi3": Phi3Config(**small),
                "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, **tokens),
                "phi-2": PhiConfig(**{**tokens, "vocab_size": 51200}, hidden_size=2560, intermediate_size=10240,
                                   num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=0.4)}
    vision = {"siglip": SiglipVisionConfig(), "siglip-full": SiglipConfig(), "vit": ViTConfig(), "dinov2": Dinov2Config(),
              "clip-vit-base-patch32": CLIPVisionConfig(image_size=224, patch_size=32)}
    for name, config in {**language, **vision}.items():
        config.save_pretrained(root / name)
        if name in language:
            tokenizer.save_pretrained(root / name)
    processor = AutoImageProcessor.from_pretrained(backbones[1])
    type(processor)(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        root / "clip-vit-base-patch32")
    return {path.name: path for path in root.iterdir()}


def test_the_tiny_backbones_and_the_shipped_settings_on_phi_2_and_clip_shapes_pass(backbones, other):
    assert problem(settings(backbones, vision_feature_layer=-2)) is None
    assert problem(settings(backbones, cross_attention_layers=[-4, -3, -2, -1], vision_feature_layer=[-2, -1])) is None
    names = {f.name for f in fields(MultimodalConfig)}
    for file in [*REPO.glob("configs/*.yaml"), *REPO.glob("configs/demo/*.yaml")]:
        shipped = {k: v for k, v in ((yaml.safe_load(file.read_text()).get("model") or {}).get("config") or {}).items() if k in names}
        demo = file.parent.name == "demo"  # the tiny backbones; the real configs' Phi-2 and CLIP ViT-B/32, as configs
        language_model, vision_model = backbones if demo else (other["phi-2"], other["clip-vit-base-patch32"])
        shipped.update(language_model=str(language_model), vision_model=str(vision_model))
        assert problem(MultimodalConfig(**shipped)) is None, file


def test_llama_qwen2_and_phi3_with_their_own_lora_targets_pass(backbones, other):
    assert problem(settings(backbones, other["llama"], lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])) is None
    assert problem(settings(backbones, other["qwen2"], lora_target_modules=["q_proj", "v_proj"])) is None
    assert problem(settings(backbones, other["phi3"], lora_target_modules=["qkv_proj", "o_proj"])) is None


def test_lora_targets_that_match_no_module_are_refused_with_the_models_linear_layers(backbones, other):
    # a Llama with Phi-2's targets trained LoRA without dense, while its adapter config and model card list it
    assert problem(settings(backbones, other["llama"], lora_target_modules=PHI2_TARGETS)) == (
        f"model.config.lora_target_modules has dense: no module of {other['llama']} (a LlamaForCausalLM) is named so (its "
        "linear layers: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head). Write [q_proj, k_proj, "
        "v_proj, o_proj] instead (its attention's; q_proj, k_proj, v_proj, dense are Phi-2's)")
    # none of them: PEFT's 60-line traceback
    assert problem(settings(backbones, other["phi3"], lora_target_modules=PHI2_TARGETS)).startswith(
        f"model.config.lora_target_modules has q_proj, k_proj, v_proj, dense: no module of {other['phi3']} (a "
        "Phi3ForCausalLM) is named so (its linear layers: o_proj, qkv_proj, gate_up_proj, down_proj, lm_head). Write "
        "[o_proj, qkv_proj] instead")
    assert "has o_proj: no module of" in problem(settings(backbones, lora_target_modules=["q_proj", "o_proj"]))  # the tiny Phi
    # a whole block named (its attention, its layers): PEFT's "Target module PhiAttention(...) is not supported", once the
    # data was preprocessed
    assert problem(settings(backbones, lora_target_modules=["self_attn", "q_proj"])) == (
        "model.config.lora_target_modules has self_attn: a PhiAttention, which LoRA does not adapt (it adapts layers) (its "
        "linear layers: q_proj, k_proj, v_proj, dense, fc1, fc2, lm_head). Write [q_proj, k_proj, v_proj, dense] instead (its "
        "attention's; q_proj, k_proj, v_proj, dense are Phi-2's)")
    assert "has layers: a ModuleList, which LoRA does not adapt" in problem(settings(backbones, lora_target_modules=["layers"]))
    # one name as a string (the Python API): PEFT read it as a pattern of whole module paths, matching none (its traceback
    # after preprocessing), and an "all-linear" trained would have been listed on the model card letter by letter
    for one in ("q_proj", "all-linear"):
        assert problem(settings(backbones, lora_target_modules=one)) == (
            f"model.config.lora_target_modules is one string, {one!r}: give a list of module names, e.g. ['q_proj', "
            "'k_proj', 'v_proj', 'dense'] (Phi-2's attention; with 'fc1', 'fc2' too, all its linear layers, what PEFT's "
            "'all-linear' adapts)")
    # weights trained so before this check (a resume, a checkpoint or an export loaded) stay loadable; none matching never
    from mmcaption.model.compatibility import structure_problem

    assert structure_problem(settings(backbones, other["llama"], lora_target_modules=PHI2_TARGETS), trained=True) is None
    assert structure_problem(settings(backbones, other["phi3"], lora_target_modules=PHI2_TARGETS), trained=True) is not None
    assert structure_problem(settings(backbones, lora_target_modules="all-linear"), trained=True) is None  # PEFT's pattern


def test_a_language_model_whose_decoder_layers_are_elsewhere_is_refused_naming_the_layouts_that_work(backbones, other):
    # was AttributeError: 'MultimodalCausalLM' object has no attribute 'decoder_layers', after preprocessing
    assert problem(settings(backbones, other["gpt2"], lora_target_modules=["c_attn"])) == (
        f"model.config.language_model {other['gpt2']} is a GPT2LMHeadModel, whose decoder layers are at transformer.h, not "
        "at model.layers where mmcaption injects cross-attention: use a language model with its decoder layers there "
        "(Phi, Llama, Mistral, Qwen2, Phi-3, Gemma, ...)")


def test_cross_attention_layers_none_beyond_the_language_model_or_one_twice_are_refused(backbones):
    assert problem(settings(backbones, cross_attention_layers=[])) == (  # trained a model that never sees the image
        "model.config.cross_attention_layers is empty: the language model would never see the image. Name the decoder "
        "layers that read it, e.g. [-4, -3, -2, -1] (the last four)")
    assert problem(settings(backbones, cross_attention_layers=[-2, 4])) == (  # the tiny Phi has 4
        f"model.config.cross_attention_layers has 4, but {backbones[0]} has 4 decoder layers: give indices from -4 to 3 "
        "(negative from the end: [-4, -3, -2, -1] for the last four)")
    assert problem(settings(backbones, cross_attention_layers=[3, -1])) == (
        "model.config.cross_attention_layers [3, -1] names layer 3 twice (3 and -1, of 4 decoder layers): name each layer once")
    assert problem(settings(backbones, cross_attention_heads=5)) == (
        f"model.config.cross_attention_heads 5 does not divide {backbones[0]}'s hidden_size 64: give a divisor of it, "
        "or null for the model's own (4)")


def test_a_vision_feature_layer_beyond_the_towers_hidden_states_is_refused(backbones, other):
    # the tiny CLIP has 2 layers, 3 hidden states: was a bare IndexError at the first step
    assert problem(settings(backbones, vision_feature_layer=3)) == (
        f"model.config.vision_feature_layer is 3, but {backbones[1]} has 3 hidden states (the embeddings' and its 2 "
        "layers'): give -3 to 2 (-1: the last, -2: the penultimate, as LLaVA)")
    assert problem(settings(backbones, vision_feature_layer=[-4, -1])).startswith("model.config.vision_feature_layer has -4, but")
    assert problem(settings(backbones, vision_feature_layer=[])).startswith("model.config.vision_feature_layer is empty")
    assert problem(settings(backbones, vision_feature_layer=-3)) is None  # the embeddings'


def test_a_vision_model_that_is_not_clip_is_refused(backbones, other):
    for name, kind in [("siglip", "siglip_vision_model"), ("siglip-full", "siglip"), ("vit", "vit"), ("dinov2", "dinov2")]:
        assert problem(settings(backbones, vision_model=other[name])) == (
            f"model.config.vision_model {other[name]} is not a CLIP model (its config.json's model_type is {kind}): the "
            "vision tower must be a CLIP vision model; give a CLIPVisionModel's folder or a full CLIP checkpoint (as "
            "openai/clip-vit-base-patch32)")
    full = other["siglip"].parent / "clip-full"  # a full CLIP checkpoint's config holds the tower's
    CLIPConfig(vision_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "image_size": 64, "patch_size": 16}).save_pretrained(full)
    shutil.copy(backbones[1] / "preprocessor_config.json", full)
    assert problem(settings(backbones, vision_model=full, vision_feature_layer=-3)) is None


def test_a_tokenizer_beyond_the_models_embeddings_or_without_an_end_of_text_token_is_refused(backbones, tmp_path):
    grown, no_end = tmp_path / "grown", tmp_path / "no_eos"
    for folder in (grown, no_end):
        shutil.copytree(backbones[0], folder)
    tokenizer = AutoTokenizer.from_pretrained(grown)
    size = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<|im_end|>"]})  # no resize_token_embeddings
    tokenizer.save_pretrained(grown)
    assert problem(settings(backbones, grown)) == (  # was an IndexError in F.embedding
        f"model.config.language_model {grown}: its tokenizer has {size + 2} tokens, more than the model's {size} input "
        "embeddings (tokens added to it without resizing the model): save the model resized beside it "
        "(model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained), or use the tokenizer it came with")
    tokenizer = AutoTokenizer.from_pretrained(no_end)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(no_end)
    assert problem(settings(backbones, no_end)) == (  # was "RuntimeError: Could not infer dtype of NoneType" in collate
        f"model.config.language_model {no_end}: its tokenizer has no eos token, which ends every caption and answer: set "
        "the model's end-of-text token (tokenizer.eos_token = \"<|endoftext|>\" for Phi-2's) and save it there "
        "(tokenizer.save_pretrained)")


def test_an_image_processor_of_another_size_than_the_tower_is_refused(backbones, tmp_path):
    folder = tmp_path / "vision"
    shutil.copytree(backbones[1], folder)
    kind = type(AutoImageProcessor.from_pretrained(folder))
    kind(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(folder)
    assert problem(settings(backbones, vision_model=folder)) == (  # was "Input image size (48*48) doesn't match model (64*64)"
        f"model.config.vision_model {folder}: its image processor makes 48x48 images (its crop_size), and the tower takes "
        "64x64 (its config's image_size): write crop_size {\"height\": 64, \"width\": 64}, do_center_crop true and size "
        "{\"shortest_edge\": 64} in its preprocessor_config.json")
    kind(size={"shortest_edge": 64}, do_center_crop=False).save_pretrained(folder)
    assert "its image processor makes images of no fixed size (its size shortest_edge 64, no center crop)" in problem(
        settings(backbones, vision_model=folder))


def test_the_python_api_refuses_before_loading(backbones, other):
    # the settings named as the Python API's; the Llama folder has no weights: nothing was loaded
    with pytest.raises(ConfigError, match=r"^lora_target_modules has dense: no module of .*llama \(a LlamaForCausalLM\)"):
        MultimodalCausalLM.from_config(settings(backbones, other["llama"]))


def test_the_cli_refuses_before_preprocessing(backbones, coco_root, tmp_path, monkeypatch, capsys, other):
    monkeypatch.chdir(tmp_path)
    command = fit_config(tmp_path, coco_root, backbones, tmp_path / "checkpoints")
    message = user_error(capsys, main, [*command, "--model.config.language_model", str(other["llama"])])
    assert message.startswith(f"error: model.config.lora_target_modules has dense: no module of {other['llama']} (a "
                              "LlamaForCausalLM) is named so")
    message = user_error(capsys, main, [*command, "--model.config.cross_attention_layers", "[]"])
    assert message.startswith("error: model.config.cross_attention_layers is empty: the language model would never see")
    # prepare too: a vision_feature_layer the tower lacks failed while its features were cached (DatasetGenerationError)
    message = user_error(capsys, main, ["prepare", *command[1:], "--model.config.vision_feature_layer", "5",
                                        "--data.init_args.cache_image_features", "true"])
    assert message.startswith("error: model.config.vision_feature_layer is 5, but")
    assert not (tmp_path / "cache").exists() and not (coco_root / "preprocessed").exists()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()


def test_a_mistyped_backbone_folder_under_one_that_is_here_is_said_at_once_and_a_hub_id_stays_one(tmp_path, monkeypatch):
    # "models/phi-3" beside models/phi-2 was asked of the Hugging Face Hub (retries for minutes without a network)
    from mmcaption.model.backbone_checks import BackboneNotFoundError, check_backbone

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models" / "phi-2").mkdir(parents=True)
    with pytest.raises(BackboneNotFoundError, match=r"^model.config.language_model models/phi-3: no such folder; did you mean "
                                                    r"models/phi-2\? \(read as a Hub id, it is not in the Hugging Face cache\)$"):
        check_backbone("models/phi-3", "model.config.language_model")
    # an owner's folder with nothing like the name in it: the Hub id as before (offline and not cached: said so)
    # ... and the folder here that would hold it said (a backbones/vision_model moved away read as a Hub id alone)
    with pytest.raises(BackboneNotFoundError, match=r"'models/clip-vit-base-patch32' is neither a local folder nor in the "
                                                    r"Hugging Face cache; models is a folder here \(.+\), without "
                                                    r"clip-vit-base-patch32 in it, and the hub is offline"):
        check_backbone("models/clip-vit-base-patch32", "model.config.vision_model")


def test_a_backbone_path_that_is_no_hub_id_or_names_an_unexpanded_variable_is_said_so(monkeypatch, tmp_path):
    # '$HOME/x' single-quoted in a job script, a folder with a space: the hub's id check raised its HFValidationError,
    # a 32-line traceback
    from mmcaption.checkpoint import CheckpointNotFoundError, load_checkpoint_file
    from mmcaption.model.backbone_checks import BackboneNotFoundError, check_backbone

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", "/home/someone")
    with pytest.raises(BackboneNotFoundError, match=r"^model.config.language_model \$HOME/phi-2: no such folder .*\(\$HOME is an "
                                                    r"environment variable as written, not expanded: .*a shell would read "
                                                    r"/home/someone/phi-2\)$"):
        check_backbone("$HOME/phi-2", "model.config.language_model")
    for name in ("my models/phi-2", "microsoft/phi-2!"):
        with pytest.raises(BackboneNotFoundError, match=r": no such folder \(relative to the working directory"):
            check_backbone(name, "model.config.vision_model")
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint not found: \$\{HOME\}/c.ckpt \(\$\{HOME\} is an environment "
                                                      r"variable as written"):
        load_checkpoint_file("${HOME}/c.ckpt")


def test_a_backbone_reached_through_a_link_is_kept_by_the_link_not_its_target(tmp_path, monkeypatch):
    # the target was stored: the user who moved the backbones and re-pointed their link was sent to the old place
    from mmcaption.model.config import absolute_if_local, same_setting

    (tmp_path / "store" / "phi").mkdir(parents=True)
    (tmp_path / "models").symlink_to(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    assert absolute_if_local("models/phi") == str(tmp_path / "models" / "phi")
    assert same_setting("config.language_model", "models/phi", str(tmp_path / "store" / "phi"))  # a checkpoint of before
    # a '..' is the link target's parent after a link (kept), and the folder above otherwise: the project folder
    # renamed, the backbones unmoved, proj/../store/phi led nowhere
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    assert absolute_if_local("../store/phi") == str(tmp_path / "store" / "phi")
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "store" / "here").symlink_to(tmp_path / "elsewhere" / "deep")
    assert absolute_if_local("../store/here/..") == str(tmp_path / "proj" / ".." / "store" / "here" / "..")


def test_both_moved_backbones_of_a_checkpoint_are_said_at_once_with_what_to_pass(tmp_path, backbones):
    # predict --ckpt_path on another machine: "model.config.language_model /old/...: no such folder", then, once given,
    # the same for the vision model in a second run; nothing said they came from the checkpoint or what to pass
    from mmcaption.model.backbone_checks import BackboneNotFoundError, check_backbones

    gone = tmp_path / "old"
    with pytest.raises(BackboneNotFoundError) as refused:
        check_backbones(str(gone / "language_model"), str(gone / "vision_model"), "cap.ckpt")
    message = str(refused.value)
    assert message.startswith(f"model.config.language_model {gone / 'language_model'}: no such folder; and "
                              f"model.config.vision_model {gone / 'vision_model'}: no such folder. Moved since? A checkpoint "
                              "records its backbones' folders as they were when it trained, and cap.ckpt is read with them")
    assert message.endswith("--model.config.language_model PATH --model.config.vision_model PATH")
    check_backbones(str(backbones[0]), str(backbones[1]), "cap.ckpt")  # where they are: nothing said
    with pytest.raises(BackboneNotFoundError) as refused:  # no checkpoint: the folder alone
        check_backbones(str(backbones[0]), str(gone / "vision_model"), None)
    assert str(refused.value) == f"model.config.vision_model {gone / 'vision_model'}: no such folder"


def test_hub_backbones_on_a_machine_without_internet_are_named_together_at_once(tmp_path, monkeypatch):
    # a compute node without internet and without HF_HUB_OFFLINE: a minute of retries, then an error about the
    # tokenizer alone (the vision model unnamed), and empty checkpoint and log folders left behind
    import http.server
    import threading

    from huggingface_hub import constants

    from mmcaption.model import backbone_checks
    from mmcaption.model.backbone_checks import BackboneNotFoundError, check_backbones

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(backbone_checks, "is_offline_mode", lambda: False)  # online, as such a node's environment is
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once, as DNS fails
    with pytest.raises(BackboneNotFoundError) as refused:
        check_backbones("microsoft/phi-2", "openai/clip-vit-base-patch32", None)
    said = str(refused.value)
    assert said.startswith("microsoft/phi-2 and openai/clip-vit-base-patch32 are not in the Hugging Face cache, and the hub "
                           "cannot be reached (") and "`hf download microsoft/phi-2`, `hf download openai/clip-vit-base-patch32`" \
        in said and said.endswith("with HF_HUB_OFFLINE=1 a run never waits on the network")
    # a mistyped export folder of the shape of a hub id: said at once too (25 s of retries)
    from mmcaption import Captioner
    from mmcaption.inference import NotAModelFolderError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotAModelFolderError, match=r"^exported/nonexistent is no folder here .*, and the Hugging Face Hub, "
                                                   r"where it would be looked for, cannot be reached \(.*\): give the model's folder$"):
        Captioner.from_pretrained("exported/nonexistent")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501: reached
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        check_backbones("microsoft/phi-2", "openai/clip-vit-base-patch32", None)  # online: downloaded on first use
    finally:
        server.shutdown()
