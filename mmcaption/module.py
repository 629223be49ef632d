"""The LightningModule: training and validation steps, optimizer and schedule, lean checkpoints.

The model is built from its config (``model.config.*``) in ``configure_model``; prompts, generation and answer parsing
are :mod:`mmcaption.tasks`'s, checkpoint policy :mod:`mmcaption.checkpoint`'s: what is left is what Lightning asks.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from transformers import PreTrainedTokenizerBase

from mmcaption import random_state
from mmcaption.checkpoint import check_checkpoint, check_trainable_state, load_initial_weights, restore_loader_position
from mmcaption.checkpoint_folders import checkpoint_folder_on_resume
from mmcaption.data.stage_splits import scored_where_trained
from mmcaption.errors import ConfigError, raise_if_stopped
from mmcaption.evaluation.answers import exact_match
from mmcaption.generation_settings import check_run_generation
from mmcaption.gradient_clipping import FusedOptimizerClipping
from mmcaption.lightning_tools import tuning
from mmcaption.model import MultimodalCausalLM, MultimodalConfig
from mmcaption.model.backbones import load_tokenizer
from mmcaption.model.config import absolute_if_local, check_known_settings
from mmcaption.model.loss import AccumulatedTokens, chunked_cross_entropy
from mmcaption.model.optim import adamw
from mmcaption.nonfinite import skip_nonfinite
from mmcaption.predictions import PredictionWriter
from mmcaption.results import domain_metrics, said_cut, scored_captions, write_results
from mmcaption.schedule import after_tuning, linear_schedule, schedule_from_here
from mmcaption.settings_checks import check_trainer_for_model
from mmcaption.tasks import Tasks


class MultimodalCaptioner(FusedOptimizerClipping, LightningModule):
    """Phi-2 (4-bit) + frozen CLIP + gated cross-attention, adapted with LoRA.

    Args:
        config: the model (backbones, quantization, cross-attention, LoRA); see ``MultimodalConfig``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay on matrices (not on biases, norms and gates).
        warmup_ratio: fraction of all optimizer steps spent warming up linearly from 0.
        adam_betas: AdamW betas.
        generation: Hugging Face ``generate`` settings (``max_new_tokens``, ``num_beams``, ``do_sample``,
            ``temperature``, ``top_p``, ...) for validation captions and ``predict``.
        on_nonfinite_loss: a NaN/inf training loss stops the run naming the step and batch
            (``error``), or skips that batch's update and counts it (``skip``).
        init_from: a checkpoint (of the caption stage) or exported folder whose trained weights start
            this run. Only the weights are taken: optimizer, schedule and step count start fresh, unlike
            ``--ckpt_path``, which resumes. Ignored when a checkpoint is being restored.
        compile: ``torch.compile`` each decoder layer (dynamic shapes: batches padded to their own
            length do not recompile). Off by default: compiling takes minutes before the first step.
            Measured by ``benchmarks/compile.py``.
    """

    def __init__(
        self,
        config: MultimodalConfig = MultimodalConfig(),  # noqa: B008 (jsonargparse shows the default)
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        generation: dict[str, Any] | None = None,
        on_nonfinite_loss: Literal["error", "skip"] = "error",
        init_from: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # a checkpoint's hyper-parameters hold the config as a plain dict (loadable with weights_only)
        # local backbone folders and init_from are kept as absolute paths: the checkpoint works from anywhere
        if isinstance(config, dict):  # a checkpoint's, or a notebook's: a setting this version lacks is named, not a TypeError
            check_known_settings(config, "model.config", "a typo, or a checkpoint of another version of mmcaption")
        self.config = (MultimodalConfig(**config) if isinstance(config, dict) else replace(config)).with_absolute_paths()
        init_from = init_from and absolute_if_local(init_from)
        self.save_hyperparameters(ignore=["config"])  # LightningCLI's own would keep the paths as typed: relative ones
        self.hparams["config"], self._hparams_initial["config"] = asdict(self.config), asdict(self.config)  # HPARAMS too
        self.learning_rate, self.weight_decay, self.warmup_ratio = learning_rate, weight_decay, warmup_ratio
        self.adam_betas, self.generation = tuple(adam_betas), dict(generation or {})
        check_run_generation(self.generation, "model.generation")  # before the model loads
        self.on_nonfinite_loss, self.init_from, self.compile = on_nonfinite_loss, init_from, compile
        self.model: MultimodalCausalLM | None = None
        self.loading = False  # while configure_model loads it: what an error then is said to be (OutOfMemoryAdvice)
        self.strict_loading = False  # checkpoints hold trainable tensors only; load_state_dict checks their keys itself
        self.val_loss = MeanMetric()
        self.weights_loaded = False  # set once any checkpoint's tensors are in the model
        self._resumed_random_state: dict[str, Any] | None = None
        self.init_source: dict[str, Any] | None = None
        self.val_captions: list[tuple[int, str, list[str], str]] = []  # (COCO image id, generated, references, file)
        self.val_answers: list[tuple[str, str, str, str]] = []  # (conversation id, question, generated, reference)
        self.val_cut = 0  # of those, the texts generation stopped at max_new_tokens before their end
        self.skipped_batches = 0
        self.window = AccumulatedTokens()  # with accumulate_grad_batches: every token of the window weighs the same
        self.flops_per_batch: int | None = None  # the last training batch's, for TrainingThroughput's MFU
        self._flops_per_token: int | None = None
        self.val_examples: tuple[torch.Tensor, list[str], list[list[str]]] | None = None

    # -- building ---------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load the backbones on this process's device (each DDP rank loads its own 4-bit copy). ``init_from``'s weights
        come once a checkpoint restored has had its say: a Trainer's hooks load them, and outside a Trainer (a script's
        own loop) the first ``forward`` or :attr:`tasks` does, into the same parameters an optimizer already holds."""
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        self.loading = True
        self.model = MultimodalCausalLM.from_config(self.config, device=device, trained=True)  # (a fresh fit: the CLI's check)
        self.loading = False
        if self.compile:  # block by block, as litgpt and torchtitan compile: the injected cross-attention included
            for layer in self.model.decoder_layers:
                layer.compile(dynamic=True)
        if self._trainer is not None and self.trainer.state.fn == "fit" and tuning(self.trainer):  # before a tuner saves
            self.initialise_from_checkpoint()  # the run's start (restored after it: init_from was dropped, silently)

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.config.language_model)

    @property
    def tasks(self) -> Tasks:
        """Generation, option scoring and result rows with this model, its tokenizer and ``generation``."""
        self._ready_outside_a_trainer()
        return Tasks(self.model, self.tokenizer, self.generation, option="--model.generation.")

    def _ready_outside_a_trainer(self) -> None:
        """The model built, and outside a Trainer ``init_from``'s weights in it (a script's torch.no_grad() captions came
        from an untrained model, its gates at 0): unless a checkpoint's weights were loaded (``load_from_checkpoint``)."""
        self.configure_model()
        if self._trainer is None:
            self.initialise_from_checkpoint()

    def initialise_from_checkpoint(self) -> None:
        """Load ``init_from``'s trained weights, once, unless a checkpoint was restored already."""
        if self.init_from is None or self.weights_loaded:
            return
        self.configure_model()
        self.init_source = load_initial_weights(self.model, self.init_from)
        self.weights_loaded = True
        step = self.init_source.get("global_step")
        training = self._trainer is not None and self._trainer.state.fn == "fit"  # predict has no optimizer to speak of
        rank_zero_info(f"Initialised from {self.init_from}" + (f" (its step {step})" if step is not None else "")
                       + ("; optimizer and schedule start fresh." if training else "."))

    def setup(self, stage: str) -> None:
        check_trainer_for_model(self.trainer, self.config.computed_dtype)  # before the backbones load

    def on_fit_start(self) -> None:
        after_tuning(self.trainer, self)
        self.initialise_from_checkpoint()

    def on_validation_start(self) -> None:
        self.initialise_from_checkpoint()

    def on_test_start(self) -> None:
        self.initialise_from_checkpoint()

    def on_predict_start(self) -> None:
        self.initialise_from_checkpoint()

    # -- steps --------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self._ready_outside_a_trainer()
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch.get("pixel_values"), vision_features=batch.get("vision_features"),
            image_mask=batch.get("image_mask"),
        ).logits

    def token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over supervised tokens, and how many there are (chunked:
        the batch's full logits never exist, see ``mmcaption.model.loss``)."""
        hidden = self.model.hidden_states(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch.get("pixel_values"), vision_features=batch.get("vision_features"),
            image_mask=batch.get("image_mask"),
        )
        return chunked_cross_entropy(hidden, self.model.output_head, batch["labels"])

    def on_train_start(self) -> None:
        restore_loader_position(self.trainer)  # a resume continues with the next batch, or at an epoch's end the next epoch
        if self.trainer.ckpt_path:
            self.planned_steps = schedule_from_here(self.trainer, self.learning_rate, self.warmup_ratio) or self.planned_steps
            for optimizer in self.trainer.optimizers:  # given on resume: the restored state kept the saved ones
                optimizer.param_groups[0]["weight_decay"] = self.weight_decay  # the matrices' group (configure_optimizers)
                for group in optimizer.param_groups:
                    group["betas"] = tuple(self.adam_betas)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # After a resume, the generators continue from the checkpoint's states: set here, once the
        # loader's iterator (whose creation draws a seed) exists, as it did when the state was saved.
        if self._resumed_random_state is not None:
            random_state.restore(self._resumed_random_state)
            self._resumed_random_state = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Mean cross-entropy over the supervised tokens of the *global* batch.

        Under DDP each process holds a share of the batch with its own number of supervised tokens; dividing by the
        global count (and multiplying by the world size, as DDP averages gradients) gives exactly the gradient of a single
        process running the whole batch, whatever the split; and with gradient accumulation, of one batch of the
        window's micro-batches (:class:`AccumulatedTokens`)."""
        loss_sum, tokens = self.token_losses(batch)
        if self._flops_per_token is None:
            self._flops_per_token = self.model.training_flops_per_token()
        self.flops_per_batch = self._flops_per_token * int(batch["attention_mask"].sum())
        world_size = self.trainer.world_size
        totals = torch.stack([loss_sum.detach(), tokens.to(loss_sum.dtype)])
        global_sum, global_tokens = self.trainer.strategy.reduce(totals, reduce_op="sum") if world_size > 1 else totals
        if global_tokens == 0:
            raise ValueError(f"training batch {batch_idx} has no supervised token: every label is masked")
        mean_loss = global_sum / global_tokens
        self.window.start(batch_idx, self.trainer.accumulate_grad_batches)
        if not torch.isfinite(mean_loss):  # decided on the global value: every process skips, or none does
            skip_nonfinite(self, mean_loss, batch_idx, batch["input_ids"].size(0))
            return None  # Lightning skips the optimizer step
        batch_size, divisor = batch["input_ids"].size(0), self.window.divisor(global_tokens, self.trainer.accumulate_grad_batches)
        # already global (no sync_dist); with accumulation, the window's so far: at the step, the step's loss
        self.log("train/loss", self.window.mean(global_sum, global_tokens), prog_bar=True, batch_size=batch_size)
        for index, gates in self.model.gate_values().items():
            for name, value in gates.items():
                self.log(f"gate/layer_{index}_{name}", value, batch_size=batch_size)
        return {"loss": loss_sum * world_size / divisor, "mean_loss": mean_loss}

    def on_before_optimizer_step(self, optimizer) -> None:
        self.window.rescale(self.model.parameters())

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        raise_if_stopped()  # a signal as the loader's workers started (validate, test)
        if dataloader_idx == 1:  # generation: val images to caption, or val questions to answer
            if self.trainer.sanity_checking:  # the start-up check tests the loss path; generating there
                return                        # (beam search at Phi-2's shapes) only delays the first step
            tasks = self.tasks
            generated = tasks.generate_batch(batch)
            self.val_cut += sum(tasks.unfinished)
            if batch["task"][0] == "caption":
                self.val_captions.extend(zip(batch["image_id"], generated, batch["references"], batch["file_name"]))
                if self.val_examples is None:
                    self.val_examples = (batch["display"][:4], generated[:4], batch["references"][:4])
            else:
                self.val_answers.extend(zip(batch["id"], batch["question"], generated, batch["answer"]))
            return
        loss_sum, tokens = self.token_losses(batch)
        if tokens > 0:
            self.val_loss.update(loss_sum / tokens, weight=tokens)

    def on_validation_epoch_end(self) -> None:
        self._evaluation_end("val")

    def _evaluation_end(self, prefix: str) -> None:
        """Log the loss and, when there were generation batches, caption metrics or exact match; after ``mmcaption validate``
        or ``test``, write the predictions and a results file that says how the numbers were made (:mod:`.evaluation.report`)."""
        loss = self.val_loss.compute()  # token-weighted over all batches and all ranks
        self.val_loss.reset()
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/perplexity", torch.exp(loss), sync_dist=False)
        # TensorBoard's HPARAMS tab compares runs by it: the loss evaluated (Lightning's -1, never updated, was its only
        if self.trainer.state.fn == TrainerFn.FITTING:  # column); in validate and test to TensorBoard alone, not a row
            self.log("hp_metric", loss, sync_dist=False)  # of the metrics' table beside the loss it repeats
        elif self.trainer.is_global_zero:
            for board in (logger for logger in self.loggers if isinstance(logger, TensorBoardLogger)):
                board.log_metrics({"hp_metric": float(loss)}, step=self.global_step)
        captions = random_state.gather_objects(self.val_captions, interleaved=True)
        answers = random_state.gather_objects(self.val_answers, interleaved=True)
        # a split smaller than the processes is shared with repeats (data.base): each image or question once
        if 1 < len(captions) <= self.trainer.world_size:
            captions = list({row[0]: row for row in captions}.values())
        if 1 < len(answers) <= self.trainer.world_size:  # (ids repeat: the question too)
            answers = list({(row[0], row[1], row[3]): row for row in answers}.values())
        cut = sum(random_state.gather_objects([self.val_cut]))
        self.val_captions, self.val_answers, self.val_cut = [], [], 0
        metrics: dict[str, float] = {"loss": float(loss), "perplexity": float(torch.exp(loss))}
        by_domain: dict[str, dict[str, float]] = {}  # nocaps': each domain's images scored on their own
        if captions:
            scored = scored_captions(self.trainer, prefix, captions) if self.trainer.is_global_zero else None
            scores, by_domain = self.trainer.strategy.broadcast(scored, src=0)
            for name, value in {**scores, **domain_metrics(by_domain)}.items():
                self.log(f"{prefix}/{name}", value, sync_dist=False, prog_bar=name == "CIDEr")
            metrics.update(scores)
            if prefix == "val":
                self.log_caption_examples()
        if answers:
            accuracy = exact_match([p for *_, p, _ in answers], [r for *_, r in answers])
            self.log(f"{prefix}/answer_exact_match", accuracy, sync_dist=False, prog_bar=True)
            metrics["answer_exact_match"] = accuracy
        self.val_examples = None
        said_cut(cut, len(captions) + len(answers), self.tasks.generation)
        if not self.trainer.sanity_checking and (captions or answers or self.trainer.state.fn != TrainerFn.FITTING):
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # on every process: log_dir is a broadcast
            if self.trainer.is_global_zero:
                write_results(self.trainer, self.tasks.generation.to_dict(), folder, prefix, metrics, captions, answers, cut,
                              by_domain)

    def log_caption_examples(self) -> None:
        """A few val images with their generated and reference captions, in TensorBoard."""
        board = next((logger for logger in self.loggers if isinstance(logger, TensorBoardLogger)), None)  # also beside a CSV one
        if self.val_examples is None or board is None or not self.trainer.is_global_zero:
            return
        images, captions, references = self.val_examples
        # the step Lightning gives this validation's scalars (optimizer steps before this one; global_step counts it)
        step = getattr(self.trainer.fit_loop.epoch_loop, "_batches_that_stepped", self.global_step)
        board.experiment.add_image("val/examples", torch.cat(list(images), dim=2), step)
        rows = [f"| {i} | {c} | {' / '.join(r)} |" for i, (c, r) in enumerate(zip(captions, references))]
        table = "| image | generated | references |\n|---|---|---|\n" + "\n".join(rows)
        board.experiment.add_text("val/captions", table, step)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._evaluation_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Captions, answers or chosen letters for the rows whose image could be read; the other rows
        come back with their error (see :meth:`mmcaption.tasks.Tasks.predict`)."""
        raise_if_stopped()  # a signal as the loader's workers started
        return self.tasks.predict(batch)

    def configure_callbacks(self) -> list:
        # Lightning's one hook of the module before the data module's prepare_data (hours of tokenising and of vision
        # features): a data module that reads otherwise than the model is refused here, not after them
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "backbones_problem") and (problem := datamodule.backbones_problem(self.config, self.tokenizer)):
            raise ConfigError(problem)
        return [PredictionWriter()]

    # -- optimization ---------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        optimizer = adamw(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.learning_rate,
            betas=self.adam_betas,
        )
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise ConfigError("the linear schedule needs a finite length: set trainer.max_epochs or trainer.max_steps")
        self.planned_steps = int(total_steps)  # in its checkpoints: a next stage started from one says if it stopped early
        scheduler = linear_schedule(optimizer, self.warmup_ratio, int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ---------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable tensors only: the frozen (4-bit) backbones are reloaded from their source."""
        trainable = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["model_config"] = self.model.config_dict()
        checkpoint["backbone_weights"] = getattr(self.model, "backbone_weights", {})  # the weights it was fitted to
        if self.init_source is not None:
            checkpoint["init_from"] = self.init_source
        checkpoint["planned_steps"] = getattr(self, "planned_steps", None)
        checkpoint["saved_at"] = time.time()  # which of a folder's runs saved last (a file's time is a copy's)
        # every process's generator states (Lightning saves checkpoints from all processes at once)
        checkpoint["random_states"] = random_state.gather_objects([random_state.capture()])

    def trainable_state_keys(self) -> set[str]:
        """The state-dict keys a checkpoint keeps: LoRA, projection, cross-attention, gates."""
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before restoring: refuse a checkpoint of another model, naming the settings that differ."""
        self.configure_model()
        check_checkpoint(checkpoint, self.model, f"checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "checkpoint")
        self.init_source, self.loaded_step = checkpoint.get("init_from"), checkpoint.get("global_step")  # (its results' name)
        if self._trainer is not None and self.trainer.state.fn == "fit":
            checkpoint_folder_on_resume(self.trainer, checkpoint)  # (a tuner's own checkpoint left alone)
        elif self._trainer is not None:  # validate, test: a whole evaluation split, a run trained on most of it
            scored_where_trained(self.trainer, checkpoint.get("training_data") or {})
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

