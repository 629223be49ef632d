"""``mmcaption fit | validate | test | predict``: LightningCLI over the captioner and a data module."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mmcaption.checkpoint import data_settings, install_atomic_checkpoint_io, job_of_checkpoint, load_checkpoint_file
from mmcaption.checkpoint_folders import earlier_checkpoints_note, keyword_checkpoint, newest_first
from mmcaption.console import bars_put_back, print_metrics, quiet_lightning, warnings_filtered
from mmcaption.data.base import PREPROCESSING_VERSION
from mmcaption.data.summary import prepare_splits
from mmcaption.errors import ConfigError, MMCaptionError, release_held_stops, signals_stop, user_errors_exit
from mmcaption.folders import (
    check_named_runs_unused,
    check_writable,
    claim_run_folders,
    locks_released_after,
    remove_unused_run,
    take_checkpoint_folder,
)
from mmcaption.generation_settings import saved_generation
from mmcaption.model import MultimodalConfig, is_pretrained_folder, read_manifest
from mmcaption.model.backbone_checks import check_backbones, context_problem
from mmcaption.model.compatibility import check_structure, structure_problem
from mmcaption.model.config import (
    TRAINING_ONLY,
    flat_settings,
    merged_settings,
    nested_settings,
    precision_problem,
    unread_init_from,
)
from mmcaption.model.multimodal import pretrained_config
from mmcaption.module import MultimodalCaptioner
from mmcaption.parser import MMCaptionParser, expand_home, instantiation_error, print_config_held, print_held_config
from mmcaption.resume_checks import check_resume, checkpoint_settings, resuming_from
from mmcaption.run_callbacks import KeptConfig, NothingLeftToTrain, add_run_callbacks, forget_earlier_seed
from mmcaption.setting_names import named_log_folders
from mmcaption.settings_checks import (
    ask_as_trained,
    autocast_problem,
    lightning_setting_errors,
    optimizer_problem,
    root_folder,
    trainer_problem,
    under_root_folder,
    unlogged_monitor,
    usable_callbacks,
)
from mmcaption.settings_checks import configured_checkpoint_folders as checkpoint_folders
from mmcaption.slurm import requeued, requeued_checkpoint
from mmcaption.terminal import kernel_command_line
from mmcaption.usage import EPILOG, PREPARE_HELP, RELEASE

# ``--ckpt_path`` values Lightning resolves itself rather than as files
CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")


class MMCaptionCLI(LightningCLI):
    """LightningCLI whose data module follows the model's config, one way.

    The tokenizer, image processor and cached vision features must be the model's: ``model.config.language_model``,
    ``vision_model`` and ``vision_feature_layer`` are handed to the data module (its ``tokenizer``, ``image_processor``,
    ``vision_feature_layer``, where it has them), which loads them with the model's factory."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.config.language_model", "data.init_args.tokenizer")
        parser.link_arguments("model.config.vision_model", "data.init_args.image_processor")
        parser.link_arguments("model.config.vision_feature_layer", "data.init_args.vision_feature_layer")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        asked = [a for a in getattr(self, "_arguments", None) or [] if isinstance(a, str) and a.startswith("--trainer.logger")]
        if self.subcommand in ("predict", "validate") and not asked and not named_log_folders(self.config[self.subcommand].trainer):
            kwargs.setdefault("logger", False)  # results printed and written: no empty run of the config's; kept: one asked
            # for on the command line, or a config's that names its run's folder (a version: a user's own config)
        if self.subcommand and self.config[self.subcommand].trainer.get("logger") is True and (
                logger := getattr(self.parser, "configured_logger", lambda _: None)(self.subcommand)):  # the configs'
            settings = logger.setdefault("init_args", {})  # under the run's root, as the config's logger goes in fit
            if rooted := root_folder(settings.get("save_dir"), self.config[self.subcommand].trainer.get("default_root_dir")):
                settings["save_dir"] = rooted
            kwargs["logger"] = instantiate_class((), logger)
        with lightning_setting_errors(building=True):  # a strategy whose package is missing, or that needs a GPU
            trainer = super().instantiate_trainer(**kwargs)
        if problem := autocast_problem(trainer.precision, self.model.config.computed_dtype):
            raise ConfigError(problem)
        if trainer.logger is None:  # no run folder: Lightning would write the config as config.yaml in the working
            # directory, over whatever file of that name the user keeps there
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        install_atomic_checkpoint_io(trainer)
        add_run_callbacks(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            if subcommand == "fit" and not self.config_init["fit"].get("ckpt_path") and not requeued():  # a requeue: the same run
                check_named_runs_unused([lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger | CSVLogger)])
            if subcommand in ("fit", "test") and self.trainer.global_rank == 0:  # the run folders this run makes, made now
                self._new_run_folders = claim_run_folders([logger for logger in self.trainer.loggers
                                                           if isinstance(logger, TensorBoardLogger | CSVLogger)])
            with lightning_setting_errors():
                super()._run_subcommand(subcommand)
            if subcommand == "fit" and any(isinstance(c, NothingLeftToTrain) and not c.trained for c in self.trainer.callbacks):  # resumed at its
                for folder in getattr(self, "_new_run_folders", ()):  # end: no run of nothing listed in TensorBoard
                    remove_unused_run(folder)
        except BaseException:  # a fit that failed before its first step (a test, before its end) leaves no empty run
            if subcommand == "test" or self.trainer.global_step == 0:
                for folder in getattr(self, "_new_run_folders", ()):
                    remove_unused_run(folder)
            raise

    def validate(self, verbose: bool = True, **kwargs: Any) -> None:
        print_metrics(self.trainer.validate(verbose=False, **kwargs), verbose)

    def test(self, verbose: bool = True, **kwargs: Any) -> None:  # the metrics as one table, as validate's
        print_metrics(self.trainer.test(verbose=False, **kwargs), verbose)

    def predict(self, return_predictions: bool | None = None, **kwargs: Any) -> None:  # the rows are written as they come:
        self.trainer.predict(return_predictions=bool(return_predictions), **kwargs)  # held too, they grew with each image

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # wrapped by jsonargparse: a data module's own refusal, a logger's missing package
            if (said := instantiation_error(error)) is None:
                raise
            raise said from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        # Lightning < 2.7 (pinned): where the trainer's settings meet the config's callbacks. Where --ckpt_path last
        # looks: the config's checkpoint folders, also when fast_dev_run or enable_checkpointing false leaves them out
        given = config.get("callbacks") or []
        self._checkpoint_folders = [Path(c.dirpath) for c in (given if isinstance(given, list) else [given])
                                    if isinstance(c, ModelCheckpoint) and c.dirpath]
        config["callbacks"] = usable_callbacks(config, fit=self.subcommand == "fit")
        return super()._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        """Before anything is built: the accelerator asked for exists, and each backbone can be found."""
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        accelerator = config.trainer.get("accelerator")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator is {accelerator!r}, and PyTorch sees no GPU on this machine (torch {torch.__version__}, "
                "torch.cuda.is_available() is False). Run it where there is one, or add --trainer.accelerator cpu to try "
                "it on the CPU (slow at the real shapes; mmcaption-demo trains the whole model offline in minutes)"
            )
        # a resume from another run's folder is said by mmcaption (checkpoint_folders.say_a_resume_saved_elsewhere)
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        if self.subcommand != "fit":  # about resuming training from the checkpoint: nothing to act on here
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
        if self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path") and config.model.get("init_from"):
            if rank_zero_only.rank == 0:  # a config's init_from is the stage before's: say whose weights these are
                print(f"note: no --ckpt_path: {self.subcommand} uses the trained weights of model.init_from, "
                      f"{config.model.init_from}", file=sys.stderr, flush=True)
        elif self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path"):
            raise ConfigError(
                f"{self.subcommand} needs trained weights: give --ckpt_path (a checkpoint of mmcaption fit) or "
                "--model.init_from (a checkpoint, or a folder written by mmcaption-export). Without them the projection, "
                "cross-attention and LoRA are untrained: the model would not see the images"
            )
        model, data = config.model.config, config.get("data")
        check_backbones(model.language_model, model.vision_model, config.get("ckpt_path") or config.model.get("init_from"))
        trained = self.subcommand != "fit" or bool(config.get("ckpt_path") or config.model.get("init_from"))  # LoRA as trained
        if problem := precision_problem(config.trainer.get("precision"), model.quantization, model.compute_dtype) or \
                trainer_problem(config.trainer) or (self.subcommand == "fit" and optimizer_problem(
                    config.model, config.trainer)) or \
                structure_problem(MultimodalConfig(**model.as_dict()), trained=trained) or \
                context_problem(model.language_model, getattr(data, "init_args", {}).get("max_length") if data else None):
            raise ConfigError(problem)  # all before anything loads: the data is preprocessed before the model is built

    def _parse_ckpt_path(self) -> None:
        """With ``--ckpt_path``: the checkpoint's model settings, except those the user set.

        LightningCLI lays the checkpoint's saved hyper-parameters over the command line, so a setting given with
        ``--model.*`` or in the config would be silently ignored. Here what the user set (in a config or on the command
        line, even to its default value) wins and is listed against the checkpoint's value; the checkpoint fills in the
        rest (so ``predict --ckpt_path X`` needs no config). A structural setting that differs (LoRA rank, injected
        layers, ...) is refused naming both values, as the trained tensors would not fit. The file is read with
        ``weights_only`` (a pickled payload is refused by name)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        init_from = self.config[subcommand]["model"].get("init_from")
        if init_from and not ckpt_path and Path(init_from).is_dir() and not is_pretrained_folder(init_from):
            read_manifest(init_from)  # a folder of fit's checkpoints: refused now naming the one to give, not once built
        if not ckpt_path and subcommand != "fit" and init_from and is_pretrained_folder(init_from):
            # predict (validate, test) from an export alone: its model settings and backbones, as a checkpoint's
            manifest = read_manifest(init_from)
            saved = {"config": asdict(pretrained_config(init_from)), "generation": saved_generation(manifest.get("generation") or {}, f"model.init_from {init_from}")}
            self._model_settings_from(f"model.init_from {init_from}", saved, subcommand, "export")
            ask_as_trained(subcommand, self.config[subcommand].get("data"), manifest.get("prompts") or {}, f"model.init_from {init_from}", False)
        elif not ckpt_path and init_from and Path(init_from).is_file():  # a checkpoint's data settings: its prompts
            ask_as_trained(subcommand, self.config[subcommand].get("data"), data_settings(init_from), f"model.init_from {init_from}")
            self._refuse_other_structure(init_from, subcommand)
        if str(ckpt_path) in ("last", "best"):  # the file it names, as after_instantiate_classes finds it (None: fit starts afresh)
            ckpt_path = keyword_checkpoint(str(ckpt_path), checkpoint_folders(self.config[subcommand].trainer), subcommand)
        if not ckpt_path or str(ckpt_path) in CHECKPOINT_KEYWORDS:
            return
        checkpoint = load_checkpoint_file(ckpt_path)
        self._checkpoint_data = (str(ckpt_path), checkpoint.get("training_data") or {})  # its run's stage, its data's format
        saved = checkpoint_settings(checkpoint, ckpt_path, set(inspect.signature(MultimodalCaptioner).parameters), subcommand == "fit")
        ask_as_trained(subcommand, self.config[subcommand].get("data"), checkpoint.get("datamodule_hyper_parameters") or {}, ckpt_path)
        if saved.get("generation"):  # a typo an earlier release kept: left out, said, not refused with the checkpoint
            saved["generation"] = saved_generation(saved["generation"], f"--ckpt_path {ckpt_path}")
        if saved:
            self._model_settings_from(f"--ckpt_path {ckpt_path}", saved, subcommand, "checkpoint")

    def _refuse_other_structure(self, init_from: str, subcommand: str) -> None:
        """A stage started from a checkpoint of other structural settings (``lora_r`` 16, this config's 8) is refused now,
        not after minutes of loading Phi-2 as tensor shapes (where its layers, given or counted from the end, are)."""
        try:
            saved = flat_settings(load_checkpoint_file(init_from, mmap=True).get("hyper_parameters") or {})
        except MMCaptionError:  # damaged: said where its weights are loaded
            return
        given = flat_settings(self.config[subcommand]["model"].as_dict())
        defaults = flat_settings(self._subcommand_parsers[subcommand].get_defaults()["model"].as_dict())
        _, _, differ = merged_settings(saved, given, self._written_model_settings(subcommand), defaults)  # as --ckpt_path's
        if differ:
            raise ConfigError(f"model.init_from {init_from} was trained with other structural settings than this run's "
                              f"({'; '.join(differ)}): its tensors cannot fit. Give the checkpoint's, after any --config")

    def _model_settings_from(self, source: str, saved: dict[str, Any], subcommand: str, saved_name: str) -> None:
        """The model settings of a checkpoint or an export (``saved``), except those the user set (listed against the
        saved value); a structural setting that differs is refused naming both values."""
        given = flat_settings(self.config[subcommand]["model"].as_dict())
        defaults = flat_settings(self._subcommand_parsers[subcommand].get_defaults()["model"].as_dict())
        typed = {str(a).split("=")[0].removeprefix("--model.") for a in self._arguments if str(a).startswith("--model.")} \
            if isinstance(getattr(self, "_arguments", None), list) else None
        merged, notes, refused = merged_settings(flat_settings(saved), given, self._written_model_settings(subcommand), defaults,
                                                 saved_name, typed)
        if saved_name == "checkpoint" and (unread := unread_init_from(source, given, saved, typed, subcommand)) and rank_zero_only.rank == 0:
            print(unread, file=sys.stderr, flush=True)
        if refused:
            raise ConfigError(f"{source} was trained with other structural settings than this run's ({'; '.join(refused)}); "
                              f"its tensors cannot fit. Give the {saved_name}'s, after any --config (or leave them out of "
                              "your config and command line), or train a new run")
        if (notes := [n for n in notes if subcommand == "fit" or n.split(" ")[0] not in TRAINING_ONLY]) and rank_zero_only.rank == 0:
            print(f"{source}: using the settings you gave instead of the {saved_name}'s: {'; '.join(notes)}",
                  file=sys.stderr, flush=True)
        self.config = self.parser.parse_object({subcommand: {"model": nested_settings(merged)}}, self.config)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._arguments = sys.argv[1:] if args is None else args
        with print_config_held(self._arguments) as held:  # with --ckpt_path: printed once its settings are in
            super().parse_arguments(parser, args)
            expand_home(self.config)
            if (subcommand := self.config.get("subcommand")) and (moved := under_root_folder(  # every rank: its paths
                    self.config[subcommand], [str(a) for a in self._arguments], lambda held: newest_first(held)[0][0])) \
                    and rank_zero_only.rank == 0:
                print(f"note: under trainer.default_root_dir: {', '.join(moved)}", file=sys.stderr, flush=True)
            if held:
                self._parse_ckpt_path()
        if held:
            print_held_config(parser, self.config)

    def _written_model_settings(self, subcommand: str) -> set[str] | None:
        """The model settings the user wrote, in a config or on the command line - whatever their value, so
        a setting given equal to its default still wins over the checkpoint's (``None``: unknown)."""
        if not isinstance(getattr(self, "_arguments", None), list):
            return None
        try:  # parsed again without the defaults; the links (model -> data) need settings this parse lacks
            from jsonargparse._link_arguments import skip_apply_links

            with skip_apply_links(), contextlib.redirect_stderr(io.StringIO()):
                written = self.parser.parse_args(self._arguments, defaults=False)[subcommand].get("model")
        except (SystemExit, Exception):  # noqa: BLE001 - parsed once already; fall back to comparing with defaults
            return None
        return set(flat_settings(written.as_dict())) if written is not None else set()

    def after_instantiate_classes(self) -> None:
        """Before anything is loaded: every folder the run will write is writable, a checkpoint folder
        is not being written by another run, a predict output is not an input or an existing file."""
        if self.subcommand is None:
            return
        trainer = self.trainer
        check_inputs = getattr(self.datamodule, "check_inputs", None)
        if check_inputs is not None:
            check_inputs(self.subcommand)
        folders = getattr(self, "_checkpoint_folders", None)
        if (resolved := keyword_checkpoint(self.config[self.subcommand].get("ckpt_path"), folders, self.subcommand)) is not None:
            self.config[self.subcommand]["ckpt_path"] = self.config_init[self.subcommand]["ckpt_path"] = str(resolved)
        if self.subcommand == "fit":  # a SLURM job requeued after its time-limit signal: from its own last save
            if (resume := requeued_checkpoint(trainer, job_of_checkpoint, given=self.config["fit"].get("ckpt_path"))) is not None:
                self.config["fit"]["ckpt_path"] = self.config_init["fit"]["ckpt_path"] = resume
            resuming_from(trainer, self.config["fit"].get("ckpt_path"))  # compared across the processes once they are up
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                    # Lightning would only warn that the folder "exists and is not empty" (a lock left by a kill
                    # counts): earlier checkpoints are named below, with what this run does beside them
                    warnings.filterwarnings("ignore", message=f"Checkpoint directory {re.escape(str(callback.dirpath))} exists")
                    check_writable(callback.dirpath, "checkpoints (ModelCheckpoint's dirpath, or trainer.default_root_dir)")
                    if trainer.global_rank == 0:  # refused first if another run is writing there: not told to continue it
                        take_checkpoint_folder(callback.dirpath)  # and a killed run's unfinished saves removed
                    if not self.config[self.subcommand].get("ckpt_path") and trainer.global_rank == 0:
                        earlier_checkpoints_note(Path(callback.dirpath), saves_last=bool(callback.save_last))
            init_from = getattr(self.model, "init_from", None)
            if problem := unlogged_monitor(trainer.callbacks, self.datamodule):
                raise ConfigError(problem)
            if init_from and not self.config["fit"].get("ckpt_path") and not Path(init_from).exists():  # a resume's unused
                raise ConfigError(f"model.init_from {init_from} not found (train the caption stage first, or point "
                                  "init_from at its checkpoint or exported folder)")
        if self.subcommand in ("fit", "validate", "test"):
            for logger in trainer.loggers:
                folder = getattr(logger, "save_dir", None) or getattr(logger, "root_dir", None)
                if folder:
                    check_writable(folder, "logs (trainer.logger's save_dir, or trainer.default_root_dir)")
            if trainer.logger is None:  # the results of each evaluation go here: found now, not after generating
                check_writable(trainer.default_root_dir, "evaluation results (trainer.default_root_dir)")
        given, saved = getattr(self, "_checkpoint_data", (None, {}))
        if self.subcommand == "fit" and given == str(self.config["fit"].get("ckpt_path")):  # (not a requeued job's own)
            check_resume(given, saved, getattr(self.datamodule, "training_stage", None), PREPROCESSING_VERSION)
        stage, needed = saved.get("stage"), getattr(self.datamodule, "stage_needed", "")
        if self.subcommand != "fit" and stage and needed and stage != needed and trainer.global_rank == 0:
            print(f"note: {self.config[self.subcommand].ckpt_path} is a checkpoint of the {stage} stage; "
                  f"{type(self.datamodule).__name__}'s questions are what the {needed} stage teaches to answer",
                  file=sys.stderr, flush=True)
        if self.subcommand == "predict" and hasattr(self.datamodule, "check_output"):
            self.datamodule.check_output(trainer.world_size, trainer.global_rank)


def run_cli(args: list[str] | None = None) -> MMCaptionCLI:
    """Run ``mmcaption`` with ``args`` (``sys.argv`` when None); Ctrl-C raises Interrupted, in a notebook's cell too."""
    if args is None and kernel_command_line():  # its "-f kernel.json" was read as a subcommand
        raise ConfigError('in a notebook, give the command\'s arguments: run_cli(["fit", "--config", ...]), or main([...])')
    forget_earlier_seed()  # a run before it in this process: its seed is not this one's
    with signals_stop(), bars_put_back(), warnings_filtered(), locks_released_after():
        quiet_lightning()
        if args is not None:  # the pipeline's and the demo's stages: their own arguments, not the command line's
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        try:
            return MMCaptionCLI(
                MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, args=args,
                parser_kwargs={"epilog": EPILOG, "prog": "mmcaption", "version": RELEASE},  # also when the pipeline or demo runs one
                save_config_callback=KeptConfig,  # beside an earlier command's config in the same run folder, not over it
                save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False, parser_class=MMCaptionParser)
        finally:  # a stop signal held through its teardown (hold_stops) stays due, and a new one acts at once
            release_held_stops()


class _PrepareCLI(MMCaptionCLI):
    """The same configuration, without a Trainer: preparing data needs no accelerator."""

    def instantiate_trainer(self, **kwargs: Any) -> None:
        return None


def prepare(args: list[str]) -> int:
    """``mmcaption prepare --config ...``: preprocess the configured data module's splits (and its feature cache) without
    loading the language model, and print what each split holds. Returns 0; a data or settings error is raised."""
    with bars_put_back(), warnings_filtered():  # its warnings shown as fit shows them; a notebook's bars kept
        quiet_lightning()  # in a log file, no bars of redrawn counts (fit's own lines stay as they are)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)  # argv minus 'prepare'
        cli = _PrepareCLI(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, args=args, run=False,
                          auto_configure_optimizers=False, parser_class=MMCaptionParser,
                          parser_kwargs={"prog": "mmcaption prepare", "description": PREPARE_HELP})
        check_backbones(cli.model.config.language_model, cli.model.config.vision_model, None)  # as fit names them
        check_structure(cli.model.config, "model.config.", trained=True)  # a vision_feature_layer its features cannot have
        return prepare_splits(cli.datamodule, cli.model.config.language_model)


@user_errors_exit
def main(args: list[str] | None = None) -> None:
    """The ``mmcaption`` console script: LightningCLI's subcommands, ``prepare`` and ``chat``.

    Exit status: 0 done; 2 a user error (one line naming the file or setting; ``MMCAPTION_TRACEBACK=1`` adds the
    traceback); 130 / 143 stopped by Ctrl-C / SIGTERM (during ``fit``, after saving a checkpoint to resume from;
    elsewhere after removing what was half-written); 1 anything else (a bug: its traceback is printed)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["prepare"]:
        sys.exit(prepare(argv[1:]))
    if argv[:1] == ["chat"]:
        from mmcaption.chat import main as chat_main

        return chat_main(argv[1:])
    finished = run_cli(args)  # Ctrl-C and SIGTERM: user_errors_exit's handlers, which Lightning leaves in place of its own
    if failed := [c.failure for c in getattr(finished.trainer, "callbacks", []) if getattr(c, "failure", None)]:
        raise MMCaptionError(failed[0])  # `mmcaption predict ... && upload` stops


if __name__ == "__main__":
    main()
