"""The LightningModule: training and validation steps, optimizer and schedule, lean checkpoints."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from transformers import GenerationConfig, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from mmcaption import random_state
from mmcaption.callbacks import PredictionWriter
from mmcaption.checkpoint import load_checkpoint_file, restore_loader_position
from mmcaption.data.collate import IGNORE_INDEX
from mmcaption.data.datamodule import load_tokenizer
from mmcaption.data.templates import LETTERS
from mmcaption.evaluation.answers import exact_match
from mmcaption.evaluation.caption_metrics import caption_scores
from mmcaption.evaluation.multiple_choice import option_scores, parse_choice
from mmcaption.export import load_exported_weights, read_export_config
from mmcaption.model.backbones import DType, Quantization
from mmcaption.model.multimodal import MultimodalCausalLM, MultimodalConfig

DEFAULT_GENERATION = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose tensors do not fit the model being built."""


class MultimodalCaptioner(LightningModule):
    """Phi-2 (4-bit) + frozen CLIP + gated cross-attention, adapted with LoRA.

    Args:
        language_model: ``from_pretrained`` name or folder of the causal language model.
        vision_model: ``from_pretrained`` name or folder of the CLIP model.
        quantization: storage of the language model's weights: nf4, fp4, int8 or none.
        compute_dtype: dtype of the quantized matmuls (and of the whole LM without quantization).
        cross_attention_layers: decoder layers wrapped with gated cross-attention (negative: from the end).
        cross_attention_heads: heads per cross-attention block (default: the language model's).
        cross_attention_ffn_mult: width multiplier of a gated feed-forward after each block (0: none).
        vision_feature_layer: hidden state of the vision tower fed to the projection (-1: last, -2:
            penultimate); a list (``[-2, -1]``) concatenates several.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: names of the LM's linear layers that get LoRA adapters.
        gradient_checkpointing: recompute LM activations in backward (less memory, ~30% slower).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay on matrices (not on biases, norms and gates).
        warmup_ratio: fraction of all optimizer steps spent warming up linearly from 0.
        adam_betas: AdamW betas.
        generation: Hugging Face ``generate`` settings (``max_new_tokens``, ``num_beams``, ``do_sample``,
            ``temperature``, ``top_p``, ...) for validation captions and ``predict``.
        on_nonfinite_loss: a NaN/inf training loss stops the run naming the step and batch
            (``error``), or skips that batch's update and counts it (``skip``).
        init_from: a checkpoint (of the caption stage) whose trainable tensors start this run. Only
            the weights are taken: optimizer, schedule and step count start fresh, unlike
            ``--ckpt_path``, which resumes. Ignored when a checkpoint is being restored.
    """

    def __init__(
        self,
        language_model: str = "microsoft/phi-2",
        vision_model: str = "openai/clip-vit-base-patch32",
        quantization: Quantization = "nf4",
        compute_dtype: DType = "bfloat16",
        cross_attention_layers: list[int] = [-4, -3, -2, -1],  # noqa: B006 (jsonargparse shows the default)
        cross_attention_heads: int | None = None,
        cross_attention_ffn_mult: int = 0,
        vision_feature_layer: int | list[int] = -1,
        lora_r: int = 32,
        lora_alpha: int = 64,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "dense"],  # noqa: B006
        gradient_checkpointing: bool = False,
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        generation: dict[str, Any] | None = None,
        on_nonfinite_loss: Literal["error", "skip"] = "error",
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_config = MultimodalConfig(
            language_model=language_model,
            vision_model=vision_model,
            quantization=quantization,
            compute_dtype=compute_dtype,
            cross_attention_layers=list(cross_attention_layers),
            cross_attention_heads=cross_attention_heads,
            cross_attention_ffn_mult=cross_attention_ffn_mult,
            vision_feature_layer=vision_feature_layer,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=list(lora_target_modules),
            gradient_checkpointing=gradient_checkpointing,
        )
        self.model: MultimodalCausalLM | None = None
        # Checkpoints hold trainable tensors only; load_state_dict checks their keys itself.
        self.strict_loading = False
        self.val_loss = MeanMetric()
        self.weights_loaded = False  # set once any checkpoint's tensors are in the model
        self._resumed_random_state: dict[str, Any] | None = None
        self.init_source: dict[str, Any] | None = None
        self.val_captions: list[tuple[str, str, list[str]]] = []  # (image id, generated, references)
        self.val_answers: list[tuple[str, str]] = []  # (generated, reference)
        self.skipped_batches = 0
        self.val_examples: tuple[torch.Tensor, list[str], list[list[str]]] | None = None

    # -- building ---------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the backbones on this process's device (each DDP rank loads its own 4-bit copy)."""
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        self.model = MultimodalCausalLM.from_config(self.model_config, device=device)

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.hparams.language_model)

    def generation_config(self) -> GenerationConfig:
        config = GenerationConfig(**{**DEFAULT_GENERATION, **(self.hparams.generation or {})})
        config.eos_token_id = self.tokenizer.eos_token_id
        config.pad_token_id = self.tokenizer.pad_token_id
        return config

    @torch.no_grad()
    def generate_text(self, batch: dict[str, Any], image_embeds: torch.Tensor | None = None) -> list[str]:
        """Continuations of a batch of left-padded prompts with its images (or given image
        embeddings), decoded."""
        tokens = self.model.generate(
            batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"], image_embeds=image_embeds,
            generation_config=self.generation_config(),
        )
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def trainable_state_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def initialise_from_checkpoint(self) -> None:
        """Load ``init_from``'s trained weights, once, unless a checkpoint was restored already.

        ``init_from`` is a Lightning checkpoint of an earlier stage or a folder of ``mmcaption-export``.
        """
        if self.hparams.init_from is None or self.weights_loaded:
            return
        self.configure_model()
        path = Path(self.hparams.init_from)
        if path.is_dir():
            self._initialise_from_export(path)
            return
        if not path.is_file():
            raise FileNotFoundError(
                f"init_from checkpoint not found: {path} (train the caption stage first, or point init_from at its checkpoint)"
            )
        checkpoint = load_checkpoint_file(path)
        check_trainable_state(
            checkpoint["state_dict"], self.model, prefix="model.",
            settings_diff=settings_diff(checkpoint.get("model_config", {}), self.saved_model_config()),
        )
        super().load_state_dict(checkpoint["state_dict"], strict=False)
        self.weights_loaded = True
        self.init_source = {
            "path": str(path.resolve()),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        }
        rank_zero_info(f"Initialised from {path} (its step {checkpoint.get('global_step')}); optimizer and schedule start fresh.")

    def _initialise_from_export(self, folder: Path) -> None:
        manifest = read_export_config(folder)
        differences = settings_diff(manifest["model"], self.saved_model_config())
        if differences:
            raise CheckpointMismatchError(f"exported model {folder} does not match this model: " + "; ".join(differences))
        load_exported_weights(self.model, folder)
        self.weights_loaded = True
        self.init_source = {"path": str(folder.resolve()), "export": manifest["source"]}
        rank_zero_info(f"Initialised from the exported model {folder}.")

    def on_fit_start(self) -> None:
        self.initialise_from_checkpoint()

    def on_validation_start(self) -> None:
        self.initialise_from_checkpoint()

    def on_test_start(self) -> None:
        self.initialise_from_checkpoint()

    def on_predict_start(self) -> None:
        self.initialise_from_checkpoint()

    # -- steps --------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch.get("pixel_values"), vision_features=batch.get("vision_features"),
        ).logits

    def token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over supervised tokens, and how many there are."""
        logits = self(batch)[:, :-1].float()
        targets = batch["labels"][:, 1:]
        loss_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss_sum, (targets != IGNORE_INDEX).sum()

    def on_train_start(self) -> None:
        restore_loader_position(self.trainer)  # a mid-epoch resume continues with the next batch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # After a resume, the generators continue from the checkpoint's states: set here, once the
        # loader's iterator (whose creation draws a seed) exists, as it did when the state was saved.
        if self._resumed_random_state is not None:
            random_state.restore(self._resumed_random_state)
            self._resumed_random_state = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Mean cross-entropy over the supervised tokens of the *global* batch.

        Under DDP each process holds a share of the batch with its own number of supervised tokens;
        dividing by the global count (and multiplying by the world size, as DDP averages gradients)
        gives exactly the gradient of a single process running the whole batch, whatever the split.
        """
        loss_sum, tokens = self.token_losses(batch)
        world_size = self.trainer.world_size
        totals = torch.stack([loss_sum.detach(), tokens.to(loss_sum.dtype)])
        global_sum, global_tokens = self.trainer.strategy.reduce(totals, reduce_op="sum") if world_size > 1 else totals
        if global_tokens == 0:
            raise ValueError(f"training batch {batch_idx} has no supervised token: every label is masked")
        mean_loss = global_sum / global_tokens
        if not torch.isfinite(mean_loss):  # decided on the global value: every process skips, or none does
            where = f"step {self.global_step}, epoch {self.current_epoch}, batch {batch_idx}"
            if self.hparams.on_nonfinite_loss == "error":
                raise FloatingPointError(
                    f"non-finite training loss ({mean_loss.item()}) at {where}; set model.on_nonfinite_loss: skip "
                    "to skip such batches (they are counted in train/skipped_batches)"
                )
            self.skipped_batches += 1
            self.log("train/skipped_batches", float(self.skipped_batches), batch_size=batch["input_ids"].size(0))
            rank_zero_warn(f"skipping the batch at {where}: non-finite training loss")
            return None  # Lightning skips the optimizer step
        batch_size = batch["input_ids"].size(0)
        self.log("train/loss", mean_loss, prog_bar=True, batch_size=batch_size)  # already global: no sync_dist
        for index, gates in self.model.gate_values().items():
            for name, value in gates.items():
                self.log(f"gate/layer_{index}_{name}", value, batch_size=batch_size)
        return {"loss": loss_sum * world_size / global_tokens, "mean_loss": mean_loss}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # generation: val images to caption, or val questions to answer
            generated = self.generate_text(batch)
            if batch["task"][0] == "caption":
                self.val_captions.extend(zip(batch["image_id"], generated, batch["references"]))
                if self.val_examples is None:
                    self.val_examples = (batch["display"][:4], generated[:4], batch["references"][:4])
            else:
                self.val_answers.extend(zip(generated, batch["answer"]))
            return
        loss_sum, tokens = self.token_losses(batch)
        if tokens > 0:
            self.val_loss.update(loss_sum / tokens, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted over all batches and all ranks
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/perplexity", torch.exp(loss), sync_dist=False)
        captions = gather_objects(self.val_captions)
        answers = gather_objects(self.val_answers)
        self.val_captions, self.val_answers = [], []
        if captions:
            scores = None
            if self.trainer.is_global_zero:
                scores = caption_scores({i: c for i, c, _ in captions}, {i: r for i, _, r in captions})
            scores = self.trainer.strategy.broadcast(scores, src=0)
            for name, value in scores.items():
                self.log(f"val/{name}", value, sync_dist=False, prog_bar=name == "CIDEr")
            self.log_caption_examples()
        if answers:
            accuracy = exact_match([p for p, _ in answers], [r for _, r in answers])
            self.log("val/answer_exact_match", accuracy, sync_dist=False, prog_bar=True)
        self.val_examples = None

    def log_caption_examples(self) -> None:
        """A few val images with their generated and reference captions, in TensorBoard."""
        if self.val_examples is None or not isinstance(self.logger, TensorBoardLogger) or not self.trainer.is_global_zero:
            return
        images, captions, references = self.val_examples
        self.logger.experiment.add_image("val/examples", torch.cat(list(images), dim=2), self.global_step)
        rows = [f"| {i} | {c} | {' / '.join(r)} |" for i, (c, r) in enumerate(zip(captions, references))]
        table = "| image | generated | references |\n|---|---|---|\n" + "\n".join(rows)
        self.logger.experiment.add_text("val/captions", table, self.global_step)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("test/loss", loss)
        self.log("test/perplexity", torch.exp(loss))

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Captions, or multiple-choice answers, for the rows whose image could be read; the other
        rows come back with their error."""
        results = [{**record, "error": error} for record, error in zip(batch["record"], batch["error"])]
        ok = [i for i, error in enumerate(batch["error"]) if error is None]
        if not ok:
            return results
        task = batch["task"][0]
        select = torch.tensor(ok, device=batch["input_ids"].device)
        sub = {k: batch[k].index_select(0, select) for k in ("input_ids", "attention_mask", "pixel_values")}
        if task == "caption":
            for i, caption in zip(ok, self.generate_text(sub)):
                results[i]["caption"] = caption
            return results
        if task == "choice-likelihood":
            prompts = [[t for t, m in zip(ids.tolist(), mask.tolist()) if m] for ids, mask in zip(sub["input_ids"], sub["attention_mask"])]
            scores = option_scores(
                self.model, prompts, [batch["option_ids"][i] for i in ok], self.model.encode_images(sub["pixel_values"]),
                self.tokenizer.pad_token_id,
            )
            for i, row_scores in zip(ok, scores.tolist()):
                results[i]["scores"] = [round(s, 4) for s in row_scores]
                results[i]["prediction"] = LETTERS[max(range(len(row_scores)), key=row_scores.__getitem__)]
        else:
            for i, text in zip(ok, self.generate_text(sub)):
                results[i]["generated"] = text
                results[i]["prediction"] = parse_choice(text)
                if results[i]["prediction"] is None:  # counted as wrong, and said why
                    results[i]["error"] = f"no option letter (A-D) in the generated answer {text!r}"
        for i in ok:
            answer = results[i].get("answer")
            if answer:
                results[i]["correct"] = results[i]["prediction"] == answer.strip().upper()
        return results

    def configure_callbacks(self) -> list:
        return [PredictionWriter()]

    # -- optimization ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.learning_rate,
            betas=tuple(self.hparams.adam_betas),
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ValueError("the linear schedule needs a finite length: set trainer.max_epochs or trainer.max_steps")
        scheduler = get_linear_schedule_with_warmup(
            optimizer,
            num_warmup_steps=int(self.hparams.warmup_ratio * total_steps),
            num_training_steps=int(total_steps),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable tensors only: the frozen (4-bit) backbones are reloaded from their source."""
        trainable = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["model_config"] = self.saved_model_config()
        if self.init_source is not None:
            checkpoint["init_from"] = self.init_source
        # every process's generator states (Lightning saves checkpoints from all processes at once)
        checkpoint["random_states"] = gather_objects([random_state.capture()])

    def vision_feature_settings(self) -> tuple[str, int | list[int]]:
        """What a data module's image-feature cache must be computed with: this model's tower and layer."""
        return self.model_config.vision_model, self.model_config.vision_feature_layer

    def saved_model_config(self) -> dict[str, Any]:
        """The model's settings as checkpoints record them (with the resolved cross-attention layers)."""
        config = asdict(self.model_config)
        if self.model is not None:
            config["cross_attention_layers"] = list(self.model.cross_attention_layer_indices)
        return config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before restoring: refuse a checkpoint of another model, naming the settings that differ."""
        self.configure_model()
        check_trainable_state(
            checkpoint["state_dict"], self.model, prefix="model.",
            settings_diff=settings_diff(checkpoint.get("model_config", {}), self.saved_model_config()),
        )
        self.init_source = checkpoint.get("init_from")
        states = checkpoint.get("random_states") or []
        if states and self._trainer is not None and self.trainer.state.fn == "fit":
            self._resumed_random_state = states[min(self.global_rank, len(states) - 1)]

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load a checkpoint's trainable tensors after checking they are exactly the model's.

        The frozen backbones are not in checkpoints, so they are never reported missing; any other
        difference (an unknown key, a missing trainable tensor, a shape) is refused whatever ``strict`` says.
        """
        self.configure_model()
        check_trainable_state(state_dict, self.model, prefix="model.")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        self.weights_loaded = True
        return result._replace(missing_keys=[])


# Settings that change what a trainable tensor means; a checkpoint made with others is refused.
STRUCTURAL_SETTINGS = (
    "cross_attention_layers",
    "cross_attention_heads",
    "cross_attention_ffn_mult",
    "vision_feature_layer",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
)


def gather_objects(items: list) -> list:
    """Concatenate a list from every process (the list itself when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    gathered: list[list] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def settings_diff(checkpoint_config: dict[str, Any], model_config: dict[str, Any]) -> list[str]:
    """``"lora_r: checkpoint 4, model 8"`` for each structural setting that differs."""
    return [
        f"{key}: checkpoint {checkpoint_config[key]!r}, model {model_config.get(key)!r}"
        for key in STRUCTURAL_SETTINGS
        if key in checkpoint_config and checkpoint_config[key] != model_config.get(key)
    ]


def check_trainable_state(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str = "", settings_diff: list[str] = ()
) -> None:
    """Refuse a state dict that is not exactly the model's trainable tensors (names and shapes).

    Lightning's non-strict loading would silently ignore such keys; here every difference is named,
    and so is every structural setting (``settings_diff``) in which the checkpoint's model differs.
    """
    expected = {f"{prefix}{name}": p for name, p in model.named_parameters() if p.requires_grad}
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state_dict) & set(expected))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = list(settings_diff)
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    if missing:
        problems.append(f"{len(missing)} trainable tensor(s) missing, e.g. {missing[:3]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
    if problems:
        raise CheckpointMismatchError(
            "checkpoint does not match the model (other backbones, injected layers or LoRA settings?): "
            + "; ".join(problems)
        )
