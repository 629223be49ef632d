"""Misuse and interruption: nothing a user wrote is destroyed, what they typed is honoured, a run is
refused in its first seconds when it could not finish, and a user's error is one line."""

import csv
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from mmcaption import pipeline
from mmcaption.callbacks import ResumableStop, ResumeError
from mmcaption.checkpoint import load_checkpoint_file
from mmcaption.cli import MMCaptionCLI, main, run_cli
from mmcaption.console import quiet_lightning
from mmcaption.data import CaptionDataModule, InstructDataModule
from mmcaption.data.cache import is_complete, publish_atomically
from mmcaption.data.workers import worker_init
from mmcaption.demo.synthetic import write_llava_split
from mmcaption.errors import (
    ConfigError,
    FolderLockedError,
    Interrupted,
    NotWritableError,
    OutputExistsError,
    RunInterrupted,
    one_line,
    user_errors_exit,
)
from mmcaption.export import export_checkpoint
from mmcaption.export import main as export_main
from mmcaption.folders import FolderLock
from mmcaption.model import MultimodalCausalLM
from mmcaption.module import MultimodalCaptioner
from mmcaption.resources import add_note, disk_full, out_of_memory

from .conftest import REPO, make_captioner
from .test_predict_export import QUESTIONS, choice_data, predictor, write_csv
from .test_resume import Payload


def no_backbones(monkeypatch):
    """Make loading the model fail the test: what is checked must be checked before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the backbones were loaded before the check")
    monkeypatch.setattr(MultimodalCausalLM, "from_config", refuse)


def user_error(capsys, command, args) -> str:
    """Run a console script's main; it must exit 2 with one ``error:`` line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        command(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


# -- predict never destroys its input or an earlier output -------------------------------------------------


def predict_args(checkpoint, csv_file, output, *extra) -> list[str]:
    return ["predict", "--ckpt_path", str(checkpoint), "--data", "mmcaption.data.MultipleChoiceDataModule",
            "--data.csv_file", str(csv_file), "--data.output", str(output), "--data.num_workers", "0",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", *extra]


def test_predict_refuses_its_input_as_output_and_an_existing_output_before_loading_anything(
    trained_checkpoint, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS)
    before = questions.read_bytes()
    no_backbones(monkeypatch)

    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, questions))
    assert f"output {questions} is the input {questions}" in message
    assert questions.read_bytes() == before  # the questions are intact
    # asking to overwrite does not make the input a valid output
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, questions, "--data.overwrite", "true"))
    assert "is the input" in message and questions.read_bytes() == before
    # the input by another name: Q.csv for q.csv on macOS's or Windows' disks (a hard link here) was "exists; replace it
    # with --data.overwrite true", which then wrote over the questions
    other_case = tmp_path / "Q.csv"
    os.link(questions, other_case)
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, other_case, "--data.overwrite", "true"))
    assert f"output {other_case} is the input {questions}" in message and questions.read_bytes() == before
    other_case.unlink()

    earlier = tmp_path / "answers.csv"
    earlier.write_text("my earlier results\n")
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, earlier))
    assert f"output {earlier} exists" in message and "--data.overwrite true" in message
    assert earlier.read_text() == "my earlier results\n"

    photo = image_folder / "img0.png"  # an image the questions ask about: with overwrite, it was written over
    pixels = photo.read_bytes()
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, photo, "--data.overwrite", "true"))
    assert f"output {photo}: predict writes rows as a table (.csv, which spreadsheets open) or as JSON Lines (.jsonl" in message
    assert photo.read_bytes() == pixels
    # rows under .json (json.load refused the file), JSON Lines under MMBench's .xlsx or a .tsv: refused before anything loads
    for name in ("answers.json", "answers.xlsx", "answers.tsv", "answers"):
        message = user_error(capsys, main, predict_args(trained_checkpoint, questions, tmp_path / name))
        assert f"output {tmp_path / name}: predict writes rows as a table (.csv" in message
        assert "would not be what its name says" in message and not (tmp_path / name).exists()
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, "-"))  # stdout, as other tools take it
    assert "(.jsonl, one object per line), to a file, not to the terminal (where its progress and summary go)" in message

    # the output moved aside as the refusal says, its summary (accuracy, what made it) left: was replaced without a word
    kept = tmp_path / "kept.csv.summary.json"
    kept.write_text('{"accuracy": 1.0}')
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, tmp_path / "kept.csv"))
    assert f"{kept} exists without {tmp_path / 'kept.csv'}, and this run would write its own there" in message
    assert kept.read_text() == '{"accuracy": 1.0}'
    (tmp_path / "afile").write_text("")  # a file where the output's folder would be: "afile is not writable"
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, tmp_path / "afile" / "answers.csv"))
    assert message.endswith(f"{tmp_path / 'afile'} is a file, not a folder")
    # a name the file system takes, whose summary and results files, named from it, it does not: was an OSError traceback
    long = tmp_path / ("y" * 234 + ".csv")
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, long))
    assert message == (f"error: --data.output {long}: predict writes files beside it named from it, up to 27 bytes longer "
                       "(.<name>.coco_results.json.partial), and its file system takes names of 255 bytes at most: give it a "
                       "name of 228 bytes or fewer (this one has 238)") and not list(tmp_path.glob("yyy*"))


def test_output_read_by_head_ends_quietly_and_other_broken_pipes_still_fail(tmp_path):
    # `mmcaption test ... | head -3`, `mmcaption chat ... | head -1`: a BrokenPipeError traceback, exit status 1
    program = ("import sys\nfrom mmcaption.errors import user_errors_exit\n@user_errors_exit\ndef main():\n"
               "    if sys.argv[1] == 'socket':\n        raise BrokenPipeError(32, 'a worker went away')\n"
               "    for i in range(200000):\n        print('line', i)\nmain()\n")
    reading = subprocess.Popen([sys.executable, "-c", program, "print"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reading.stdout.readline() == b"line 0\n"
    reading.stdout.close()  # what head does once it has its lines
    said = reading.stderr.read()
    assert reading.wait() == 128 + signal.SIGPIPE and said == b""  # as a program SIGPIPE stops
    other = subprocess.run([sys.executable, "-c", program, "socket"], capture_output=True)
    assert other.returncode == 1 and b"BrokenPipeError: [Errno 32] a worker went away" in other.stderr


def test_predict_where_not_one_row_could_be_predicted_exits_as_an_error_after_writing_them(
    trained_checkpoint, tmp_path, monkeypatch, capsys
):
    # two empty photos: "2 could not be predicted" and exit status 0, so `predict && upload` went on
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    for name in ("img0.png", "img1.png"):
        (tmp_path / "images" / name).write_bytes(b"")
    questions = write_csv(tmp_path / "q.csv", QUESTIONS[:2])
    message = user_error(capsys, main, predict_args(trained_checkpoint, questions, tmp_path / "answers.csv"))
    assert message.startswith("error: not one of the 2 rows could be predicted (the first: image ") and "img0.png" in message
    assert message.endswith(f"{tmp_path / 'answers.csv'} holds their errors")
    with (tmp_path / "answers.csv").open() as handle:
        assert [bool(row["error"]) for row in csv.DictReader(handle)] == [True, True]


def test_predict_with_overwrite_replaces_the_output_and_reads_its_own_output_back(
    backbones, trained_checkpoint, image_folder, tmp_path
):
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS)
    output = tmp_path / "answers.csv"
    output.write_text("stale\n")
    dm = choice_data(backbones, questions, output)
    dm.overwrite = True
    predictor(tmp_path).predict(module, datamodule=dm)
    with output.open() as handle:
        first = list(csv.DictReader(handle))
    assert len(first) == 4 and first[0]["prediction"] in "ABCD" and first[0]["prediction"]
    assert not list(tmp_path.glob(".answers.csv.partial*"))  # written beside it, then renamed
    assert not (tmp_path / ".answers.csv.lock").exists()  # the output's lock, given back when it is in place

    # the output, fed back as input (its images are relative to its folder, as the questions'), is read
    # as questions: its result columns are replaced, not taken for answers or predictions
    again = tmp_path / "again.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, output, again))
    with again.open() as handle:
        second = list(csv.DictReader(handle))
    assert [r["prediction"] for r in second] == [r["prediction"] for r in first]
    assert [r["correct"] for r in second] == [r["correct"] for r in first]
    assert list(second[0]).count("prediction") == 1


class InterruptAtBatch(Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            raise KeyboardInterrupt


def test_ctrl_c_in_predict_keeps_the_rows_done_and_their_summary(backbones, trained_checkpoint, image_folder, tmp_path):
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 3)  # 12 questions, 6 batches of 2
    output = tmp_path / "answers.csv"
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[InterruptAtBatch(2)])
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown on Ctrl-C
        trainer.predict(module, datamodule=choice_data(backbones, questions, output))
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(r["prediction"] for r in rows[:3])  # batches 0 and 1: 4 rows
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["rows"] == 4 and summary["interrupted"] == "KeyboardInterrupt"
    assert not list(tmp_path.glob(".answers.csv.partial*"))
    # the same command again: told to resume (it advised only --data.overwrite, which throws the rows done away)
    with pytest.raises(OutputExistsError, match=r"answers\.csv exists, left by an interrupted run \(KeyboardInterrupt\): go on "
                                                r"from it with --data.resume true"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))

    # going on with another method or other weights would make one accuracy of two models' rows: refused, naming it
    assert summary["made_by"]["settings"]["method"] == "likelihood" and summary["made_by"]["generation"]
    assert summary["made_by"]["software"]["transformers"]  # and the code: library versions (and a checkout's commit)
    with pytest.raises(OutputExistsError, match=r"resume: the rows of .*answers\.csv came from other weights or "
                                                r"settings - method \('likelihood' then, 'generation' now\)"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, method="generation", resume=True))
    other_weights = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    other_weights.generation.update(num_beams=3)
    with pytest.raises(OutputExistsError, match=r"settings - num_beams \(1 then, 3 now\)"):
        predictor(tmp_path).predict(other_weights, datamodule=choice_data(backbones, questions, output, resume=True))
    with pytest.raises(OutputExistsError, match=r"settings - the weights \(the model's own weights then, .*\.ckpt now\)"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True),
                                    ckpt_path=str(trained_checkpoint))

    # the same command with resume: the 4 rows kept, the 8 others added; the summary counts all 12
    stopped = output.read_bytes()
    with pytest.raises(SystemExit):  # stopped again, after one more batch: the rows of both runs are kept
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                callbacks=[InterruptAtBatch(1)]).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert output.read_bytes().startswith(stopped) and json.loads(output.with_name("answers.csv.summary.json").read_text())["rows"] == 6
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    with output.open() as handle:
        resumed = list(csv.DictReader(handle))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / "whole.csv"))
    with (tmp_path / "whole.csv").open() as handle:
        whole = list(csv.DictReader(handle))
    assert resumed == whole  # the same rows in the same order as one run without a stop
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["rows"] == 12 and summary["resumed_after"] == 6 and "interrupted" not in summary
    assert summary["accuracy"] == json.loads((tmp_path / "whole.csv.summary.json").read_text())["accuracy"]
    # nothing to go on with, or another input's rows: refused, the output untouched
    with pytest.raises(OutputExistsError, match=r"resume: .*answers\.csv is complete \(12 rows") as refused:
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert "this input has" not in str(refused.value)
    grown = write_csv(tmp_path / "grown.csv", QUESTIONS * 4)  # questions (or photos) added since: said, with the way on
    with pytest.raises(OutputExistsError, match=r"complete \(12 rows.*; this input has 16 rows now: resume goes on with an "
                                                r"interrupted run, so give the new ones their own --data.output"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, grown, output, resume=True))
    shorter = write_csv(tmp_path / "shorter.csv", QUESTIONS * 2)  # not "the new ones": there are none
    with pytest.raises(OutputExistsError, match=r"complete \(12 rows.*; this input has 8 rows: another input, or this one "
                                                r"shortened since"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, shorter, output, resume=True))
    summary_file = output.with_name("answers.csv.summary.json")
    summary_file.write_text(json.dumps({**summary, "interrupted": "SIGTERM"}))
    other = write_csv(tmp_path / "other.csv", QUESTIONS[1:] * 4)
    with pytest.raises(OutputExistsError, match=r"resume: row 1 of .*answers\.csv has img_path 'images/img0.png' where this "
                                                r"input's row 1 has 'images/img1.png'"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, other, output, resume=True))
    assert output.read_bytes().startswith(stopped) and len(output.read_text().splitlines()) == 13


class KilledAtBatch(Callback):
    """What a SIGKILL (the out-of-memory killer, a scheduler's hard kill) leaves at the end of ``batch``: the files as
    they are then, nothing cleaned up. Kept aside and put back once the run has ended."""

    def __init__(self, batch: int, output: Path, keep: Path) -> None:
        self.batch, self.output, self.keep = batch, output, keep

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            self.keep.mkdir()
            for name in (f".{self.output.name}.partial", f".{self.output.name}.partial.made_by.json"):
                shutil.copy(self.output.with_name(name), self.keep / name)

    def left(self, torn: bytes = b"") -> None:
        for path in (self.output, self.output.with_name(self.output.name + ".summary.json")):
            path.unlink()
        for kept in self.keep.iterdir():
            shutil.copy(kept, self.output.with_name(kept.name))
        with self.output.with_name(f".{self.output.name}.partial").open("ab") as handle:
            handle.write(torn)  # a row the kill cut short


def predicted_with_a_kill_at_batch_2(backbones, trained_checkpoint, tmp_path):
    """A whole predict of 12 questions (6 batches of 2) into answers.csv, with what a kill after its third batch leaves
    kept aside (``killed.left()`` puts it in place): the module, the questions, the output, the kill, the whole output."""
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 3)
    output = tmp_path / "answers.csv"
    killed = KilledAtBatch(2, output, tmp_path / "at-kill")
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            callbacks=[killed]).predict(module, datamodule=choice_data(backbones, questions, output))
    return module, questions, output, killed, output.read_text()


def test_questions_added_to_the_file_after_an_interruption_are_answered_by_the_resume(backbones, trained_checkpoint, image_folder,
                                                                                     tmp_path, capsys):
    # a question appended after Ctrl-C: the resume was refused as "other weights or settings - the input files (...)",
    # the only way on --data.overwrite (the rows done thrown away); an edit of a question is still refused
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 3)  # 12 questions, 6 batches of 2
    output = tmp_path / "answers.csv"
    with pytest.raises(SystemExit):
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                callbacks=[InterruptAtBatch(1)]).predict(module, datamodule=choice_data(backbones, questions, output))
    stopped = output.read_bytes()
    edited = tmp_path / "edited.csv"
    write_csv(edited, [*QUESTIONS, QUESTIONS[0], QUESTIONS[1], {**QUESTIONS[2], "answer": "B"}, QUESTIONS[3], *QUESTIONS])
    shutil.copy(edited, questions)  # row 7 edited since, not added to: another version of the file
    with pytest.raises(OutputExistsError, match=r"came from other weights or settings - the input files \(.*q\.csv then; "):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    write_csv(questions, QUESTIONS * 3)
    with questions.open("a", newline="") as handle:  # one question more, at its end
        csv.DictWriter(handle, fieldnames=list(QUESTIONS[0])).writerow(QUESTIONS[1])
    capsys.readouterr()
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert f"note: resume: {questions} had rows added at its end since {output}'s were written: they are predicted after " \
           "the others" in capsys.readouterr().err
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / "whole.csv"))
    assert output.read_bytes().startswith(stopped) and output.read_text() == (tmp_path / "whole.csv").read_text()
    assert json.loads(output.with_name("answers.csv.summary.json").read_text())["rows"] == 13


def test_a_killed_predict_keeps_its_complete_rows_and_resume_goes_on_from_them(backbones, trained_checkpoint, image_folder,
                                                                                tmp_path, monkeypatch):
    # a hard kill left only the hidden partial file: resume said "starting at the first row" and wrote over it (hours of
    # a large folder's captions lost to the out-of-memory killer)
    infos = []
    monkeypatch.setattr("mmcaption.data.predict.rank_zero_info", infos.append)
    module, questions, output, killed, whole = predicted_with_a_kill_at_batch_2(backbones, trained_checkpoint, tmp_path)
    killed.left(torn=b"images/img0.png,What colour")
    with pytest.raises(OutputExistsError, match=r"resume: the rows of .*answers\.csv came from other weights or settings - "
                                                r"method \('likelihood' then, 'generation' now\)"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, method="generation", resume=True))
    assert not output.exists() and (tmp_path / ".answers.csv.partial").is_file()  # nothing lost by the refusal
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert any(f"{output}: the 4 complete rows of .answers.csv.partial, which a run that did not end left (killed, out of memory or disk space), are "
               "kept (27 bytes of a row it was writing are left out)" in line for line in infos), infos
    assert output.read_text() == whole  # the same rows as the run that was not killed
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["rows"] == 12 and summary["resumed_after"] == 4 and "interrupted" not in summary  # batches 0 and 1
    assert not list(tmp_path.glob(".answers.csv*"))
    # killed inside a quoted cell of two lines (an answer, a hint): the line break there ends no row
    from mmcaption.data.resume import recover_killed

    rows = [{"image": "a.png", "question": "Describe it."}, {"image": "b.png", "question": "Describe it."}]
    text = tmp_path / "text.csv"
    text.with_name(".text.csv.partial").write_text('image,question,prediction\na.png,Describe it.,"Red.\nOn the left."\n'
                                                   'b.png,Describe it.,"Blue.\n')
    assert recover_killed(text, rows, None).startswith(f"{text}: the 1 complete rows of .text.csv.partial")
    assert [row["prediction"] for row in csv.DictReader(text.open(newline=""))] == ["Red.\nOn the left."]


def test_a_resume_that_was_killed_keeps_the_rows_it_added(backbones, trained_checkpoint, image_folder, tmp_path, monkeypatch):
    # Ctrl-C, then a resume killed outright (out of memory): the next resume went on from the Ctrl-C's rows and wrote
    # over the killed resume's partial file without a word, its rows predicted again
    infos = []
    monkeypatch.setattr("mmcaption.data.predict.rank_zero_info", infos.append)
    module, questions, output, _, whole = predicted_with_a_kill_at_batch_2(backbones, trained_checkpoint, tmp_path)
    lines = whole.splitlines(keepends=True)  # the header and 12 rows
    summary = output.with_name("answers.csv.summary.json")
    made_by = json.loads(summary.read_text())["made_by"]
    output.write_text("".join(lines[:5]))  # stopped by Ctrl-C after 4 rows
    summary.write_text(json.dumps({"rows": 4, "interrupted": "SIGINT", "made_by": made_by}))
    output.with_name(".answers.csv.partial").write_text("".join(lines[:9]) + "images/img0.png,What col")  # its resume,
    output.with_name(".answers.csv.partial.made_by.json").write_text(json.dumps(made_by))  # killed after 4 rows more
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert output.read_text() == whole
    assert any("the 8 complete rows of .answers.csv.partial, which a run that did not end left (killed, out of memory or disk space), are kept (4 "
               "more than the output held: that run was a resume)" in line for line in infos), infos
    assert json.loads(summary.read_text())["resumed_after"] == 8 and not list(tmp_path.glob(".answers.csv*"))
    # a killed --data.overwrite run's partial file is no resume of the output: its rows are kept aside, not taken for the
    # output's (a resume was refused for its other weights) nor written over
    output.write_text("".join(lines[:5]))
    summary.write_text(json.dumps({"rows": 4, "interrupted": "SIGINT", "made_by": made_by}))
    output.with_name(".answers.csv.partial").write_text(lines[0] + "".join(lines[5:8]))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert output.read_text() == whole and (tmp_path / "answers.killed.csv").read_text() == lines[0] + "".join(lines[5:8])
    assert any(".answers.csv.partial, which a run that did not end left, does not go on from answers.csv (a --data.overwrite run's?): "
               "its 3 complete rows are kept as answers.killed.csv" in line for line in infos), infos


def test_the_same_predict_run_again_after_a_kill_keeps_the_killed_runs_rows_and_a_requeued_slurm_job_goes_on(
    backbones, trained_checkpoint, image_folder, tmp_path, monkeypatch, capsys
):
    # run again as it was (a notebook cell, the shell's history), the command wrote its first batch over the rows a
    # killed run left: they were gone without a word; a SLURM job requeued after a lost node did the same
    infos = []
    monkeypatch.setattr("mmcaption.data.predict.rank_zero_info", infos.append)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    module, questions, output, killed, whole = predicted_with_a_kill_at_batch_2(backbones, trained_checkpoint, tmp_path)
    killed.left()
    left = (tmp_path / ".answers.csv.partial").read_bytes()
    with pytest.raises(OutputExistsError, match=r"\.answers\.csv\.partial holds the rows a run wrote before it ended without "
                                                r"finishing its output \(killed: SIGKILL, out of memory, "
                                                r"a lost node; or a full disk\): go on from them with --data\.resume true"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    assert (tmp_path / ".answers.csv.partial").read_bytes() == left and not output.exists()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # another job's leftovers are not this job's to go on from
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(OutputExistsError, match="holds the rows a run wrote before it ended without finishing its output"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the job that was killed, run again by SLURM: it goes on by itself
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    assert output.read_text() == whole
    assert any("SLURM requeued this job (restart 1): it goes on from the rows it left in" in line for line in infos), infos
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["resumed_after"] == 4 and summary["made_by"]["slurm_job"] == "4242"
    # requeued once more after it had finished (a later step of the job script failed on a lost node): a note, and the
    # command succeeds so that the script goes on (it was refused, exit 2: "complete: nothing to go on with")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    capsys.readouterr()
    said = output.with_name("answers.csv.summary.json").read_text()
    with pytest.raises(SystemExit) as exit_info:  # as mmcaption predict ends
        user_errors_exit(lambda: predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output)))()
    assert exit_info.value.code == 0 and output.read_text() == whole
    assert output.with_name("answers.csv.summary.json").read_text() == said and not list(tmp_path.glob(".answers.csv*"))
    # ... but not when its input has more rows since (said, exit 2), nor when its rows were all errors
    longer = write_csv(tmp_path / "longer.csv", [*csv.DictReader(questions.open()), *QUESTIONS])
    with pytest.raises(OutputExistsError, match=r"complete \(12 rows.*this input has 16 rows now"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, longer, output))
    summary = json.loads(said)
    output.with_name("answers.csv.summary.json").write_text(json.dumps({**summary, "errors": summary["rows"]}))
    with pytest.raises(OutputExistsError, match=r"complete \(12 rows"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    assert capsys.readouterr().err.strip() == (f"note: SLURM requeued this job (restart 2) after this predict had finished: "
                                               f"{output} holds its 12 rows, kept as they are")
    # --data.overwrite true starts afresh, as asked, and keeps the killed run's rows aside: the same command run again
    # after a kill of an --data.overwrite run (which the advice above never reached) wrote over them without a word
    killed.left(torn=b"images/img0.png,What colour")
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, overwrite=True))
    assert "resumed_after" not in json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert (tmp_path / "answers.killed.csv").read_bytes() == left  # its complete rows, the row the kill cut left out
    assert any(f".answers.csv.partial, left by a run that did not end (killed, out of memory or disk space), held complete "
               f"rows: kept as {tmp_path / 'answers.killed.csv'}; this run starts answers.csv afresh, as --data.overwrite asks"
               in line for line in infos), infos
    assert not list(tmp_path.glob(".answers.csv.partial*"))
    # killed once the new rows are in place but before their summary is: the earlier run's summary (another checkpoint,
    # other counts) stayed beside them, and resume called them complete
    import mmcaption.predictions

    def killed_before_the_summary(path, text):
        raise RuntimeError("killed here")

    with monkeypatch.context() as patch:
        patch.setattr(mmcaption.predictions, "write_whole", killed_before_the_summary)
        with pytest.raises(RuntimeError, match="killed here"):
            predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, overwrite=True))
    assert output.is_file() and not output.with_name("answers.csv.summary.json").exists()
    with pytest.raises(OutputExistsError, match=r"has no answers\.csv\.summary\.json beside it, so it is not the output of an "
                                                r"interrupted predict"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, overwrite=True))
    # killed before its first row (out of memory at once): nothing to keep, and the same command runs again as it was
    other = tmp_path / "other.csv"
    other.with_name(".other.csv.partial").write_text("img_path,Question,A,B,C,D,answer,prediction\n")
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, other))
    assert other.read_text() == whole and not other.with_name(".other.csv.partial").exists()


def test_a_predict_asked_fewer_batches_than_its_input_says_so_and_resume_completes_it(
    backbones, trained_checkpoint, image_folder, tmp_path
):
    # --trainer.limit_predict_batches 1 (or fast_dev_run) wrote 2 of 8 rows with a summary of a whole run: "accuracy
    # 1.000 (2/2)", no word of the 6 never asked, and resume refused the output as complete
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 2)  # 8 questions, 4 batches of 2
    output = tmp_path / "answers.csv"
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
            limit_predict_batches=1).predict(module, datamodule=choice_data(backbones, questions, output))
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["rows"] == 2 and summary["interrupted"] == "trainer.limit_predict_batches 1: 2 of 8 rows asked"
    earlier = {"version": "0.0.9", "commit": "5d4316f"}  # begun by an earlier release: its rows are said to be its
    summary["made_by"]["software"] = earlier
    output.with_name("answers.csv.summary.json").write_text(json.dumps(summary))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["rows"] == 8 and summary["resumed_after"] == 2 and "interrupted" not in summary
    assert summary["made_by"]["first_rows_software"] == {"rows": 2, **earlier} != summary["made_by"]["software"]
    assert len(output.read_text().splitlines()) == 9


def test_an_interrupted_csv_is_read_back_with_its_results_as_they_were_written(tmp_path):
    from mmcaption.data.resume import interrupted_rows

    output = tmp_path / "answers.csv"
    output.write_text("question_id,image,question,prediction,correct,vqa_accuracy,error\n"
                      "q1,a.png,What?,red,True,,\n17,b.png,Which?,,False,0.3,image not found: b.png\n"
                      "007,c.png,Why?,,False,,\n")  # an id as a spreadsheet keeps it; a generated answer that is empty
    output.with_name("answers.csv.summary.json").write_text(json.dumps({"rows": 3, "interrupted": "SIGINT"}))
    asked = [{"question_id": "q1", "image": "a.png", "question": "What?"}, {"question_id": "17", "image": "b.png", "question": "Which?"},
             {"question_id": "007", "image": "c.png", "question": "Why?"}, {"question_id": "8", "image": "d.png", "question": "How?"}]
    rows, to_go = interrupted_rows(output, asked)
    assert to_go == [3]
    assert [(r["question_id"], r["prediction"], r["correct"], r["vqa_accuracy"], r["error"]) for r in rows] == [
        ("q1", "red", True, None, None), (17, None, False, 0.3, "image not found: b.png"), ("007", "", False, None, None)]
    with pytest.raises(OutputExistsError, match="holds all 3 rows of this input: the run stopped after its last row"):
        interrupted_rows(output, asked[:3])  # nothing to ask: Lightning would skip the run


def test_an_interrupted_output_edited_by_hand_is_refused_saying_what_was_done_to_it(tmp_path):
    from mmcaption.data.resume import interrupted_rows

    output = tmp_path / "answers.jsonl"
    asked = [{"image": f"{n}.jpg", "question": "What colour?"} for n in range(8)]
    output.write_text("".join(json.dumps({**row, "prediction": "red"}) + "\n" for row in asked[:6]))
    output.with_name("answers.jsonl.summary.json").write_text(json.dumps({"rows": 6, "interrupted": "SIGINT"}))
    # rows 3 to 4 deleted (by hand): "it is the output of another input, or of this one before it changed; replace it
    # with --data.overwrite true", which threw the rows still good away
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:2] + lines[4:]))
    assert interrupted_rows(output, asked)[1] == [2, 3, 6, 7]  # the rows taken out are asked again, after the others
    with pytest.raises(OutputExistsError, match=r"row 3 of .*answers\.jsonl has image '4\.jpg' where this input's row 3 has "
                                                r"'2\.jpg': its row 3 is this input's row 5 \(rows taken out of it, or added to "
                                                r"the input\): keep only its first 2 rows to resume after them, or replace it with"):
        interrupted_rows(output, asked[:5] + asked[6:])  # and one of them is this input's no more
    # a photo done, then deleted from the folder (a blurry one): "the output of another input", and only overwriting
    output.write_text("".join(lines))
    with pytest.raises(OutputExistsError, match=r"row 4 of .*answers\.jsonl has image '3\.jpg' where this input's row 4 has "
                                                r"'4\.jpg': that image is in this input no more \(taken out of it since\?\): "
                                                r"delete its row 4 from .*answers\.jsonl to resume, the others kept, or replace"):
        interrupted_rows(output, asked[:3] + asked[4:])
    with pytest.raises(OutputExistsError, match=r"row 1 of .*has image '0\.jpg' where this input's row 1 has '1\.jpg': that "
                                                r"image is in this input no more"):
        interrupted_rows(output, asked[1:])  # the first photo's
    output.write_text("".join(lines[:3] + lines[4:]))  # as it says: resumed, the other 5 rows kept
    assert [row["image"] for row in interrupted_rows(output, asked[:3] + asked[4:])[0]] == ["0.jpg", "1.jpg", "2.jpg", "4.jpg", "5.jpg"]
    # its last line cut short (a copy cut off, an edit): a JSONDecodeError traceback through the resume
    output.write_text("".join(lines[:3]) + lines[3][:25])
    with pytest.raises(OutputExistsError, match=r"resume: .*answers\.jsonl cannot be read back: line 4 is not a JSON row "
                                                r"\(Unterminated string starting at column 20\); mend that line"):
        interrupted_rows(output, asked)


def caption_folder(module, backbones, images, output, root, callbacks=(), **settings) -> None:
    """``mmcaption predict``'s captions of ``images`` into ``output``, a batch an image (``settings``: the data module's)."""
    from mmcaption.data import CaptionPredictDataModule

    data = CaptionPredictDataModule(images=str(images), output=str(output), tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=1, num_workers=0, **settings)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
            callbacks=list(callbacks)).predict(module, datamodule=data)


def test_captions_resumed_after_a_stop_are_those_of_one_run(backbones, trained_checkpoint, image_folder, tmp_path):

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)

    def captions(output, callbacks=(), **settings):
        caption_folder(module, backbones, image_folder, output, tmp_path, callbacks, **settings)

    output = tmp_path / "captions.jsonl"
    with pytest.raises(SystemExit):
        captions(output, [InterruptAtBatch(1)])
    assert len(output.read_text().splitlines()) == 1
    captions(output, resume=True)
    captions(tmp_path / "whole.jsonl")
    assert output.read_text() == (tmp_path / "whole.jsonl").read_text()
    fresh = tmp_path / "fresh.jsonl"  # resume with nothing to go on from: from the first row, as a requeued job wants
    captions(fresh, resume=True)
    assert fresh.read_text() == output.read_text()


def test_a_photo_added_among_those_captioned_before_a_resume_is_captioned_with_the_rest(backbones, trained_checkpoint,
                                                                                       image_folder, tmp_path, capsys):
    # a camera's sync (or another phone's photos) adds a photo that sorts among those done: "keep only its first 1 rows
    # to resume after them", which threw away the rows after it
    from mmcaption.demo.synthetic import Scene, draw_scene

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    draw_scene(Scene("yellow", "circle", "bottom"), 64, random.Random(1)).save(image_folder / "img3.png")

    def captions(output, callbacks=(), **settings):
        caption_folder(module, backbones, image_folder, output, tmp_path, callbacks, **settings)

    output = tmp_path / "captions.jsonl"
    with pytest.raises(SystemExit):
        captions(output, [InterruptAtBatch(2)])
    first = output.read_text().splitlines(keepends=True)
    assert [Path(json.loads(line)["image"]).name for line in first] == ["img0.png", "img1.png"]
    draw_scene(Scene("blue", "triangle", "left"), 64, random.Random(2)).save(image_folder / "img0a.png")  # sorts second
    capsys.readouterr()
    with pytest.raises(SystemExit):  # stopped again, after the added photo's
        captions(output, [InterruptAtBatch(1)], resume=True)
    assert f"the 2 rows of {output} are this input's but not its first 2 (images added among those done since, or rows taken out of " \
           f"it): the 3 others (first: row 2, {image_folder / 'img0a.png'}) are predicted after them" in capsys.readouterr().err
    captions(output, resume=True)
    captions(tmp_path / "whole.jsonl")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    whole = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines()]
    assert output.read_text().splitlines(keepends=True)[:2] == first  # the rows done, as they were
    assert [Path(row["image"]).name for row in rows] == ["img0.png", "img1.png", "img0a.png", "img2.png", "img3.png"]
    assert sorted(rows, key=lambda row: row["image"]) == sorted(whole, key=lambda row: row["image"])  # each once, as one run
    assert json.loads(output.with_name("captions.jsonl.summary.json").read_text())["rows"] == 5
    # such a resume killed outright: its partial file holds the output's rows and the added photo's, and is gone on from
    from mmcaption.data.resume import recover_killed

    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(first))
    killed.with_name("killed.jsonl.summary.json").write_text(json.dumps({"rows": 2, "interrupted": "SIGINT"}))
    killed.with_name(".killed.jsonl.partial").write_text("".join(first) + json.dumps(rows[2]) + "\n")
    asked = [{"image": str(image_folder / name)} for name in ("img0.png", "img0a.png", "img1.png", "img2.png", "img3.png")]
    capsys.readouterr()
    assert "the 3 complete rows of .killed.jsonl.partial" in recover_killed(killed, asked, None)  # was refused, as above
    assert killed.read_text() == "".join(output.read_text().splitlines(keepends=True)[:3])
    assert "note: resume" not in capsys.readouterr().err  # said once, by the resume that goes on (not of the hidden file)
    # the shares of a run on 2 processes (rows 0, 2, ... and 1, 3, ... of the folder then), a photo added among them since
    from mmcaption.data.resume import interrupted_rows, put_shares_together

    shared, before = tmp_path / "shared.jsonl", [row for row in whole if not row["image"].endswith("img0a.png")]

    def shares(rows):
        for rank in (0, 1):
            share = shared.with_name(f"shared.rank{rank}.jsonl")
            share.write_text("".join(json.dumps(row) + "\n" for row in rows[rank::2]))
            share.with_name(f"{share.name}.summary.json").write_text(json.dumps(
                {"rows": len(rows[rank::2]), "interrupted": "SIGTERM", "share": {"rank": rank, "processes": 2}, "made_by": {}}))

    shares(before[:3])  # the folder as it was then: its first 3 rows
    said = put_shares_together(shared, [row for row in asked if not row["image"].endswith("img0a.png")], None)
    assert said == f"the shares of 2 processes put together in {shared}: 3 rows in the input's order"
    shared.unlink()
    shares(before)
    said = put_shares_together(shared, asked, None)  # not "in the input's order": the added photo is to go after them
    assert said == f"the shares of 2 processes put together in {shared}: 4 rows of this input (the resume's note says which rows are to go)"
    assert interrupted_rows(shared, asked)[1] == [1]  # was refused: "keep only its first 1 rows", of no file to edit


def test_a_predict_resumed_from_another_folder_names_its_images_as_the_first_run_did(backbones, trained_checkpoint, image_folder,
                                                                                   tmp_path, monkeypatch, capsys):
    # stopped in run/ with --data.images ../images, resumed from the folder above (images, or its absolute path): the
    # same files, refused as "the output of another input" with advice (--data.overwrite) that threw the rows done away;
    # killed outright, the refusal also left a hidden .recovered copy of the rows behind

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    run = tmp_path / "run"
    run.mkdir()

    def captions(images, output, callbacks=(), **settings):
        caption_folder(module, backbones, images, output, tmp_path, callbacks, **settings)

    monkeypatch.chdir(run)
    captions("../images", "whole.jsonl")
    with pytest.raises(SystemExit):
        captions("../images", "out/captions.jsonl", [InterruptAtBatch(1)])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    captions(image_folder, "run/out/captions.jsonl", resume=True)  # the images' folder by its absolute path
    assert (run / "out" / "captions.jsonl").read_text() == (run / "whole.jsonl").read_text()  # named as one run names them
    from mmcaption.data.resume import named_as_written
    from mmcaption.data.resume_rows import check_first_rows

    rows = [{"image": str(image_folder / "img0.png")}]  # the project moved since: its recorded working folder is gone
    assert named_as_written([{"image": "../images/img0.png"}], rows, run / "out" / "captions.jsonl", str(tmp_path / "gone" / "run"))
    assert rows == [{"image": "../images/img0.png"}]
    assert ("note: resume: this run names the images from another folder than the run that wrote captions.jsonl (its row 1: "
            f"../images/img0.png; this input's: {image_folder / 'img0.png'}): the same files, and the rows to come name them "
            "as its rows do") in capsys.readouterr().err
    # killed outright after its first row, the output's name spelled otherwise too
    output = run / "out" / "killed.jsonl"
    killed = KilledAtBatch(1, output, tmp_path / "at-kill")
    monkeypatch.chdir(run)
    captions("../images", "out/killed.jsonl", [killed])
    killed.left()
    monkeypatch.chdir(tmp_path)
    (image_folder.parent / "others").mkdir()
    shutil.copy(image_folder / "img1.png", image_folder.parent / "others" / "img0.png")  # another photo of the same name
    with pytest.raises(OutputExistsError, match=r"row 1 of .*\.killed\.jsonl\.partial has image '\.\./images/img0\.png' where "
                                                r"this input's row 1 has 'others/img0\.png'"):
        captions("others", output, resume=True)
    assert not list(output.parent.glob("*recovered*")) and output.with_name(".killed.jsonl.partial").is_file()  # as it was
    # the images' folder renamed since: was told to overwrite the rows done, as for another input
    image_folder.rename(tmp_path / "photos")
    with pytest.raises(OutputExistsError, match=r"has image '\.\./images/img0\.png' where this input's row 1 has 'photos/img0\.png': the "
                                                r"images moved, or renamed their folder\? A link from the folder its rows name to "
                                                r"where they are now \(ln -s\) resumes it, its rows kept; or replace it"):
        captions("photos", output, resume=True)
    (tmp_path / "photos").rename(image_folder)
    # the old folder there, seen from the first run's working folder: not said to have moved
    with pytest.raises(OutputExistsError, match="it is the output of another input"):
        check_first_rows([{"image": "images/img0.png"}], [{"image": "others/img0.png"}], tmp_path / "elsewhere" / "o.csv",
                         folder=str(tmp_path))
    captions("images", output, resume=True)
    assert output.read_text() == (run / "whole.jsonl").read_text()


# -- export never writes into a user's folder -------------------------------------------------------------


def test_export_refuses_a_folder_with_files_and_overwrite_leaves_nothing_stale(trained_checkpoint, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    with monkeypatch.context() as patch:
        no_backbones(patch)
        message = user_error(capsys, export_main, [str(trained_checkpoint), str(folder)])
    # not an export: said so at once (it said to give --overwrite, which then refused)
    assert f"export folder {folder} holds README.md and no mmcaption.json: it is not an earlier export folder's" in message
    assert (folder / "README.md").read_text() == "my notes\n" and len(list(folder.iterdir())) == 1
    # a new Hub repository's clone (its .git and .gitattributes alone) is exported into, those kept (it was refused,
    # with --overwrite too)
    clone = tmp_path / "hub-clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    export_main([str(trained_checkpoint), str(clone)])
    assert (clone / "mmcaption.json").is_file() and (clone / ".git").is_dir() and (clone / ".gitattributes").is_file()
    shutil.rmtree(clone)
    # an earlier export without --overwrite: that flag named
    export_main([str(trained_checkpoint), str(clone)])
    with monkeypatch.context() as patch:
        no_backbones(patch)
        message = user_error(capsys, export_main, [str(trained_checkpoint), str(clone)])
    assert f"export folder {clone} exists and is not empty; choose another folder, or replace it with --overwrite" in message
    shutil.rmtree(clone)
    # --overwrite replaces an earlier export only: a mistyped parent folder (exported/ for exported/demo) lost every
    # export and file in it, with "exported to exported"
    with monkeypatch.context() as patch:
        no_backbones(patch)
        message = user_error(capsys, export_main, [str(trained_checkpoint), str(folder), "--overwrite"])
    assert f"export folder {folder} holds README.md and no mmcaption.json: it is not an earlier export folder's" in message
    assert (folder / "README.md").read_text() == "my notes\n" and len(list(folder.iterdir())) == 1

    (folder / "README.md").unlink()
    export_main([str(trained_checkpoint), str(folder), "--merge"])
    export_main([str(trained_checkpoint), str(folder), "--merge", "--overwrite"])  # an export over an export
    assert (folder / "language_model").is_dir()
    # a Hub clone of the export: its .git and what was added beside the model are not the export's to replace
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "examples").mkdir()
    (folder / "tokenizer" / "my_notes.txt").write_text("mine\n")  # inside a folder the export writes: went with it, unsaid
    (folder / "tokenizer" / "linked").symlink_to("../examples", target_is_directory=True)  # and a folder linked in there
    capsys.readouterr()
    export_main([str(trained_checkpoint), str(folder), "--overwrite"])  # a plain export over a merged one
    assert not (folder / "language_model").exists()  # nothing of the old export is left
    assert not json.loads((folder / "mmcaption.json").read_text())["merged"]
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n" and (folder / "examples").is_dir()  # were deleted
    assert (folder / "tokenizer" / "my_notes.txt").read_text() == "mine\n"
    assert (folder / "tokenizer" / "linked").is_symlink()
    assert (f"note: kept in {folder} what the export does not write: .git, .gitattributes, examples, tokenizer/linked, "
            "tokenizer/my_notes.txt" in capsys.readouterr().err)
    export_main([str(trained_checkpoint), str(folder), "--overwrite"])  # and again: still the user's, not the export's
    assert (folder / "tokenizer" / "my_notes.txt").read_text() == "mine\n"
    assert "tokenizer/my_notes.txt" in capsys.readouterr().err
    (folder / "tokenizer" / "my_notes.txt").unlink()
    (folder / "tokenizer" / "linked").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no staging folder left beside it

    # killed (SIGKILL, a power cut) between moving the export aside and putting the new one in its place: the earlier
    # export hidden beside it, the user's files in the new one's staging folder. The next export went on without
    # them, saying nothing, and both hidden folders stayed
    old, staging = tmp_path / ".shared.old-x1", tmp_path / ".shared.partial-y2"
    old.mkdir()
    os.replace(folder, old / folder.name)
    shutil.copytree(old / folder.name, staging, ignore=shutil.ignore_patterns(".git", ".gitattributes", "examples"))
    for name in (".git", ".gitattributes", "examples"):
        os.replace(old / folder.name / name, staging / name)
    (tmp_path / ".shared.partial-y2.kept.json").write_text(json.dumps([".git", ".gitattributes", "examples"]))
    (tmp_path / ".shared.partial-z3").mkdir()  # and a staging folder of an export killed while it wrote
    capsys.readouterr()
    export_main([str(trained_checkpoint), str(folder), "--overwrite"])
    said = capsys.readouterr().err
    assert f"note: {folder} put back: an export killed while replacing it had moved it aside" in said
    assert f"note: removed {staging}, left by an export that was killed; .git, .gitattributes, examples moved back" in said
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n" and (folder / "examples").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # nothing hidden left, the lock file neither
    # a record that cannot be read: the staging folder may hold the user's files, so it is kept and said, not removed
    damaged = tmp_path / ".shared.partial-w9"
    (damaged / "notes").mkdir(parents=True)
    (tmp_path / ".shared.partial-w9.kept.json").write_text("")
    export_main([str(trained_checkpoint), str(folder), "--overwrite"])
    assert f"note: kept {damaged}, left by an export that was killed: it may hold files of yours" in capsys.readouterr().err
    assert (damaged / "notes").is_dir()

    empty = tmp_path / "empty"
    empty.mkdir()
    export_checkpoint(trained_checkpoint, empty)  # an empty folder is fine
    assert (empty / "mmcaption.json").is_file()

    # a link to the folder (models/current -> a dated folder): the export replaces what it points to, not the link
    link = tmp_path / "current"
    link.symlink_to(folder)
    export_main([str(trained_checkpoint), str(link), "--merge", "--overwrite"])
    assert link.is_symlink() and link.resolve() == folder.resolve()
    assert json.loads((folder / "mmcaption.json").read_text())["merged"]  # the old model was left behind the new link


def test_a_full_disk_during_an_export_is_said_naming_the_folder(trained_checkpoint, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):  # what safetensors raises: no OSError (a traceback, exit 1)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(MultimodalCausalLM, "save_pretrained", full)
    folder = tmp_path / "exported"
    message = user_error(capsys, export_main, [str(trained_checkpoint), str(folder)])
    assert message.startswith(f"error: the disk is full while writing {folder} (No space left on device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # its staging folder and lock file gone


def test_export_overwrite_keeps_a_model_card_edited_by_hand(trained_checkpoint, tmp_path, capsys):
    # the model card pushed to the Hub, described and given results by hand, then the model exported again with
    # --overwrite: the edited README.md was replaced by the new card without a word
    out = tmp_path / "export"
    export_checkpoint(trained_checkpoint, out)
    card = (out / "README.md").read_text()
    export_checkpoint(trained_checkpoint, out, overwrite=True)  # as written: replaced, nothing kept
    assert not list(out.glob("README.edited*")) and "edited" not in capsys.readouterr().err
    (out / "README.md").write_text(card + "\n## Our results\n\nCIDEr 1.2 on our own photos.\n")
    export_checkpoint(trained_checkpoint, out, overwrite=True)
    assert (out / "README.md").read_text() == card  # the new export's card, the edited one beside it
    assert (out / "README.edited.md").read_text().endswith("CIDEr 1.2 on our own photos.\n")
    assert f"note: {out / 'README.md'} differs from the card that was exported: kept as README.edited.md beside the new " \
           "model card (README.md), to carry your edits over" in capsys.readouterr().err
    # an export of a release that recorded no hash of its card: told by the card its manifest makes
    manifest = json.loads((out / "mmcaption.json").read_text())
    del manifest["card_sha256"]
    (out / "mmcaption.json").write_text(json.dumps(manifest))
    export_checkpoint(trained_checkpoint, out, overwrite=True)
    assert sorted(p.name for p in out.glob("README*")) == ["README.edited.md", "README.md"]  # the copy kept, nothing new
    (out / "README.md").write_text("---\nlicense: mit\n---\n# Our captioner\n")  # edited again: a copy of its own
    export_checkpoint(trained_checkpoint, out, overwrite=True)
    assert (out / "README.edited-2.md").read_text() == "---\nlicense: mit\n---\n# Our captioner\n"
    assert (out / "README.edited.md").read_text().endswith("CIDEr 1.2 on our own photos.\n")
    # a card that is a link (a clone of someone's repository) to a file outside the folder: its target was copied in
    secret = tmp_path / "secret.txt"
    secret.write_text("PRIVATE KEY 123\n")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(secret)
    export_checkpoint(trained_checkpoint, out, overwrite=True)
    assert not any("PRIVATE KEY" in p.read_text() for p in out.rglob("*.md")) and secret.read_text() == "PRIVATE KEY 123\n"
    # its mmcaption.json edited by hand with a stray comma: --overwrite deleted the edited card without a word, and
    # loading it was a JSONDecodeError traceback
    from mmcaption.errors import ConfigError
    from mmcaption.model.card import read_manifest

    (out / "README.md").write_text(card + "\nMy own words.\n")
    manifest_text = (out / "mmcaption.json").read_text()
    (out / "mmcaption.json").write_text(manifest_text.replace("{", "{,", 1))
    for attempt in (lambda: export_checkpoint(trained_checkpoint, out, overwrite=True), lambda: read_manifest(out)):
        with pytest.raises(ConfigError, match=rf"{re.escape(str(out / 'mmcaption.json'))} is not valid JSON at line \d+, column "
                                              r"\d+ \(.*\): mend it \(edited by hand\?\), or export the checkpoint again"):
            attempt()
    assert (out / "README.md").read_text().endswith("My own words.\n")


def test_export_with_overwrite_never_deletes_the_checkpoint_it_reads_nor_replaces_the_working_directory(
    trained_checkpoint, tmp_path, capsys, monkeypatch
):
    runs = tmp_path / "runs"
    (runs / "exp1").mkdir(parents=True)
    checkpoint = shutil.copy(trained_checkpoint, runs / "exp1" / "last.ckpt")
    (runs / "notes.txt").write_text("lr 1e-4 was better\n")
    no_backbones(monkeypatch)
    for folder in (runs / "exp1", runs):  # its own folder, or one above it: --overwrite deleted the checkpoint
        message = user_error(capsys, export_main, [str(checkpoint), str(folder), "--overwrite"])
        assert f"export folder {folder} holds {checkpoint}, which this command reads" in message
    monkeypatch.chdir(runs)  # "." could not be replaced: a traceback, and the export left beside it
    message = user_error(capsys, export_main, [str(checkpoint), ".", "--overwrite"])
    assert "export folder . is the working directory" in message
    message = user_error(capsys, export_main, [str(checkpoint), str(tmp_path), "--overwrite"])
    assert f"export folder {tmp_path} is the working directory or holds it" in message
    assert sorted(p.name for p in runs.iterdir()) == ["exp1", "notes.txt"] and Path(checkpoint).is_file()
    language_model = load_checkpoint_file(checkpoint)["hyper_parameters"]["config"]["language_model"]
    monkeypatch.undo()  # the backbones' folders are known once the checkpoint is read
    above = Path(language_model).parent  # a folder that holds a local backbone: the export would not load afterwards
    message = user_error(capsys, export_main, [str(checkpoint), str(above), "--overwrite"])
    assert f"export folder {above} holds {language_model}, which this command reads" in message
    assert Path(language_model).is_dir()


# -- --ckpt_path: what the user typed wins, structure cannot change --------------------------------------


class KeepCheckpoint(ModelCheckpoint):
    """A project's own ModelCheckpoint, named by its class path in a config."""


class ParseOnly(MMCaptionCLI):
    """The CLI up to its run: parsed, classes built, checks done."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(args) -> ParseOnly:
    return ParseOnly(MultimodalCaptioner, LightningDataModule, subclass_mode_data=True, args=args, auto_configure_optimizers=False)


def test_ckpt_path_keeps_the_settings_given_reports_them_and_refuses_structural_changes(
    backbones, trained_checkpoint, image_folder, coco_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    data = ["--data", "mmcaption.data.CaptionPredictDataModule", "--data.images", str(image_folder), "--trainer.logger", "false"]
    saved = load_checkpoint_file(trained_checkpoint)["hyper_parameters"]
    assert saved["generation"] == {"max_new_tokens": 8}

    capsys.readouterr()
    cli = parse(["predict", "--ckpt_path", str(trained_checkpoint), "--model.generation", '{"max_new_tokens": 2}', *data])
    assert cli.model.generation == {"max_new_tokens": 2}  # given on the command line: kept
    assert cli.model.config.lora_r == 4 and cli.model.config.language_model == str(backbones[0])  # the rest: the checkpoint's
    assert "generation.max_new_tokens 2 (checkpoint: 8)" in capsys.readouterr().err
    # one key of a dict setting typed (the README's form): that key replaces the checkpoint's, its other keys stay (the
    # whole dict had been replaced: a checkpoint trained with beam search captioned greedily, not said), from a config too
    beams = tmp_path / "beams.ckpt"
    content = load_checkpoint_file(trained_checkpoint)
    content["hyper_parameters"]["generation"] = {"max_new_tokens": 8, "num_beams": 2}
    torch.save(content, beams)
    cli = parse(["predict", "--ckpt_path", str(beams), "--model.generation.max_new_tokens", "2", *data])
    assert cli.model.generation == {"max_new_tokens": 2, "num_beams": 2}
    assert "generation.max_new_tokens 2 (checkpoint: 8)" in capsys.readouterr().err
    settings = tmp_path / "sampling.yaml"
    settings.write_text("model:\n  generation:\n    do_sample: true\n    num_beams: 1\n")
    cli = parse(["predict", "--config", str(settings), "--ckpt_path", str(beams), *data])
    assert cli.model.generation == {"max_new_tokens": 8, "num_beams": 1, "do_sample": True}
    assert ("generation.do_sample True (checkpoint: not set); generation.num_beams 1 (checkpoint: 2; your config's, not the "
            "command line's: --model.generation.num_beams 2 keeps it)") in capsys.readouterr().err

    # --ckpt_path last: the same checkpoint, found in the config's checkpoint folder, read the same way (its settings were
    # not read: a setting given was replaced without a word, and the checkpoint's stage not said)
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(trained_checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    for checkpoints in ("lightning.pytorch.callbacks.ModelCheckpoint", f"{__name__}.KeepCheckpoint"):  # a project's own too
        folder = [f"--trainer.callbacks+={checkpoints}", "--trainer.callbacks.dirpath", "checkpoints"]
        cli = parse(["predict", "--ckpt_path", "last", "--model.generation", '{"max_new_tokens": 2}', *folder, *data])
        assert cli.model.generation == {"max_new_tokens": 2} and cli.model.config.lora_r == 4
        assert "generation.max_new_tokens 2 (checkpoint: 8)" in capsys.readouterr().err

    cli = parse(["predict", "--ckpt_path", str(trained_checkpoint), *data])  # nothing given: the checkpoint's, silently
    assert cli.model.generation == {"max_new_tokens": 8}
    # the run's own settings given again (its saved config.yaml): the same, so no note; a tuple is the list YAML gives back
    config = tmp_path / "again.yaml"
    config.write_text(f"model:\n  adam_betas: {list(saved['adam_betas'])}\n  learning_rate: {saved['learning_rate']}\n")
    capsys.readouterr()
    parse(["predict", "--config", str(config), "--ckpt_path", str(trained_checkpoint), *data])
    assert "instead of the checkpoint's" not in capsys.readouterr().err

    # given, though equal to the default (2e-4; the checkpoint was trained at 3e-2): given, so it wins, as in a config
    assert saved["learning_rate"] == 3e-2
    cli = parse(["predict", "--ckpt_path", str(trained_checkpoint), "--model.learning_rate", "2e-4", *data])
    # (a setting only training reads is no change to note in predict, validate or test: it was said as one)
    assert cli.model.learning_rate == 2e-4 and "learning_rate" not in capsys.readouterr().err
    config = tmp_path / "settings.yaml"
    config.write_text("model:\n  learning_rate: 2.0e-4\n")
    assert parse(["predict", "--config", str(config), "--ckpt_path", str(trained_checkpoint), *data]).model.learning_rate == 2e-4

    with pytest.raises(ConfigError, match=r"config\.lora_r: checkpoint 4, given 16"):
        parse(["predict", "--ckpt_path", str(trained_checkpoint), "--model.config.lora_r", "16", *data])
    # the injected layers too, resolved against the language model's config.json: refused only once the model had loaded
    # (minutes of Phi-2), where --model.config.lora_r was refused here
    with pytest.raises(ConfigError, match=re.escape("config.cross_attention_layers: checkpoint [-2, -1], given [-1] (of 4 layers) "
                                                    "(--model.config.cross_attention_layers '[-2, -1]' gives the checkpoint's)")):
        parse(["predict", "--ckpt_path", str(trained_checkpoint), "--model.config.cross_attention_layers", "[-1]", *data])
    assert parse(["predict", "--ckpt_path", str(trained_checkpoint), "--model.config.cross_attention_layers", "[2, 3]",
                  *data]).model.config.cross_attention_layers == [2, 3]  # the same layers, counted from the start

    fit = ["fit", "--ckpt_path", str(trained_checkpoint), "--model.on_nonfinite_loss", "skip", "--model.learning_rate", "0.001",
           "--data", "mmcaption.data.CaptionDataModule", "--data.data_dir", str(coco_root), "--trainer.logger", "false"]
    cli = parse(fit)
    assert cli.model.on_nonfinite_loss == "skip" and cli.model.learning_rate == 0.001
    # resumed with the README's short command, a learning rate set on the first run's command line (0.3) gave way to the
    # config's (0.003), with a note that said "the settings you gave": which the user did not, there
    config.write_text("model:\n  learning_rate: 0.003\n")
    capsys.readouterr()
    cli = parse(["fit", "--config", str(config), *fit[1:]])
    err = capsys.readouterr().err
    assert cli.model.learning_rate == 0.001  # typed on this command line: said as given, no option to keep the checkpoint's
    assert "learning_rate 0.001 (checkpoint: 0.03)" in err and "keeps it" not in err
    cli = parse(["fit", "--config", str(config), "--ckpt_path", str(trained_checkpoint), *fit[7:]])
    assert cli.model.learning_rate == 0.003 and ("learning_rate 0.003 (checkpoint: 0.03; your config's, not the command line's: "
                                                 "--model.learning_rate 0.03 keeps it)") in capsys.readouterr().err
    # a backbone's path of the folder or machine it was trained in, not there now: no option advised to keep it
    from mmcaption.model.config import merged_settings

    saved = {"config.language_model": str(tmp_path / "moved" / "lm"), "config.vision_model": str(backbones[1])}
    given = {"config.language_model": str(backbones[0]), "config.vision_model": str(tmp_path / "vm")}
    _, notes, _ = merged_settings(saved, given, set(given), {}, typed=set())
    assert notes == [f"config.language_model '{backbones[0]}' (checkpoint: '{tmp_path / 'moved' / 'lm'}'; not there now)",
                     f"config.vision_model '{tmp_path / 'vm'}' (checkpoint: '{backbones[1]}'; your config's, not the command "
                     f"line's: --model.config.vision_model {backbones[1]} keeps it)"]


def test_evaluating_with_ckpt_path_last_or_best_and_no_such_checkpoint_is_refused(backbones, coco_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # run from the wrong folder: Lightning warned, and validated the untrained model (exit 0)
    no_backbones(monkeypatch)
    folder = tmp_path / "c"
    config = fit_config(tmp_path, coco_root, backbones, folder)[1:]
    message = user_error(capsys, main, ["validate", *config, "--ckpt_path", "last"])
    assert message == f"error: validate --ckpt_path last: there is no last.ckpt in {folder}, under {tmp_path}. Give the checkpoint's path"
    # fit starts afresh (a requeued job's first run), saying where it looked: Lightning's hint blamed save_last, which the
    # config sets, and a fit run from another folder went on from step 0 beside it
    from mmcaption.checkpoint_folders import keyword_checkpoint
    from mmcaption.console import UNACTIONABLE_WARNINGS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert keyword_checkpoint("last", [folder.relative_to(tmp_path)], "fit") is None
        assert keyword_checkpoint("last", [folder], "fit") is None  # the CLI asks twice: said once (it was said twice)
    assert [str(w.message) for w in caught] == [f"--ckpt_path last: no last*.ckpt in {folder}: this fit starts at step 0"]
    lightnings = '.fit(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will be loaded.'
    assert any(re.match(pattern, lightnings) for pattern in UNACTIONABLE_WARNINGS)  # its hint blamed save_last
    folder.mkdir()
    (folder / "epoch=0-step=8.ckpt").write_bytes(b"")
    message = user_error(capsys, main, ["test", *config, "--ckpt_path", "best"])  # was Lightning's traceback
    assert message.startswith("error: test --ckpt_path best: no last.ckpt records a best checkpoint that is there, in")
    assert message.endswith("; it holds epoch=0-step=8.ckpt. Give the checkpoint's path")
    message = user_error(capsys, main, ["fit", *config, "--ckpt_path", "best"])  # was Lightning's ValueError, exit 1
    assert message.startswith("error: fit --ckpt_path best: no last.ckpt records a best checkpoint that is there, in")
    # the best a run recorded in its last.ckpt (per run: right in a folder two runs share), its name a folder's as
    # Lightning writes {val/CIDEr} into it: it was "only the run that trained knows", listing last.ckpt alone
    best = folder / "epoch=1-step=16-val" / "CIDEr=0.1187.ckpt"
    best.parent.mkdir()
    best.write_bytes(b"")
    torch.save({"callbacks": {"ModelCheckpoint{'monitor': 'val/CIDEr', 'mode': 'max'}": {
        "monitor": "val/CIDEr", "best_model_score": torch.tensor(0.1187), "best_model_path": str(best), "dirpath": str(folder)}}},
        folder / "last-v1.ckpt")
    assert keyword_checkpoint("best", [folder], "test") == best
    assert f"note: --ckpt_path best: {best} (val/CIDEr 0.1187, as last-v1.ckpt recorded it)" in capsys.readouterr().err
    # a copy of the project (cp -a), the original still there and training on: the copy's own best, not the original's
    # (its path as recorded, whose file had changed since: the copy evaluated the original's new weights)
    copy = tmp_path / "copy" / "c"
    shutil.copytree(folder, copy)
    assert keyword_checkpoint("best", [copy], "test") == copy / "epoch=1-step=16-val" / "CIDEr=0.1187.ckpt"
    # the recorded best deleted to make room: said which one last.ckpt names (it was "no last.ckpt records a best")
    (copy / "epoch=1-step=16-val" / "CIDEr=0.1187.ckpt").unlink()
    best.unlink()
    with pytest.raises(ConfigError, match=r"no last\.ckpt records a best checkpoint that is there \(last-v1\.ckpt records "
                                          r"CIDEr=0\.1187\.ckpt, which is not there\), in "):
        keyword_checkpoint("best", [copy], "test")
    (folder / "last-v1.ckpt").unlink()
    # a quick check with fast_dev_run (which leaves the config's ModelCheckpoint out) still finds the folder's last.ckpt:
    # it was "there is no last.ckpt" in validate, and a fit that silently started afresh
    (folder / "last.ckpt").write_bytes(b"not a checkpoint")
    monkeypatch.undo()  # the backbones load: the checkpoint is read after them
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "fit"):
        message = user_error(capsys, main, [command, *config, "--ckpt_path", "last", "--trainer.fast_dev_run", "true"])
        assert str(folder / "last.ckpt") in message and "no last.ckpt" not in message, message


def test_ckpt_path_last_among_several_runs_is_the_newest_save_as_recorded_and_names_the_others(
    trained_checkpoint, tmp_path, monkeypatch, capsys
):
    # a run to step 60, then the same command again (a new run), stopped at its first step as the note asked: its
    # last-v1.ckpt became `last` without a word, and predict and a resumed fit loaded it; `cp` (file times the copy's)
    # reordered the two; `best` was refused, the newest recording none, though last.ckpt recorded a best that is there
    from mmcaption.checkpoint_folders import earlier_checkpoints_note, keyword_checkpoint

    assert isinstance(torch.load(trained_checkpoint, map_location="cpu", weights_only=False)["saved_at"], float)  # fit records it
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    best = folder / "epoch=5-step=60.ckpt"
    torch.save({"global_step": 60}, best)
    torch.save({"global_step": 60, "saved_at": 2_000_000_000.0, "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {
        "monitor": "val/loss", "best_model_score": torch.tensor(0.5), "best_model_path": str(best), "dirpath": str(folder)}}},
        folder / "last.ckpt")
    torch.save({"global_step": 1, "saved_at": 2_000_000_100.0, "callbacks": {}}, folder / "last-v1.ckpt")
    os.utime(folder / "last-v1.ckpt", (1_000_000, 1_000_000))  # copied: the file times say last.ckpt is the newer
    assert keyword_checkpoint("last", [folder], "predict") == folder / "last-v1.ckpt"
    saved = {name: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) for name, at in
             (("last.ckpt", 2_000_000_000), ("last-v1.ckpt", 2_000_000_100))}
    assert capsys.readouterr().err == (
        f"note: --ckpt_path last: {folder / 'last-v1.ckpt'} (step 1, saved {saved['last-v1.ckpt']}), the newest of 2 runs' "
        f"last checkpoints; the others: last.ckpt (step 60, saved {saved['last.ckpt']}) - last.ckpt is further on. To "
        "continue another, give its path as --ckpt_path\n")
    monkeypatch.chdir(tmp_path)
    keyword_checkpoint("last", [Path("checkpoints")], "fit")  # the CLI resolves it twice, the folder spelled two ways: said once
    assert capsys.readouterr().err == ""
    assert keyword_checkpoint("best", [folder], "test") == best  # from the run before, the newest recording no best
    err = capsys.readouterr().err
    assert f"note: --ckpt_path best: {best} (val/loss 0.5000, as last.ckpt recorded it)" in err
    assert f"note: --ckpt_path best: {folder / 'last-v1.ckpt'}, the newest run's last checkpoint (step 1), records no best " \
           f"checkpoint; {best} is last.ckpt's run's, of step 60" in err
    earlier_checkpoints_note(folder)  # a third run is told the newest by what the files record, not their times
    assert f"To continue the newest run instead, stop and add --ckpt_path {folder / 'last-v1.ckpt'};" in capsys.readouterr().err
    # checkpoints saved before save times were recorded: by their files' times, as before
    torch.save({"global_step": 1}, folder / "last-v1.ckpt")
    os.utime(folder / "last-v1.ckpt", (1_000_000, 1_000_000))
    torch.save({"global_step": 60}, folder / "last.ckpt")
    assert keyword_checkpoint("last", [folder], "validate") == folder / "last.ckpt"


def test_a_checkpoint_link_whose_file_moved_is_named_not_a_traceback(tmp_path, capsys):
    # last.ckpt made a link to a checkpoint kept aside, then the project moved: fit, predict and chat ended in a
    # FileNotFoundError traceback (the newest of the folder's files was looked for by each one's time)
    from mmcaption.checkpoint_folders import earlier_checkpoints_note, keyword_checkpoint
    from mmcaption.errors import ConfigError
    from mmcaption.inference import held_checkpoint

    folder, gone = tmp_path / "checkpoints", tmp_path / "moved" / "run1.ckpt"
    folder.mkdir()
    torch.save({"global_step": 3}, folder / "epoch=0-step=3.ckpt")
    (folder / "last.ckpt").symlink_to(gone)
    for keyword in ("last", "best"):
        with pytest.raises(ConfigError) as refused:
            keyword_checkpoint(keyword, [folder], "predict")
        assert str(refused.value) == (f"predict --ckpt_path {keyword}: {folder / 'last.ckpt'} is a link to {gone}, which is "
                                      "not there (moved or deleted?). Point the link at the checkpoint, remove it, or give "
                                      "the checkpoint's path")
    # a new fit into that folder: said, and the earlier run's checkpoint that is there named to continue from
    earlier_checkpoints_note(folder)
    err = capsys.readouterr().err
    assert f"note: {folder / 'last.ckpt'} is a link to {gone}, which is not there (moved or deleted?); a checkpoint this " \
           "run saves under its name replaces the link" in err
    assert f"to continue that run instead, stop and add --ckpt_path {folder / 'epoch=0-step=3.ckpt'}" in err
    assert held_checkpoint(folder) == f"; it holds checkpoints of fit: --checkpoint {folder / 'epoch=0-step=3.ckpt'}"


def test_answering_questions_with_a_caption_stage_checkpoint_is_noted(trained_checkpoint, image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it answers (at 0.5 where the instruct stage's got 1.0 in a user's try) and went unnoticed
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    caption_stage = tmp_path / "caption.ckpt"
    torch.save({**checkpoint, "training_data": {"stage": "caption"}}, caption_stage)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS)
    capsys.readouterr()
    parse(predict_args(caption_stage, questions, tmp_path / "answers.csv", "--model.init_from", "elsewhere.ckpt"))
    err = capsys.readouterr().err
    assert (f"note: {caption_stage} is a checkpoint of the caption stage; MultipleChoiceDataModule's questions are what the "
            "instruct stage teaches to answer") in err
    # with --ckpt_path, init_from's weights are replaced: said as not read, not listed among the settings used
    assert f"note: --model.init_from elsewhere.ckpt is not read: the weights are --ckpt_path {caption_stage}'s" in err
    assert not any("using the settings you gave" in line and "init_from" in line for line in err.splitlines()), err
    parse(["predict", "--ckpt_path", str(caption_stage), "--data", "mmcaption.data.CaptionPredictDataModule",
           "--data.images", str(image_folder), "--trainer.logger", "false"])
    assert "note" not in capsys.readouterr().err  # captions are the caption stage's


def test_a_checkpoint_made_with_relative_backbone_paths_works_from_any_folder(backbones, coco_root, tmp_path, monkeypatch):
    language_dir, vision_dir = backbones
    monkeypatch.chdir(language_dir.parent)
    module = make_captioner((Path(language_dir.name), Path(vision_dir.name)))
    assert module.hparams["config"]["language_model"] == str(language_dir.resolve())
    # what Lightning logs (hparams.yaml, TensorBoard's HPARAMS) holds the model's config: a LoRA-rank ablation's runs
    # could not be told apart there
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path / "logs", name="ablation")
    logger.log_hyperparams(module.hparams_initial)
    logger.save()
    logged = yaml.full_load((Path(logger.log_dir) / "hparams.yaml").read_text())  # as Lightning reads it
    assert logged["config"]["lora_r"] == module.config.lora_r and logged["config"]["language_model"] == str(language_dir.resolve())
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=language_dir.name,
                           image_processor=vision_dir.name, batch_size=4, num_workers=0)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "relative.ckpt")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = export_checkpoint(tmp_path / "relative.ckpt", "exported")
    assert (elsewhere / "exported" / "mmcaption.json").is_file() and out == Path("exported")


# -- resuming: the same stage, on the same data ------------------------------------------------------------


def fit_trainer(folder: Path, steps: int) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=folder,
                   callbacks=[ModelCheckpoint(dirpath=folder / "checkpoints", save_last=True, save_top_k=0), ResumableStop()])


def test_a_max_steps_stop_on_a_validation_step_keeps_that_validations_checkpoint_and_the_epoch_open(backbones, coco_root, tmp_path):
    language_dir, vision_dir = backbones
    folder = tmp_path / "checkpoints"
    every = ModelCheckpoint(dirpath=folder, monitor="val/loss", save_top_k=-1, save_last=True, filename="{step}")
    trainer = Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                      callbacks=[every, ResumableStop()])
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), batch_size=4, num_workers=0)
    trainer.fit(make_captioner(backbones), datamodule=data)
    assert trainer.num_training_batches > 4  # the run stops mid-epoch
    # the step-4 validation's checkpoint is written (the mid-epoch save had marked the step saved, so it was skipped)
    assert sorted(p.name for p in folder.glob("step=*.ckpt")) == ["step=2.ckpt", "step=4.ckpt"]
    last = load_checkpoint_file(folder / "last.ckpt")
    assert last["global_step"] == 4 and last["epoch"] == 0  # and last.ckpt holds the epoch open, to train longer from

    # validation once an epoch: the end-of-training save wrote last.ckpt with the epoch closed, and a longer run
    # skipped the rest of the epoch
    folder = tmp_path / "epochly"
    trainer = Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=folder, monitor="val/loss", save_last=True), ResumableStop()])
    trainer.fit(make_captioner(backbones), datamodule=data)
    last = load_checkpoint_file(folder / "last.ckpt")
    assert last["global_step"] == 3 and last["epoch"] == 0


class SignalInLastValidation(Callback):
    """Ctrl-C or ``docker stop`` while the run's last validation generates its captions, after its last step."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.global_step == trainer.max_steps:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_in_the_last_validation_stops_the_command_instead_of_being_dropped(backbones, coco_root, tmp_path):
    # it was dropped: fit ended with exit 0, and mmcaption-pipeline went on to train the whole instruct stage
    language_dir, vision_dir = backbones
    folder = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, val_check_interval=2,
                      callbacks=[ModelCheckpoint(dirpath=folder, monitor="val/loss", save_last=True), ResumableStop(),
                                 SignalInLastValidation()])
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), batch_size=4, num_workers=0)
    # and it said "resume by running the same command with --ckpt_path ...", which had nothing left to train
    from mmcaption.errors import signals_stop

    last = re.escape(str(folder / "last.ckpt"))
    with pytest.raises(RunInterrupted, match=rf"^stopped by SIGTERM at step 2: saved {last}; training was done, its last "
                                             r"validation too: nothing is left to resume$"), signals_stop():
        trainer.fit(make_captioner(backbones), datamodule=data)
    assert load_checkpoint_file(folder / "last.ckpt")["global_step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class SignalAtStep(Callback):
    """SIGTERM (``docker stop``, a scheduler) at the end of a given step's batch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class Validations(Callback):
    """The steps a fit validated at."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


@pytest.mark.parametrize("schedule", ["every 2 steps", "once an epoch", "inside a step, held to its end", "the last epoch's end"])
def test_a_stop_at_a_step_a_validation_was_due_runs_that_validation_first_when_resumed(schedule, backbones, coco_root, tmp_path):
    # Ctrl-C or docker stop in the step a validation falls at saved before it, and the resumed run went on to the next
    # step: that validation never ran - a gap in its curve, no checkpoint of its score, early stopping's count short; with
    # one validation an epoch (Lightning's default), a stop in an epoch's last step lost that epoch's
    from mmcaption.errors import signals_stop
    from mmcaption.run_callbacks import NothingLeftToTrain

    language_dir, vision_dir = backbones
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                             image_processor=str(vision_dir), batch_size=4, num_workers=0)
    settings, stop_at, validated = {  # (accumulating 2 batches, every 3 batches is inside steps 2 and 5: at their ends)
        "every 2 steps": ({"val_check_interval": 2}, 2, [2, 4, 6]), "once an epoch": ({"limit_train_batches": 3}, 3, [3, 6]),
        "inside a step, held to its end": ({"val_check_interval": 3, "accumulate_grad_batches": 2}, 2, [2, 3, 5, 6]),
        "the last epoch's end": ({"limit_train_batches": 3, "max_epochs": 2, "max_steps": -1}, 6, [3, 6]),
    }[schedule]

    def fit(folder, *callbacks, ckpt_path=None):
        validations = Validations()
        trainer = Trainer(accelerator="cpu", limit_val_batches=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                          **{"max_steps": 6, **settings}, callbacks=[*callbacks, ResumableStop(), validations,
                                                                     NothingLeftToTrain(), ModelCheckpoint(
                              dirpath=folder, monitor="val/loss", save_top_k=-1, save_last=True, filename="{step}")])
        torch.manual_seed(0)
        module = make_captioner(backbones)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return validations.steps, {name: value for name, value in module.state_dict().items() if "lora" in name}

    straight, straight_weights = fit(tmp_path / "straight")
    assert straight == validated
    with pytest.raises(RunInterrupted, match=f"stopped by SIGTERM at step {stop_at}: saved "), signals_stop():
        fit(tmp_path / "stopped", SignalAtStep(stop_at))
    resumed, weights = fit(tmp_path / "stopped", ckpt_path=tmp_path / "stopped" / "last.ckpt")
    assert resumed[0] == stop_at and [*straight[:straight.index(stop_at)], *resumed] == straight  # its validation, first
    assert (tmp_path / "stopped" / f"step={stop_at}.ckpt").is_file()  # and the checkpoint of its score
    assert weights.keys() == straight_weights.keys()
    assert all(torch.equal(weights[name], straight_weights[name]) for name in weights)  # no step taken twice or skipped
    if schedule == "every 2 steps":  # at the last step: a resume would train and run nothing, so it is not offered
        last = re.escape(str(tmp_path / "last" / "last.ckpt"))
        with pytest.raises(RunInterrupted, match=rf"^stopped by SIGTERM at step 6: saved {last}; training was done, not the "
                                                 rf"validation due at its last step: mmcaption validate with the same "
                                                 rf"settings and --ckpt_path {last} runs it$"), signals_stop():
            fit(tmp_path / "last", SignalAtStep(6))


def test_a_second_run_stopped_at_the_same_step_keeps_the_first_ones_checkpoint(tmp_path, capfd, caplog):
    # without save_last (a user's own ModelCheckpoint, or --trainer.enable_checkpointing false) a stop saves
    # interrupted-step<N>.ckpt: a re-run into the same folder stopped at that step (a signal in a validation acts a step
    # later, so runs meet there) wrote over the first run's, without a word
    from lightning.pytorch.demos.boring_classes import BoringModel

    folder, saved = tmp_path / "checkpoints", []
    caplog.set_level("INFO", logger="lightning.pytorch")
    for seed in (0, 1):
        torch.manual_seed(seed)
        trainer = Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path,
                          callbacks=[ModelCheckpoint(dirpath=folder), ResumableStop(), SignalAtStep(2)])
        with pytest.raises(RunInterrupted) as raised:
            trainer.fit(BoringModel())
        saved.append(folder / f"interrupted-step3{'-v1' if seed else ''}.ckpt")
        assert f"stopped by SIGTERM at step 3: saved {saved[-1]}" in str(raised.value)
    assert sorted(p.name for p in folder.iterdir()) == ["interrupted-step3-v1.ckpt", "interrupted-step3.ckpt"]
    first, second = (load_checkpoint_file(path)["state_dict"]["layer.weight"] for path in saved)
    assert not torch.equal(first, second)  # each run's own weights (seeded apart)
    err = capfd.readouterr().err
    assert "SIGTERM received: saving a checkpoint at the end of this training step (Ctrl-C stops at once" in err
    assert "weights_only" not in caplog.text  # Lightning's "`weights_only` was not set, defaulting to `False`."


def test_checkpoints_of_the_weights_alone_are_said_at_the_start_a_stop_saves_one_that_resumes_and_theirs_are_refused(
        backbones, coco_root, tmp_path, monkeypatch, capsys):
    # ModelCheckpoint's save_weights_only (the optimizer is ~1 GB of Phi-2's 1.5 GB checkpoint): the stop's last.ckpt,
    # which the stop said to resume, held no optimizer, and the resume was Lightning's KeyError, a traceback once the
    # backbones had loaded
    from lightning.pytorch.demos.boring_classes import BoringModel

    folder = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, save_weights_only=True), ResumableStop(),
                                 SignalAtStep(2)])
    with pytest.raises(RunInterrupted, match=rf"stopped by SIGTERM at step 3: saved {folder / 'last.ckpt'}; "
                                             "resume by trainer.fit"):
        trainer.fit(BoringModel())
    assert "optimizer_states" in load_checkpoint_file(folder / "last.ckpt")  # whole, as --ckpt_path last finds it
    assert trainer.checkpoint_callback.save_weights_only  # its own saves as asked
    # save_last "link": its last.ckpt is a link to the last scheduled save (step 2, weights alone): the stop's own, whole
    linked = tmp_path / "linked"
    trainer = Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=linked, save_last="link", save_weights_only=True, every_n_train_steps=2),
                                 ResumableStop(), SignalAtStep(2)])
    with pytest.raises(RunInterrupted, match=rf"stopped by SIGTERM at step 3: saved {linked / 'interrupted-step3.ckpt'}"):
        trainer.fit(BoringModel())
    saved = load_checkpoint_file(linked / "interrupted-step3.ckpt")
    assert saved["global_step"] == 3 and "optimizer_states" in saved
    capsys.readouterr()

    monkeypatch.chdir(tmp_path)
    config = fit_config(tmp_path, coco_root, backbones, tmp_path / "c")
    weights_only = ["--trainer.callbacks.save_weights_only", "true"]
    main([*config, *weights_only])
    assert ("note: the ModelCheckpoint saving to " f"{tmp_path / 'c'} has save_weights_only on: its checkpoints hold the "
            "trained weights alone, which start a new run (--model.init_from) but cannot resume this one (--ckpt_path)"
            ) in capsys.readouterr().err
    last = tmp_path / "c" / "last.ckpt"
    assert user_error(capsys, main, [*config, "--ckpt_path", str(last), "--trainer.max_steps", "2"]) == (
        f"error: --ckpt_path {last} holds the trained weights alone (its ModelCheckpoint's save_weights_only: no optimizer "
        f"state, schedule or place in the epoch), so it cannot resume a run. Start a new run from its weights with "
        f"--model.init_from {last}")
    main([*config, "--model.init_from", str(last), "--trainer.max_steps", "1"])  # as it says: it starts one


@pytest.mark.parametrize("when", ["the save is written", "the step's metrics are logged"])
def test_a_second_ctrl_c_once_the_stops_checkpoint_is_saved_still_says_how_to_resume(when, tmp_path, monkeypatch):
    # Ctrl-C, then Ctrl-C again as the step-end save finished: "stopped by a second Ctrl-C, without saving", though
    # last.ckpt was saved; a moment later (the handlers put back), a bare "stopped by SIGINT" without the resume line
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

    from mmcaption.errors import signals_stop

    def again(function):
        def then_ctrl_c(*args, **kwargs):
            done = function(*args, **kwargs)
            if trainer.global_step == 3:  # the stop's save, not a validation's
                os.kill(os.getpid(), signal.SIGINT)
            return done
        return then_ctrl_c

    if when == "the save is written":  # Lightning's bookkeeping after the write (the folder's sync is as late)
        monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", again(ModelCheckpoint._save_checkpoint))
    else:
        monkeypatch.setattr(_LoggerConnector, "update_train_step_metrics", again(_LoggerConnector.update_train_step_metrics))

    class CtrlCAtStep(SignalAtStep):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGINT)

    folder = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_steps=6, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(dirpath=folder, save_last=True), ResumableStop(), CtrlCAtStep(2)])
    with signals_stop(), pytest.raises(RunInterrupted) as raised:  # as the console scripts run it
        trainer.fit(BoringModel())
    assert str(raised.value) == (f"stopped by SIGINT at step 3: saved {folder / 'last.ckpt'}; resume by running the same "
                                 f"command with --ckpt_path {folder / 'last.ckpt'}")
    assert load_checkpoint_file(folder / "last.ckpt")["global_step"] == 3


def test_slurms_time_limit_warning_after_the_last_step_requeues_the_job(monkeypatch):
    # it stopped the command without requeueing: the job's next stage (a pipeline's) had to be resubmitted by hand
    from types import SimpleNamespace

    monkeypatch.setattr("mmcaption.callbacks.requeue_slurm_job", lambda: "SLURM job 42 is requeued")
    callback = ResumableStop()
    callback.signal = callback._requeue_signal = signal.SIGUSR1
    trainer = SimpleNamespace(checkpoint_callback=None, fast_dev_run=0, world_size=1, global_step=500, is_global_zero=True,
                              callbacks=[], max_steps=500, max_epochs=None, current_epoch=0)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGUSR1 at step 500: nothing saved; training was done, its last validation "
                                             r"too: nothing is left to resume\. SLURM job 42 "
                                             r"is requeued"):
        callback.on_train_end(trainer, None)


def test_a_slurm_fit_says_what_the_time_limit_warning_does_in_place_of_lightnings_line(monkeypatch, tmp_path, capsys, caplog):
    # Lightning's "SLURM auto-requeueing enabled. Setting signal handlers." spoke of its own handler, which is replaced
    import logging

    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmcaption.console import quiet_lightning

    for name, value in {"SLURM_JOB_ID": "4711", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train.sh", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    quiet_lightning()
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      callbacks=[ResumableStop()])
    with caplog.at_level(logging.INFO):
        trainer.fit(BoringModel())
    assert ("SLURM: SIGUSR1 before the time limit saves a checkpoint at the end of the step and requeues the job, which "
            "resumes from it\n") in capsys.readouterr().err
    assert not [record for record in caplog.records if "auto-requeueing" in record.getMessage()]


def test_ctrl_c_in_a_users_own_script_says_how_to_resume_there_not_on_a_command_line(monkeypatch, tmp_path, capsys):
    # a notebook's Trainer(callbacks=[ResumableStop()]) stopped by Ctrl-C was told "running the same command with
    # --ckpt_path": there was no command
    from types import SimpleNamespace

    from mmcaption.errors import signals_stop

    callback = ResumableStop()
    trainer = SimpleNamespace(global_step=7, is_global_zero=True)
    with pytest.raises(RunInterrupted) as raised:
        callback._stop(trainer, signal.SIGINT, "runs/last.ckpt")
    assert str(raised.value) == ("stopped by SIGINT at step 7: saved runs/last.ckpt; resume by "
                                 "trainer.fit(..., ckpt_path='runs/last.ckpt')")
    with signals_stop(), pytest.raises(RunInterrupted) as raised:  # a console script's command
        callback._stop(trainer, signal.SIGINT, "runs/last.ckpt")
    assert str(raised.value).endswith("resume by running the same command with --ckpt_path runs/last.ckpt")
    # a folder with a space (a default_root_dir "runs/sp ace"): quoted, as the shell reads it back whole (copied as
    # printed, "ace/last.ckpt" was an unrecognized argument)
    with signals_stop(), pytest.raises(RunInterrupted) as raised:
        callback._stop(trainer, signal.SIGINT, "runs/sp ace/last.ckpt")
    assert str(raised.value).endswith("resume by running the same command with --ckpt_path 'runs/sp ace/last.ckpt'")
    import shlex
    assert shlex.split(str(raised.value).split("command with ")[1]) == ["--ckpt_path", "runs/sp ace/last.ckpt"]
    from mmcaption.checkpoint_folders import earlier_checkpoints_note

    earlier = tmp_path / "sp ace"
    earlier.mkdir()
    torch.save({"global_step": 3}, earlier / "last.ckpt")
    earlier_checkpoints_note(earlier)
    assert f"stop and add --ckpt_path '{earlier / 'last.ckpt'}'" in capsys.readouterr().err


def test_resuming_the_other_stage_or_on_changed_data_is_refused_naming_what_differs(backbones, coco_root, tmp_path, capsys):
    coco = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    language_dir, vision_dir = backbones
    names = dict(tokenizer=str(language_dir), image_processor=str(vision_dir), batch_size=4, num_workers=0)
    trainer = fit_trainer(tmp_path / "caption", steps=2)
    trainer.fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names))
    last = tmp_path / "caption" / "checkpoints" / "last.ckpt"
    saved = load_checkpoint_file(last)
    assert saved["global_step"] == 2  # the end of training is saved, not only validations
    assert saved["training_data"]["stage"] == "caption" and saved["training_data"]["samples"] == 60

    train = write_llava_split(tmp_path / "llava", coco, "train2017", seed=0)
    instruct = InstructDataModule(train_file=str(train), val_fraction=0.25, image_root=str(coco), **names)
    with pytest.raises(ResumeError, match=rf"{last} is a checkpoint of the caption stage, and this run trains the instruct stage.*"
                                          rf"--model.init_from {last}"):
        fit_trainer(tmp_path / "instruct", steps=4).fit(make_captioner(backbones), datamodule=instruct, ckpt_path=last)
    capsys.readouterr()
    with pytest.raises(ResumeError, match=r"is a checkpoint of the caption stage"):  # without a note that does not matter
        fit_trainer(tmp_path / "instruct", steps=2).fit(make_captioner(backbones), datamodule=instruct, ckpt_path=last)
    assert "nothing is left to train" not in capsys.readouterr().err

    # resumed with a max_steps it has reached: Lightning ends the run at once, which the note says (nothing did)
    fit_trainer(tmp_path / "caption", steps=2).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                   ckpt_path=last)
    assert f"note: {last} is at step 2, and trainer.max_steps is 2: nothing is left to train" in capsys.readouterr().err

    # a checkpoint from before length_group_batches (it grouped 50 batches) resumed with today's 100: another order
    assert saved["training_data"]["length_group_batches"] == 100
    del saved["training_data"]["length_group_batches"]
    older = tmp_path / "older.ckpt"
    torch.save(saved, older)
    with pytest.raises(ResumeError, match=r"other data or batches than this run's \(length_group_batches 50 -> 100\)"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=older)

    # max_length changed: named as such (it was only the preprocessed split's new name, which reads as changed files)
    with pytest.raises(ResumeError, match=r"other data or batches than this run's \(max_length \d+ -> 24[;)]"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), ckpt_path=last,
                                                       datamodule=CaptionDataModule(data_dir=str(coco), max_length=24, **names))
    del saved["training_data"]["max_length"]  # a checkpoint from before it was kept resumes as it did
    torch.save(saved, older)
    with pytest.raises(ResumeError, match=r"other data or batches than this run's \(length_group_batches 50 -> 100\):"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=older)

    # a checkpoint of a run that an earlier release preprocessed the data for: its cache had another name, and the message
    # blamed the data ("resume with the data it was trained with", which the user did); said as the release's change
    earlier = {**saved, "training_data": {**saved["training_data"], "preprocessing": 5, "train_split": "train2017-0123456789abcdef"}}
    torch.save(earlier, older)
    with pytest.raises(ResumeError, match=r"trained on data that an earlier release of mmcaption preprocessed \(format 5; this "
                                          r"release's is \d+\).*Finish the run with the release that began it, or start a new run "
                                          r"from its weights with --model.init_from .*older.ckpt; the earlier cache "
                                          r"\(train2017-0123456789abcdef\) may then be deleted"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=older)
    del earlier["training_data"]["preprocessing"]  # one from before the format was kept
    torch.save(earlier, older)
    with pytest.raises(ResumeError, match=r"an earlier release of mmcaption preprocessed \(an earlier format; this release's"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=older)

    # a caption file holding invisible characters around a caption, which this release removes (a new cache): the message
    # blamed the data, which the user had not changed
    annotations = coco / "annotations" / "captions_train2017.json"
    original = annotations.read_text()
    content = json.loads(original)
    content["annotations"][0]["caption"] += "\u200b"
    annotations.write_text(json.dumps(content))
    torch.save(saved, older)
    with pytest.raises(ResumeError, match=r"trained on captions that an earlier release of mmcaption read otherwise than this "
                                          r"one \(invisible characters around them removed\), into a new cache: .* Finish the run "
                                          r"with the release that began it"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=older)
    annotations.write_text(original)

    # an image no record names added to the training folder ("photo (1).jpg"): the split is preprocessed anew, with the same
    # rows and images, and the run resumes (it was refused, "trained on other data", naming two hashes)
    stray = coco / "train2017" / "stray (1).jpg"
    shutil.copy(next((coco / "train2017").glob("*.jpg")), stray)
    capsys.readouterr()
    resumed = fit_trainer(tmp_path / "caption", steps=3)
    resumed.fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names), ckpt_path=last)
    assert resumed.global_step == 3
    assert re.search(rf"note: {re.escape(str(last))} was trained on train2017-\w+, and this run's data was preprocessed anew into "
                     r"train2017-\w+, with the same rows and images: it resumes", capsys.readouterr().err)
    stray.unlink()
    # back on the first split, the one it resumed on since damaged (its files deleted to make room): refused as any other
    # change of data, not a traceback from reading it
    rebuilt = torch.load(last, weights_only=False)["training_data"]["train_split"]
    shutil.rmtree(next((coco / "preprocessed").glob(f"{rebuilt}/captions")))
    with pytest.raises(ResumeError, match=rf"other data or batches than this run's \(the training data's content .* '{rebuilt}' ->"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=last)

    # the same stage on data that lost two images since: refused, naming what changed, before any step
    content = json.loads(annotations.read_text())
    dropped = {image["id"] for image in content["images"][:2]}
    content["images"] = content["images"][2:]
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] not in dropped]
    annotations.write_text(json.dumps(content))
    with pytest.raises(ResumeError, match=r"trained on other data or batches than this run's \(the training data's content \(the "
                                          r"preprocessed split it was read into\) 'train2017-\w+' -> 'train2017-\w+'; samples 60 -> 50"):
        fit_trainer(tmp_path / "caption", steps=4).fit(make_captioner(backbones), datamodule=CaptionDataModule(data_dir=str(coco), **names),
                                                       ckpt_path=last)


# -- folders are checked, and locked, before anything loads ---------------------------------------------


def fit_config(tmp_path: Path, coco_root: Path, backbones, dirpath: Path, log_dir: Path | None = None) -> list[str]:
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(log_dir or tmp_path / "logs")}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(dirpath), "save_last": True}}]},
        "model": {"config": {"language_model": str(backbones[0]), "vision_model": str(backbones[1]),
                             "cross_attention_layers": [-2, -1], "lora_r": 4, "lora_alpha": 8}},
        "data": {"class_path": "mmcaption.data.CaptionDataModule",
                 "init_args": {"data_dir": str(coco_root), "cache_dir": str(tmp_path / "cache"), "num_workers": 0}},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["fit", "--config", str(path)]


def test_a_resume_of_another_stage_or_preprocessing_format_is_refused_before_the_data_is_preprocessed(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    # these were refused as the checkpoint was restored, once the data had been preprocessed anew (hours at COCO's size, and
    # a second cache left on disk); a newer release's checkpoint was said to come from an earlier one
    from mmcaption.data.base import PREPROCESSING_VERSION

    monkeypatch.chdir(tmp_path)
    folder, cache = tmp_path / "c", tmp_path / "cache"
    main(fit_config(tmp_path, coco_root, backbones, folder))
    saved = load_checkpoint_file(folder / "last.ckpt")
    shutil.rmtree(cache)
    edited = tmp_path / "edited.ckpt"
    newer, earlier = PREPROCESSING_VERSION + 1, PREPROCESSING_VERSION - 4
    for change, said in (
            ({"preprocessing": newer}, f"error: {edited} was trained on data that a newer release of mmcaption preprocessed "
             f"(format {newer}; this release's is {PREPROCESSING_VERSION}): upgrade mmcaption (pip install -U mmcaption) to "
             f"resume it, or start a new run from its weights with --model.init_from {edited}"),
            ({"preprocessing": earlier}, f"error: {edited} was trained on data that an earlier release of mmcaption preprocessed "
             f"(format {earlier}; this release's is {PREPROCESSING_VERSION})"),
            ({"stage": "instruct"}, f"error: {edited} is a checkpoint of the instruct stage, and this run trains the caption stage")):
        torch.save({**saved, "training_data": {**saved["training_data"], **change}}, edited)
        message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, folder), "--ckpt_path", str(edited),
                                            "--trainer.max_steps", "2"])
        assert message.startswith(said), message
        assert not cache.exists()  # before the data was read
    torch.save(saved, edited)  # as saved: resumed
    main([*fit_config(tmp_path, coco_root, backbones, folder), "--ckpt_path", str(edited), "--trainer.max_steps", "2"])
    assert load_checkpoint_file(folder / "last.ckpt")["global_step"] == 2


def test_a_quick_run_without_logs_or_checkpoints_leaves_out_the_configs_callbacks_for_them(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # was Lightning's MisconfigurationException, after the model had loaded
    folder = tmp_path / "c"
    main([*fit_config(tmp_path, coco_root, backbones, folder), "--trainer.callbacks+=LearningRateMonitor",
          "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"])
    err = capsys.readouterr().err
    assert "note: trainer.logger is false: the config's LearningRateMonitor is left out" in err
    assert "note: trainer.enable_checkpointing is false: the config's ModelCheckpoint is left out" in err
    assert not folder.exists() and not (tmp_path / "logs").exists()
    main([*fit_config(tmp_path, coco_root, backbones, folder), "--trainer.fast_dev_run", "true"])
    assert "note: trainer.fast_dev_run is true: the config's ModelCheckpoint is left out" in capsys.readouterr().err
    assert not folder.exists()  # was a one-step last.ckpt, where the real run's goes ("checkpointing is suppressed")
    # a fraction of validation's batches, fewer than one of the captions generated: Lightning's "0.5 * 1 < 1" named a
    # loader the user never set up
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, folder), "--trainer.limit_val_batches",
                                        "0.5", "--data.init_args.val_caption_images", "2"])
    assert message.endswith("(validation has two loaders: the loss's, and the captions generated from "
                            "data.init_args.val_caption_images images at eval_batch_size, which had fewer batches: give "
                            "trainer.limit_val_batches as a number of batches, an int, or caption more images)"), message


def test_settings_no_run_learns_with_are_refused_before_anything_loads(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # torch's traceback once the model had loaded (a negative rate, a beta of 1.5, PEFT's for a rank of 0), or taken
    # without a word: a rate of 0, a warmup_ratio of 1.5 (the peak never reached), an alpha of 0 (no adapter trained)
    monkeypatch.chdir(tmp_path)
    fit = fit_config(tmp_path, coco_root, backbones, tmp_path / "c")
    for setting, value, said in (
        ("--model.learning_rate", "0", "model.learning_rate 0.0: training moves the weights by it, so it is above 0"),
        ("--model.learning_rate", "-1e-3", "model.learning_rate -0.001: training moves the weights by it"),
        ("--model.warmup_ratio", "1.5", "model.warmup_ratio 1.5 is the fraction of the steps spent warming up: give 0 to 1"),
        ("--model.weight_decay", "-0.1", "model.weight_decay -0.1: a decay is 0 or above"),
        ("--model.adam_betas", "[0.9, 1.5]", "model.adam_betas [0.9, 1.5]: each from 0 to below 1"),
        ("--trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val -1: Lightning clips nothing below 0"),
        ("--trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches 0: the batches each optimizer step adds "
                                                   "up, 1 or more"),  # was a ZeroDivisionError once the model had loaded
        ("--model.config.lora_r", "0", "model.config.lora_r 0, lora_alpha 8, lora_dropout 0.05: LoRA's rank is at least 1"),
        ("--model.config.lora_alpha", "0", "model.config.lora_r 4, lora_alpha 0, lora_dropout 0.05: LoRA's rank is at least 1"),
        ("--model.config.lora_dropout", "1.0", "model.config.lora_r 4, lora_alpha 8, lora_dropout 1.0: LoRA's rank is at least"),
        # Lightning skipped the training, said so in passing and exited 0: a run that looked done, nothing learned
        ("--trainer.limit_train_batches", "0", "trainer.limit_train_batches 0: this fit would train nothing and exit as if "
                                               "done; give a number of them above 0"),
        ("--trainer.max_steps", "0", "trainer.max_steps 0: this fit would train nothing and exit as if done; give a number "
                                     "of them above 0 (-1 lifts max_steps' or max_epochs' limit; one of the two stays finite, "
                                     "the learning-rate schedule's length)"),  # (null was refused, or 1,000 epochs)
        ("--trainer.max_epochs", "0", "trainer.max_epochs 0: this fit would train nothing"),
    ):
        assert user_error(capsys, main, [*fit, f"{setting}={value}"]).startswith(f"error: {said}"), setting
    # a negative value in exponent notation after its setting, as people write a rate: "expected one argument"
    assert user_error(capsys, main, [*fit, "--model.learning_rate", "-1e-3"]).startswith(
        "error: model.learning_rate -0.001: training moves the weights by it")
    with pytest.raises(SystemExit):  # a name that starts with a dash: "argument --trainer: expected one argument", alone
        main([*fit, "--trainer.default_root_dir", "-runs"])
    assert "  a value that starts with '-' goes joined to its option: --trainer.default_root_dir=-runs\n" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing preprocessed, nothing loaded
    # Lightning's refusals while it builds the trainer were tracebacks
    assert user_error(capsys, main, [*fit, "--trainer.barebones=true"]) == (
        "error: trainer.barebones true: mmcaption's commands log, checkpoint and show their progress, which barebones mode "
        "refuses; for a bare run leave it out (false) and give --trainer.logger false --trainer.enable_checkpointing false "
        "instead")
    assert user_error(capsys, main, [*fit, "--trainer.precision=transformer-engine"]).startswith(
        "error: a trainer setting needs a package that is not installed: Requirement 'transformer_engine")


def test_a_logger_whose_package_is_not_installed_is_one_line_with_what_to_install(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    from lightning.pytorch.loggers import wandb
    from lightning_utilities.core.imports import RequirementCache

    monkeypatch.chdir(tmp_path)  # was 95 lines: two tracebacks and each type jsonargparse tried for trainer.logger
    monkeypatch.setattr(wandb, "_WANDB_AVAILABLE", RequirementCache("wandb>=999"))  # not installed, wherever this runs
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"),
                                       "--trainer.logger", "WandbLogger"])
    assert message == ("error: WandbLogger (lightning.pytorch.loggers.WandbLogger) needs a package that is not installed: "
                       "Requirement 'wandb>=999' not met. HINT: Try running `pip install -U 'wandb>=999'`")


def test_callbacks_without_a_model_checkpoint_are_noted_with_how_to_add_to_a_list(capsys):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from mmcaption.settings_checks import usable_callbacks

    # a second config file with its own callbacks list replaced the first's, ModelCheckpoint with it: a max_steps run
    # mid-epoch then ended "training done" with no checkpoint at all
    usable_callbacks({"callbacks": [EarlyStopping(monitor="val/loss")]}, fit=True)
    assert "note: trainer.callbacks has no ModelCheckpoint, so Lightning's default one keeps a single checkpoint" in capsys.readouterr().err
    for settings in ({"callbacks": [ModelCheckpoint(save_last=True)]}, {"callbacks": [], "enable_checkpointing": False}):
        usable_callbacks(settings, fit=True)
        assert "no ModelCheckpoint" not in capsys.readouterr().err
    monitors = [LearningRateMonitor(), LearningRateMonitor(log_momentum=True)]  # callbacks+= over the config's
    assert usable_callbacks({"callbacks": [ModelCheckpoint(), *monitors]}, fit=True)[1:] == monitors[1:]  # was each rate twice
    assert "note: trainer.callbacks has two LearningRateMonitors: the later one is used" in capsys.readouterr().err
    usable_callbacks({"callbacks": [ModelCheckpoint()], "fast_dev_run": 5}, fit=True)  # said "fast_dev_run is true"
    assert "note: trainer.fast_dev_run is 5: the config's ModelCheckpoint is left out" in capsys.readouterr().err
    # no loggers, as a list: Lightning stopped at "Cannot use LearningRateMonitor callback with Trainer that has no logger"
    assert usable_callbacks({"callbacks": [LearningRateMonitor()], "logger": []}, fit=True) == []
    assert "note: trainer.logger is []: the config's LearningRateMonitor is left out" in capsys.readouterr().err
    # the flag also turns off mmcaption's own lines (a scheduler's log kept no validation metrics), which are plain
    # lines off a terminal anyway: said
    usable_callbacks({"callbacks": [ModelCheckpoint()], "enable_progress_bar": False}, fit=True)
    assert "note: trainer.enable_progress_bar is false, so mmcaption's progress lines are off too" in capsys.readouterr().err
    usable_callbacks({"callbacks": []}, fit=False)  # validate, test, predict save nothing
    assert capsys.readouterr().err == ""
    # a user's own ModelCheckpoint with only its folder changed: a max_steps run mid-epoch ended "training done" and
    # left the folder empty, without a word
    usable_callbacks({"callbacks": [ModelCheckpoint(dirpath="ck/mine")]}, fit=True)
    assert "ck/mine has save_last off: no last.ckpt, so a run that stops at max_steps" in capsys.readouterr().err
    usable_callbacks({"callbacks": [ModelCheckpoint(dirpath="ck/mine", save_last=True)]}, fit=True)
    assert "save_last off" not in capsys.readouterr().err
    # Lightning's SWA copies the module before configure_model builds the model: it ran, and averaged no weight
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    with pytest.raises(ConfigError, match=r"StochasticWeightAveraging cannot average this model"):
        usable_callbacks({"callbacks": [ModelCheckpoint(), StochasticWeightAveraging(swa_lrs=1e-3)]}, fit=True)


def test_a_later_command_in_a_runs_folder_keeps_its_config_and_a_resume_with_nothing_left_says_so(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    fit = fit_config(tmp_path, coco_root, backbones, tmp_path / "c")
    main(fit)  # max_steps 1
    run = tmp_path / "logs" / "lightning_logs" / "version_0"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 1
    recorded = torch.load(tmp_path / "c" / "last.ckpt", weights_only=False)["run"]  # which run saved it: nothing said so
    assert recorded["log_dir"] == str(run) and recorded["trainer"]["max_steps"] == 1 and recorded["learning_rate"] > 0
    capsys.readouterr()
    # resumed at its end (a finished run, or a resumed run's own config run again): "`Trainer.fit` stopped", exit 0, and
    # a run of nothing listed in TensorBoard
    main([*fit, "--ckpt_path", "last"])
    assert f"note: {tmp_path / 'c' / 'last.ckpt'} is at step 1 (epoch 0), the end of trainer.max_steps 1: this fit trained " \
           "nothing more (to train on, raise --trainer.max_steps above 1)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "logs" / "lightning_logs").iterdir()) == ["version_0"]
    # a resume given the run's own folder: its config.yaml was replaced by the resume's (max_steps 2, and a learning rate
    # the first steps were not trained with)
    main([*fit, "--ckpt_path", "last", "--trainer.max_steps", "2", "--trainer.logger.init_args.version", "version_0"])
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 1
    assert yaml.safe_load((run / "config-2.yaml").read_text())["trainer"]["max_steps"] == 2
    # ... without the checkpoint it resumed, said: the file given as --config to repeat the run (another machine, a new
    # experiment) resumed whatever run's checkpoint stood at that path, and wrote over its last.ckpt
    saved = (run / "config-2.yaml").read_text()
    assert yaml.safe_load(saved)["ckpt_path"] is None and saved.startswith(
        f"# this run was resumed with --ckpt_path {tmp_path / 'c' / 'last.ckpt'}, left out here: this file given as --config "
        "starts a run anew (add --ckpt_path to resume)\n"), saved[:300]


def test_a_csv_loggers_curves_and_settings_are_kept_when_a_later_command_logs_into_its_folder(
    backbones, coco_root, tmp_path, monkeypatch
):
    # a resume, validate or test given the run's version: Lightning's CSV writer deleted the earlier metrics.csv (the
    # resumed run's curves started at its first step, a test's row replaced the training's) and wrote its own
    # hparams.yaml over the training's (a test's overrides read as the settings it was trained with)
    import csv

    monkeypatch.chdir(tmp_path)
    fit = fit_config(tmp_path, coco_root, backbones, tmp_path / "c")
    config = yaml.safe_load(Path(fit[2]).read_text())
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": "logs", "name": "mine", "version": "v1"}}
    config["trainer"]["log_every_n_steps"] = 1
    Path(fit[2]).write_text(yaml.safe_dump(config))
    captions = ["--data.init_args.val_caption_images", "2", "--model.generation.max_new_tokens", "2"]
    main([*fit, "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", *captions])  # (saved as a validation ends)
    run = tmp_path / "logs" / "mine" / "v1"
    trained = (run / "hparams.yaml").read_text()

    def steps() -> list[str]:
        with (run / "metrics.csv").open(newline="") as handle:
            return [row["step"] for row in csv.DictReader(handle) if row.get("train/loss")]

    assert steps() == ["0", "1"]
    earlier = Path(shutil.copy(tmp_path / "c" / "epoch=0-step=2.ckpt", tmp_path / "step2.ckpt"))  # saved as a validation ended
    main([*fit, "--trainer.max_steps", "4", "--ckpt_path", "last", "--trainer.val_check_interval", "1", *captions])
    assert steps() == ["0", "1", "2", "3"]  # the resumed run's rows after the first run's
    # resumed from a checkpoint older than the last row (a kill after step 3, its last save at step 2): steps 2 and 3 were
    # in metrics.csv twice, one of each by a run that no longer exists; they are kept aside
    main([*fit, "--trainer.max_steps", "4", "--ckpt_path", str(earlier), "--trainer.val_check_interval", "1", *captions])
    assert steps() == ["0", "1", "2", "3"]
    # and its validations' files after step 2 (step3 was the dead run's, the live one's step3-2, nothing said which)
    assert sorted(p.name for p in (run / "validations" / "superseded-2").iterdir()) == [
        f"val-val2017-step{n}.{kind}" for n in (3, 4) for kind in ("coco_results.json", "predictions.jsonl", "results.json")]
    live = [json.loads((run / "validations" / f"val-val2017-step{n}.results.json").read_text()) for n in (1, 2, 3, 4)]
    assert [results["checkpoint"].get("resumed_at_step") for results in live] == [None, None, 2, 2]
    with (run / "metrics-superseded-2.csv").open(newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle) if row.get("train/loss")] == ["2", "3"]
    with (run / "metrics.csv").open(newline="") as handle:  # the validation that saved step2.ckpt stays, not logged again
        assert [row["step"] for row in csv.DictReader(handle) if row.get("val/loss")][:2] == ["0", "1"]
    main(["test", "--config", fit[2], "--ckpt_path", str(tmp_path / "c" / "last.ckpt"), "--model.learning_rate", "0.5"])
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows if row.get("train/loss")] == ["0", "1", "2", "3"] and rows[-1].get("test/loss")
    assert (run / "hparams.yaml").read_text() == trained  # the training's settings, as trained
    assert yaml.safe_load((run / "hparams-4.yaml").read_text())["learning_rate"] == 0.5  # the test's, beside them
    # validate logs into the run folder its config names (it dropped the config's logger without a word: the shipped
    # configs' unnamed one would be an empty run)
    main(["validate", "--config", fit[2], "--ckpt_path", str(tmp_path / "c" / "last.ckpt")])
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1].get("val/loss") and len([row for row in rows if row.get("train/loss")]) == 4 and (run / "hparams-5.yaml").is_file()
    assert not list(run.glob(".*"))  # nothing hidden left behind


def test_a_csv_logger_beside_tensorboards_named_version_keeps_its_rows_too(tmp_path):
    # the README's pairing, TensorBoard's logger named exp1 and a CSVLogger beside it: the CSV logger got the version only
    # later, and a resume's writer deleted metrics.csv
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from mmcaption.csv_logs import keep_earlier_csv_logs
    from mmcaption.folders import claim_run_folders

    run = tmp_path / "logs" / "run" / "exp1"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,0,2.0\n0,1,1.5\n")
    loggers = [TensorBoardLogger(tmp_path / "logs", name="run", version="exp1"), CSVLogger(tmp_path / "logs", name="run")]
    keep_earlier_csv_logs(SimpleNamespace(loggers=loggers))
    claim_run_folders(loggers)
    loggers[1].log_metrics({"train/loss": 1.0, "epoch": 0}, step=2)
    loggers[1].save()
    assert (run / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss", "0,0,2.0", "0,1,1.5", "0,2,1.0"]


class FolderlessLogger(Logger):
    """A logger that keeps nothing on the local disk (MLflow's or Comet's server, say): no save_dir."""

    name, version = "remote", "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged = True


def test_a_logger_without_a_local_folder_trains_and_says_the_config_is_not_saved(backbones, coco_root, tmp_path, monkeypatch,
                                                                                 capsys):
    # Lightning's SaveConfigCallback stopped at a bare AssertionError (its log_dir None) before training
    monkeypatch.chdir(tmp_path)
    fit = fit_config(tmp_path, coco_root, backbones, tmp_path / "c")
    main([*fit, "--trainer.logger", "tests.test_interruptions.FolderlessLogger", "--trainer.callbacks+=LearningRateMonitor"])
    assert "note: the config is not saved: trainer.logger (FolderlessLogger) has no local folder (save_dir) to save it in" \
        in capsys.readouterr().err
    assert (tmp_path / "c" / "last.ckpt").is_file() and not (tmp_path / "config.yaml").exists()


def test_runs_started_at_the_same_moment_get_their_own_run_folders(tmp_path, monkeypatch):
    # a sweep's runs each read the same next version: they wrote into one folder, and one refused at its start removed
    # the folder with the other's live event file, which then crashed
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from mmcaption.folders import claim_run_folders, remove_unused_run

    reads = [0, 0, 0]  # three runs started together each read "version_0 is free" before any made it
    real = TensorBoardLogger._get_next_version
    monkeypatch.setattr(TensorBoardLogger, "_get_next_version", lambda self: reads.pop(0) if reads else real(self))
    runs = [[TensorBoardLogger(tmp_path, name="sweep"), CSVLogger(tmp_path, name="sweep")] for _ in range(3)]
    folders = [claim_run_folders(loggers) for loggers in runs]
    assert [[folder.name for folder in made] for made in folders] == [["version_0"], ["version_1"], ["version_2"]]
    for loggers, (made,) in zip(runs, folders):  # a run's TensorBoard and CSV loggers share its folder, as before
        assert [Path(logger.log_dir) for logger in loggers] == [made, made]
    pair = [TensorBoardLogger(tmp_path, name="pair"), CSVLogger(tmp_path, name="pair", version="exp1")]
    claim_run_folders(pair)  # the CSV logger's own version was replaced by TensorBoard's, without a word
    assert [Path(logger.log_dir).name for logger in pair] == ["version_0", "exp1"]
    named = CSVLogger(tmp_path, name="sweep", version="mine")
    assert claim_run_folders([named])[0].name == "mine" and claim_run_folders([CSVLogger(tmp_path, name="sweep",
                                                                                          version="mine")]) == []
    # a version's name held by a link to a disk not mounted, or a file: Lightning counts folders only, and gave it again
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "version_0").symlink_to(tmp_path / "unmounted" / "run")
    (tmp_path / "links" / "version_1").write_text("")
    assert [folder.name for folder in claim_run_folders([TensorBoardLogger(tmp_path, name="links")])] == ["version_2"]

    (folders[1][0] / f"events.out.tfevents.1700000000.host.{os.getpid() + 1}.0").write_bytes(b"")  # a spawned rank's
    (folders[1][0] / "config.yaml").write_text("{}")
    assert remove_unused_run(folders[1][0]) and not folders[1][0].exists()
    (folders[2][0] / "checkpoints").mkdir()
    assert not remove_unused_run(folders[2][0])  # anything else: kept
    alone = claim_run_folders([TensorBoardLogger(tmp_path, name="alone")])[0]  # a name's only run: no empty name folder
    assert remove_unused_run(alone) and not alone.parent.exists() and (tmp_path / "sweep").is_dir()


def test_lightnings_own_refusals_of_settings_are_one_line(backbones, coco_root, trained_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # were tracebacks (exit 1): a ValueError, and Lightning's MisconfigurationException
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"),
                                       "--trainer.val_check_interval", "500", "--trainer.max_steps", "2"])
    assert message.startswith("error: trainer.val_check_interval: `val_check_interval` (500) must be less than or equal to "
                              "the number of the training batches")
    # refused after the logger had made its run folder: that folder, holding only the config, is gone (each try took a
    # version number and listed an empty run in TensorBoard); the logs folder itself stays
    assert (tmp_path / "logs").is_dir() and not list((tmp_path / "logs").rglob("version_*"))
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "d"),
                                       "--trainer.callbacks.monitor=train/los", "--trainer.val_check_interval", "1",
                                       "--trainer.limit_val_batches", "1", "--trainer.max_steps", "2"])  # a typo in its monitor
    assert message.startswith("error: `ModelCheckpoint(monitor='train/los')` could not find the monitored key")
    assert [p.name for p in (tmp_path / "logs").rglob("version_*")] == ["version_0"]  # failed after a step: kept
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "e"),
                                       "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=train/los",
                                       "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1"])
    assert message.startswith("error: the config's EarlyStopping monitor: Early stopping conditioned on metric `train/los`")
    # a validation metric with a max_steps stop mid-epoch, before any validation: the run was failed after its
    # steps on a metric not yet logged, and its last.ckpt was not written
    main([*fit_config(tmp_path, coco_root, backbones, tmp_path / "h"), "--trainer.callbacks+=EarlyStopping",
          "--trainer.callbacks.monitor=val/loss"])
    assert "error" not in capsys.readouterr().err and (tmp_path / "h" / "last.ckpt").is_file()
    # a validation metric's name mistyped is refused before the first step (names of validation metrics are known)
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "g"),
                                       "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/los"])
    assert message.startswith("error: EarlyStopping's monitor val/los is never logged: did you mean val/loss?")
    # refused while Lightning builds the trainer: was a MisconfigurationException's traceback (exit 1)
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "f"), "--trainer.val_check_interval",
                                       "0.5", "--trainer.check_val_every_n_epoch", "null"])
    assert message.startswith("error: `val_check_interval` should be an integer or a time-based duration")
    # a test refused once its logger made its run folder (part of a batch to test): that folder is gone too
    versions = sorted(p.name for p in (tmp_path / "logs").rglob("version_*"))
    message = user_error(capsys, main, ["test", *fit_config(tmp_path, coco_root, backbones, tmp_path / "h")[1:], "--ckpt_path",
                                       str(trained_checkpoint), "--trainer.limit_test_batches", "0.001"])
    assert "limit_test_batches" in message
    assert sorted(p.name for p in (tmp_path / "logs").rglob("version_*")) == versions


def test_a_true_precision_that_would_cast_the_packed_4_bit_weights_is_refused_before_loading(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    no_backbones(monkeypatch)  # refused before a backbone is looked for
    # 16-true on bfloat16-stored 4-bit weights computed garbage without a word (val loss 4.75 where it is 0.46);
    # bf16-true on float32-stored ones failed in a bitsandbytes reshape
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.precision", "16-true"])
    assert message == ("error: trainer.precision 16-true casts every weight to float16, the nf4 weights' packed bytes too (stored "
                       "as model.config.compute_dtype bfloat16): they would be scrambled. Use bf16-mixed (as the real configs) or "
                       "32-true, or keep 16-true with model.config.compute_dtype float16 to predict (to train, it rounds away "
                       "updates of the weights it trains, kept in 16 bits too)")
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.precision",
                                       "bf16-true", "--model.config.compute_dtype", "float32"])
    assert message.startswith("error: trainer.precision bf16-true casts every weight to bfloat16")
    assert "64-true" in user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"),
                                                  "--trainer.precision", "64-true"])
    # as the refusal allows, it trains, and keeps the trained weights in bfloat16: AdamW's small updates rounded away unsaid
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    main([*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.precision", "bf16-true",
          "--model.config.compute_dtype", "bfloat16"])
    assert ("note: trainer.precision bf16-true keeps the weights this run trains (LoRA, cross-attention, projection) and "
            "their optimizer state in bfloat16: an update smaller than bfloat16's step between two values of a weight is "
            "rounded away") in capsys.readouterr().err


def test_ctrl_c_in_a_notebooks_run_cli_raises_interrupted_and_leaves_ctrl_c_and_the_bars_as_they_were(
        backbones, coco_root, tmp_path, monkeypatch):
    # "Interrupt kernel" while a cell's run_cli fit prepared its data: Lightning's handling of KeyboardInterrupt exited
    # the cell with SystemExit(1) and left SIGINT ignored, so no later cell could be interrupted until a restart; and
    # run_cli turned transformers' and datasets' progress bars off for the rest of the session
    import datasets
    from transformers.utils import logging as hf_logging

    monkeypatch.chdir(tmp_path)

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # as the notebook's interrupt arrives
        time.sleep(1)

    monkeypatch.setattr(CaptionDataModule, "setup", interrupted)
    started = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a notebook's kernel has it (a background
    hf_logging.enable_progress_bar()                                    # job, as CI may run the tests, ignores it)
    datasets.enable_progress_bars()
    try:
        with pytest.raises(Interrupted, match="stopped by SIGINT"):
            run_cli(fit_config(tmp_path, coco_root, backbones, tmp_path / "checkpoints"))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning's left it SIG_IGN
    finally:
        signal.signal(signal.SIGINT, started)
    assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()


def test_a_stop_signal_ends_a_run_waiting_for_its_other_processes_to_join(monkeypatch):
    # `#SBATCH --ntasks-per-node=2` run without srun: rank 0 waits in C++ for a rank 1 that never comes, where the Python
    # handlers that turn SIGTERM and Ctrl-C into a clean stop never run - `timeout`'s SIGTERM did nothing, only SIGKILL
    # ended the job (measured: exit 137 after timeout -k; with the default actions while joining, SIGTERM ends it)
    from mmcaption.errors import signals_stop

    seen = []

    def join(*args, **kwargs):  # as torch's, which Lightning calls by its module attribute
        seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), args, kwargs))
        return "joined"

    monkeypatch.setattr(torch.distributed, "init_process_group", join)
    with signals_stop():
        stop = signal.getsignal(signal.SIGTERM)
        assert torch.distributed.init_process_group("gloo", rank=0) == "joined"
        assert signal.getsignal(signal.SIGTERM) is stop  # a clean stop again once it has joined
    assert seen == [(signal.SIG_DFL, signal.SIG_DFL, ("gloo",), {"rank": 0})]
    assert torch.distributed.init_process_group is join
    # but not in the process that launched the other ranks (Lightning's launcher watches its children from a thread):
    # killed outright, it left them waiting for it for the process group's 30 minutes; its clean stop ends them

    class _ChildProcessObserver(threading.Thread):
        def __init__(self, children: list) -> None:
            super().__init__(target=time.sleep, args=(2,), daemon=True)
            self._child_processes = children

    observer = _ChildProcessObserver([subprocess.Popen])  # (a child process as Lightning's launcher keeps it)
    observer.start()
    with signals_stop():
        stop = signal.getsignal(signal.SIGTERM)
        torch.distributed.init_process_group("gloo", rank=0)
    assert seen[-1][:2] == (stop, stop)
    observer.join()
    # a launcher that started no child (--trainer.num_nodes 2 with one device: it waits for another machine's process)
    # watches none, and its observer was taken for a launcher's: SIGTERM and Ctrl-C did nothing, only SIGKILL ended it
    observer = _ChildProcessObserver([])
    observer.start()
    with signals_stop():
        torch.distributed.init_process_group("gloo", rank=0)
    assert seen[-1][:2] == (signal.SIG_DFL, signal.SIG_DFL)


def test_a_slurm_job_of_several_tasks_without_tasks_per_node_is_refused_in_a_line(backbones, coco_root, tmp_path, capsys,
                                                                                    monkeypatch):
    # `#SBATCH --ntasks=2` alone: Lightning's RuntimeError, 40 lines of traceback and exit status 1
    monkeypatch.chdir(tmp_path)
    for name, value in {"SLURM_JOB_ID": "4711", "SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train.sh", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    message = user_error(capsys, main, fit_config(tmp_path, coco_root, backbones, tmp_path / "checkpoints"))
    assert message.startswith("error: the SLURM job's tasks (#SBATCH --ntasks-per-node, as many as --trainer.devices, and "
                              "the command started with srun): You set `--ntasks=2` in your SLURM bash script")


def test_an_unwritable_checkpoint_or_log_folder_fails_before_training(backbones, coco_root, trained_checkpoint, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    no_backbones(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root (who may write anywhere else)
    # the settings that name the folders said (a container's read-only working folder: which to change was a guess)
    with pytest.raises(NotWritableError, match=rf"cannot write checkpoints \(ModelCheckpoint's dirpath, or "
                                               rf"trainer.default_root_dir\) to {blocker}/checkpoints"):
        run_cli(fit_config(tmp_path, coco_root, backbones, blocker / "checkpoints"))
    with pytest.raises(NotWritableError, match=rf"cannot write logs \(trainer.logger's save_dir, or trainer.default_root_dir\) "
                                               rf"to {blocker}/logs"):
        run_cli(fit_config(tmp_path, coco_root, backbones, tmp_path / "checkpoints", log_dir=blocker / "logs"))
    # validate writes its results where it runs (no logger): refused before the model loads, not after generating
    validate = ["validate", *fit_config(tmp_path, coco_root, backbones, tmp_path / "checkpoints")[1:]]
    with pytest.raises(NotWritableError, match=rf"cannot write evaluation results \(trainer.default_root_dir\) to {blocker}/here"):
        run_cli([*validate, "--ckpt_path", str(trained_checkpoint), "--trainer.default_root_dir", str(blocker / "here")])
    # a dataset on a read-only mount keeps its default cache beside it: named with the setting, not a traceback
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(blocker / "cache"), tokenizer=str(backbones[0]),
                             image_processor=str(backbones[1]))
    with pytest.raises(NotWritableError, match=rf"cannot write the preprocessed split train2017 to {blocker}/cache: {blocker} "
                                                "is a file, not a folder; set data.init_args.cache_dir to a folder you can write"):
        data.prepare_data()  # (was "Not a directory")
    data = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(blocker), tokenizer=str(backbones[0]),
                             image_processor=str(backbones[1]))
    with pytest.raises(NotWritableError, match=rf"to {blocker}: {blocker} is a file, not a folder"):
        data.prepare_data()  # the cache_dir itself a file: was "File exists"
    if os.geteuid() != 0:  # permissions do not stop root
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        with pytest.raises(NotWritableError, match="read-only"):
            run_cli(fit_config(tmp_path, coco_root, backbones, read_only / "checkpoints"))


HOLD_LOCK = """
import sys, time
from mmcaption.folders import FolderLock
FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_locked_checkpoint_folder_is_refused_naming_the_first(backbones, coco_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    no_backbones(monkeypatch)
    folder = tmp_path / "checkpoints"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "locked"
        # on a cluster's shared disk the PID may be another node's: its host and user are named too
        with pytest.raises(FolderLockedError, match=rf"{folder} is being written by another run \(PID, host, user and command: "
                                                    rf"{first.pid} on {re.escape(socket.gethostname())}, "):
            run_cli(fit_config(tmp_path, coco_root, backbones, folder))
    finally:
        first.kill()
        first.wait()
    # the lock dies with its process, however it ends (here: SIGKILL): the folder is free again
    lock = FolderLock(folder)
    lock.acquire()
    assert lock.path.read_text().startswith(f"{os.getpid()} ")
    lock.release()
    assert not lock.path.exists()


TRY_LOCK = """
import sys
from mmcaption.folders import FolderLock, FolderLockedError
try:
    FolderLock(sys.argv[1]).acquire()
    print("locked")
except FolderLockedError as error:
    print(error)
"""


def test_a_checkpoint_folder_removed_under_a_training_run_is_locked_again_at_its_next_step(tmp_path):
    # `rm -rf checkpoints/demo-caption` while the run trains took its lock with it: a second fit started there was not
    # refused, and the two trained into one folder, each one's top-k cleanup deleting the other's checkpoints
    import shutil
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from mmcaption.folders import take_checkpoint_folder
    from mmcaption.run_callbacks import FolderKept

    folder = tmp_path / "checkpoints" / "demo-caption"
    take_checkpoint_folder(folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def second_run() -> str:
        return subprocess.run([sys.executable, "-c", TRY_LOCK, str(folder)], capture_output=True, text=True, env=env,
                              timeout=60).stdout.strip()

    try:
        assert "is being written by another run" in second_run()
        shutil.rmtree(folder)
        trainer = SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(dirpath=folder)])
        FolderKept().on_train_batch_end(trainer, None, None, None, 0)  # the run's next step
        said = second_run()
        assert said.startswith(f"{folder.resolve()} is being written by another run (PID, host, user and command: {os.getpid()} "), said
        kept = FolderKept()
        kept.on_train_batch_end(trainer, None, None, None, 1)  # nothing removed: nothing done
        from mmcaption.folders import _same_file

        stale = OSError(116, "Stale file handle")  # the lock removed from another machine, on NFS: taken again, not a crash

        def fstat(descriptor):
            raise stale
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(os, "fstat", fstat)
            assert _same_file(0, folder / ".mmcaption.lock") is False
        assert (folder / ".mmcaption.lock").read_text().startswith(f"{os.getpid()} ")
        # removed again, and another run took the folder before this one's next step: said once, and this run goes on
        # (stopped mid-step, it lost what it trained since its last save)
        shutil.rmtree(folder)
        other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert other.stdout.readline().strip() == "locked"
            with pytest.warns(UserWarning, match=rf"the checkpoint folder was removed under this run, and {re.escape(str(folder.resolve()))} "
                                                 rf"is being written by another run \(PID, host, user and command: {other.pid} .*\) now: "
                                                 r"this run's saves go there beside that run's"):
                kept.on_train_batch_end(trainer, None, None, None, 2)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                kept.on_train_batch_end(trainer, None, None, None, 3)
        finally:
            other.kill()
            other.wait()
    finally:
        FolderLock(folder).release()


def test_a_teammates_lock_file_follows_the_umask_and_one_left_by_a_killed_run_is_taken_over(tmp_path, monkeypatch):
    # the lock was made -rw-r--r-- whatever the umask: after a teammate's run was killed, the next one in the group
    # folder could not open it and ended in a PermissionError's traceback
    folder = tmp_path / "checkpoints"
    previous = os.umask(0o002)
    try:
        lock = FolderLock(folder)
        lock.acquire()
        assert oct(lock.path.stat().st_mode & 0o777) == "0o664"
    finally:
        os.umask(previous)
    os.close(FolderLock._held.pop(lock.path))  # as a killed run leaves it: the file there, no process holding it

    real_open = os.open

    real_unlink, removed = os.unlink, []

    def not_ours(path, flags, *args):  # another user's file, which this user may read but not write, until it is removed
        if str(path) == str(lock.path) and flags & os.O_RDWR and not removed:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    def unlink(path, *args, **kwargs):
        removed.append(str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)

    monkeypatch.setattr(os, "open", not_ours)
    taken = FolderLock(folder)
    taken.acquire()
    assert removed == [str(lock.path)] and taken.path.read_text().startswith(f"{os.getpid()} ")
    taken.release()


def test_files_of_another_user_and_too_large_files_are_one_line(tmp_path):
    from mmcaption.resources import resource_message

    cache = tmp_path / "cache" / "train2017-0123"
    cache.mkdir(parents=True)
    (cache / "meta.json").write_text("{}")
    (cache / "meta.json").chmod(0o600)
    denied = PermissionError(13, "Permission denied", str(cache / "meta.json"))
    message = resource_message(denied)
    assert message.startswith(f"permission denied: {cache / 'meta.json'} (Permission denied); {cache / 'meta.json'} belongs to ")
    assert "mode -rw-------. Point the setting that names it (data.init_args.cache_dir" in message
    # inside another user's private folder even stat() is refused: the message was a traceback of its own
    private = tmp_path / "alice"
    real_stat = Path.stat

    def refused(path, *args, **kwargs):
        if private in (path, *path.parents) and path != private:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    private.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "stat", refused)
        inside = resource_message(PermissionError(13, "Permission denied", str(private / "cache" / "meta.json")))
    assert inside.startswith(f"permission denied: {private / 'cache' / 'meta.json'} (Permission denied); {private} belongs to ")
    too_large = OSError(27, "File too large", str(tmp_path / "last.ckpt"))
    assert resource_message(too_large).startswith(f"{tmp_path / 'last.ckpt'} grew larger than its disk or this process may "
                                                  "write (File too large): FAT32 drives hold files of up to 4 GB")


HOLD_OUTPUT_LOCK = """
import sys, time
from pathlib import Path
from mmcaption.folders import output_lock
output_lock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_predict_into_the_same_output_is_refused_naming_the_first(backbones, image_folder, tmp_path):
    # two terminals with the config's default output: both wrote one partial file, and the second's summary
    # spoke for a file of mixed rows while the first ended in a traceback
    from mmcaption.data import CaptionPredictDataModule

    output = tmp_path / "predictions" / "captions.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen([sys.executable, "-c", HOLD_OUTPUT_LOCK, str(output)], stdout=subprocess.PIPE, text=True, env=env)
    data = CaptionPredictDataModule(images=str(image_folder), output=str(output), tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]))
    try:
        assert first.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"output {output} is being written by another run \(PID, host, user and command: "
                                                    rf"{first.pid} .*\); wait for it to end, or give this run another --data.output"):
            data.check_output()
    finally:
        first.kill()
        first.wait()
    assert data.check_output() == output  # free again once the first run has ended, however it ended


# -- a user's error is one line, exit 2 --------------------------------------------------------------------


def test_user_errors_are_one_line_with_exit_2_and_a_traceback_on_request(backbones, coco_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, bad)
    message = user_error(capsys, main, ["predict", "--ckpt_path", str(bad), "--data", "mmcaption.data.CaptionPredictDataModule",
                                        "--data.images", str(tmp_path)])
    assert f"{bad}: refused" in message and "weights_only=False" not in message  # not PyTorch's advice

    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--model.init_from", "nope.ckpt"])
    assert "model.init_from nope.ckpt not found" in message
    # resumed, a run does not read init_from (it started from it): the stage before's folder may be gone
    from mmcaption.command_checks import check_command

    resumed = tmp_path / "resumed.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.0", "hyper_parameters": {}, "state_dict": {}, "optimizer_states": []}, resumed)
    check_command([*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--model.init_from", "nope.ckpt",
                   "--ckpt_path", str(resumed)])  # was "model.init_from nope.ckpt not found"
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")  # said each time, not once a process
    with warnings.catch_warnings():  # `python -W error`: Lightning's CLI met jsonargparse's deprecation of what it calls
        warnings.simplefilter("error")
        check_command(fit_config(tmp_path, coco_root, backbones, tmp_path / "c"))

    missing = tmp_path / "missing.csv"
    message = user_error(capsys, main, ["prepare", "--model.config.language_model", str(backbones[0]),
                                        "--model.config.vision_model", str(backbones[1]),
                                        "--data", "mmcaption.data.CaptionDataModule", "--data.data_dir", str(missing)])
    assert "COCO annotation file not found" in message

    monkeypatch.setenv("MMCAPTION_TRACEBACK", "1")  # for bug reports: the exception itself
    with pytest.raises(ConfigError, match="model.init_from nope.ckpt not found"):
        main([*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--model.init_from", "nope.ckpt"])


def test_the_console_script_prints_one_line_for_an_unsafe_checkpoint(tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, bad)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "mmcaption", "predict", "--ckpt_path", str(bad), "--data",
                             "mmcaption.data.CaptionPredictDataModule", "--data.images", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: refused")
    assert "Traceback" not in result.stderr and "this ran" not in result.stdout


def test_an_error_raised_in_a_data_loader_worker_is_reported_by_its_own_message():
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nmmcaption.data.records.DataError: data.json, record 3: no captions')
    assert one_line(RuntimeError(wrapped)) == "data.json, record 3: no captions"
    assert one_line(OutputExistsError("a\n  b")) == "a b"


class SignalAtBatch(Callback):
    """What ``docker stop`` or Ctrl-C does to a running ``predict``: the signal arrives mid-run."""

    def __init__(self, batch: int, signum: int) -> None:
        self.batch, self.signum = batch, signum

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_in_predict_with_overwrite_keeps_the_earlier_output_and_the_rows_done(
    backbones, trained_checkpoint, image_folder, tmp_path, signum, monkeypatch, caplog
):
    quiet_lightning()  # as the CLI runs: Lightning's "[rank: 0] Received SIGTERM: 15" came before mmcaption's own line
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 3)  # 12 questions, 6 batches of 2
    output = tmp_path / "answers.csv"
    output.write_text("the complete answers of an earlier run\n")
    dm = choice_data(backbones, questions, output)
    dm.overwrite = True
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[SignalAtBatch(1, signum)])

    def run() -> None:
        trainer.predict(module, datamodule=dm)

    said = []
    monkeypatch.setattr("mmcaption.predictions.rank_zero_info", said.append)
    with pytest.raises(SystemExit) as exit_info:  # as the console script runs it
        user_errors_exit(run)()
    assert exit_info.value.code == 128 + signum  # 143 / 130, not Lightning's 1 (SIGTERM: not ignored)
    assert not [r for r in caplog.records if "Received SIG" in r.getMessage()]
    assert output.read_text() == "the complete answers of an earlier run\n"
    kept = tmp_path / "answers.interrupted.csv"
    with kept.open() as handle:
        assert len(list(csv.DictReader(handle))) == 2  # batch 0 (the signal came before batch 1 was written)
    summary = json.loads(kept.with_name("answers.interrupted.csv.summary.json").read_text())
    assert summary["rows"] == 2 and summary["interrupted"] == signal.Signals(signum).name and summary["output"] == str(kept)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the process's own handling is back
    # how to go on is said (nothing was; the same command with --data.resume true was refused in words no one could act on)
    assert any(f"the same command with --data.output {kept} --data.resume true, in place of --data.overwrite true, goes on "
               "from them" in line for line in said), said
    dm.resume = True
    with pytest.raises(ConfigError, match=rf"--data.resume true goes on from an interrupted output and --data.overwrite true "
                                          rf"starts it afresh: give one of them; an interrupted --data.overwrite run kept its "
                                          rf"rows in {kept}: give it as --data.output"):
        dm.check_output()
    # (as a second interrupted --data.overwrite run names its rows, the first's kept: its completion was said to go to
    # answers-2.csv, beside the earlier output it was meant to replace)
    second = kept.with_name("answers.interrupted-2.csv")
    for name in (".summary.json", ".started.json"):
        if kept.with_name(kept.name + name).exists():
            kept.with_name(kept.name + name).rename(second.with_name(second.name + name))
    kept.rename(second)
    dm.overwrite, dm.output = False, second
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).predict(module, datamodule=dm)
    with second.open() as handle:
        assert len(list(csv.DictReader(handle))) == 12  # the 2 rows kept, and the 10 after them
    # where the completed rows were going is said (the output kept its .interrupted name without a word)
    assert "complete now: rename it (and its .summary.json) to answers.csv to put it in place of the earlier output" in said[-1]


def test_sigterm_while_preprocessing_removes_the_staging_folder_and_exits_143(tmp_path):
    target = tmp_path / "preprocessed" / "train2017-0123"

    def preprocess() -> None:
        with publish_atomically(target) as staging:
            (staging / "images").mkdir()
            os.kill(os.getpid(), signal.SIGTERM)  # docker stop, half-way
            raise AssertionError("not reached")

    with pytest.raises(SystemExit) as exit_info:
        user_errors_exit(preprocess)()
    assert exit_info.value.code == 143
    assert not target.exists() and not list(target.parent.iterdir())  # no hidden .partial left behind


def test_a_second_signal_while_a_command_stops_waits_for_its_data_loader_workers_to_end(monkeypatch, capsys):
    """docker stop after Ctrl-C, or Ctrl-C pressed twice: the second signal came while the stopped command's
    DataLoader shut its workers down. Raised there, it cut the shutdown short; the workers (which ignore
    signals, leaving stopping to the main process) were never told to end, and the process hung at exit."""
    shutdown = _MultiProcessingDataLoaderIter._shutdown_workers
    signalled = []

    def shutdown_signalled(self) -> None:
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # pressed again while stopping
            os.kill(os.getpid(), signal.SIGTERM)
        shutdown(self)

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", shutdown_signalled)
    workers = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # as the process was started (a shell's
    # background job starts with SIGINT ignored)

    def command() -> None:
        batches = iter(DataLoader(range(8), batch_size=2, num_workers=2, worker_init_fn=worker_init))
        next(batches)
        workers.extend(batches._workers)
        os.kill(os.getpid(), signal.SIGTERM)  # docker stop
        raise AssertionError("not reached")

    with pytest.raises(SystemExit) as exit_info:
        user_errors_exit(command)()
    assert exit_info.value.code == 143
    for worker in workers:
        worker.join(timeout=10)
    assert workers and not any(worker.is_alive() for worker in workers)  # told to end while stopping, and ended
    assert signalled  # and the signals came in the middle of that
    said = capsys.readouterr().err.splitlines()
    assert said == ["SIGINT received while stopping: finishing the cleanup first (kill -9 stops at once)", "stopped by SIGTERM"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the process's own handling back


def test_a_build_killed_outright_leaves_a_staging_folder_that_the_next_build_removes(backbones, coco_root, tmp_path, capsys):
    lm, vision = backbones
    dm = CaptionDataModule(data_dir=shutil.copytree(coco_root, tmp_path / "coco"), tokenizer=lm, image_processor=vision,
                           cache_image_features=True, vision_feature_layer=-2, batch_size=4, num_workers=0)
    target = dm.split_folder("train2017")
    # what SIGKILL (the OOM killer, a power cut) half-way through building the split leaves: nothing runs cleanup
    leftover = target.parent / f".{target.name}.k1ll3d.partial"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images" / "data-00000-of-00001.arrow").write_bytes(b"\0" * 3 * 2**20)
    other = target.parent / ".train2017-0123456789abcdef.x.partial"  # another build's (other settings), whose lock
    other.mkdir()  # no process holds: killed too, and removed (it stayed for good once the settings had changed)
    dm.prepare_data()
    assert is_complete(target) and not leftover.exists() and not other.exists()
    err = capsys.readouterr().err
    assert f"removed {leftover} (3.0 MB)" in err and "killed" in err
    # without the build's lock (another process may be writing it) a staging folder is left alone
    alive = target.parent / f".{target.name}.al1ve.partial"
    alive.mkdir()
    with publish_atomically(target.parent / "elsewhere"):
        pass
    shutil.rmtree(target)
    with publish_atomically(target):
        pass
    assert alive.is_dir()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_a_preprocessed_split_folder_gets_the_permissions_the_umask_gives(tmp_path, umask, mode):
    from PIL import Image

    from mmcaption.data.cache import folder_signature

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "1.png")
    previous = os.umask(umask)  # was always private (mkdtemp's 0700): a team's shared cache unreadable by the others
    try:
        with publish_atomically(tmp_path / "cache" / "train2017-0123") as staging:
            (staging / "meta.json").write_text("{}")
        folder_signature(tmp_path / "images", tmp_path / "cache")  # and its images' hashes, which others then made again
    finally:
        os.umask(previous)
    assert (tmp_path / "cache" / "train2017-0123").stat().st_mode & 0o777 == mode
    [hashes] = (tmp_path / "cache").glob("image-hashes/*.json")
    assert hashes.stat().st_mode & 0o777 == mode & 0o666


def test_a_preprocessed_split_folder_in_a_teams_setgid_folder_keeps_the_bit(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)  # a team's cache: new folders take the folder's group
    with publish_atomically(shared / "train2017-0123") as staging:
        (staging / "meta.json").write_text("{}")
    assert (shared / "train2017-0123").stat().st_mode & 0o2000


def test_a_full_disk_while_preprocessing_is_said_in_one_line_and_leaves_no_staging_folder(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    import errno

    import mmcaption.data.split_build as cache

    lm, vision = backbones
    dm = CaptionDataModule(data_dir=str(shutil.copytree(coco_root, tmp_path / "coco")), tokenizer=str(lm),
                           image_processor=str(vision), batch_size=4, num_workers=0)

    def full(table, folder):  # as the Arrow writer fails on a full disk, wrapped as `datasets` wraps it
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "data-00000-of-00001.arrow"))
        except OSError as error:
            raise RuntimeError("An error occurred while generating the dataset") from error

    monkeypatch.setattr(cache, "save_table", full)
    with pytest.raises(SystemExit) as exit_info:
        user_errors_exit(dm.prepare_data)()
    assert exit_info.value.code == 2  # the user's to fix, not a bug's traceback (exit 1)
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # one line, no traceback
    assert err.startswith("error: the disk is full while writing ") and "data-00000-of-00001.arrow (No space left on device)" in err
    assert "GB free there now" in err and "run the same command again" in err
    assert not list((tmp_path / "coco" / "preprocessed").glob(".*partial"))  # the half-written split is gone
    # pyarrow's own message carries the errno in its text only
    assert disk_full(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")) is not None
    assert disk_full(RuntimeError("something else")) is None
    # ... and a full disk whose error names no file (pyarrow's, datasets' own): said with the split being built (was "the
    # disk is full (No space left on device)", naming no folder), and that a split takes up to twice its size as it is built
    def unnamed(table, folder):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(cache, "save_table", unnamed)
    with pytest.raises(SystemExit):
        user_errors_exit(dm.prepare_data)()
    [err] = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert re.match(rf"error: the disk is full while writing {re.escape(str(tmp_path / 'coco' / 'preprocessed'))}/train2017-[0-9a-f]+ "
                    r"\(No space left on device; a split takes up to three times its images' size while it is built \(the image "
                    r"pass's work kept till then\)\); [\d.]+ GB free there now", err), err


CUDA_OUT_OF_MEMORY = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.06 GiB "
                      "is free. Of the allocated memory 76.20 GiB is allocated by PyTorch. If reserved but unallocated memory is "
                      "large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def test_running_out_of_gpu_memory_says_where_which_settings_take_less_and_the_checkpoint_kept(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "c"
    args = [*fit_config(tmp_path, coco_root, backbones, folder), "--trainer.max_steps", "4", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "3"]
    training_step = MultimodalCaptioner.training_step

    def longer_batch_at_step_3(self, batch, batch_idx):  # after the first epoch's checkpoint
        if self.trainer.global_step == 2:
            raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(MultimodalCaptioner, "training_step", longer_batch_at_step_3)
    message = user_error(capsys, main, args)
    assert message.startswith("error: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
                              "of which 1.06 GiB is free. It ran out in training step 3. To fit: lower --data.batch_size (4) "
                              "and raise --trainer.accumulate_grad_batches (1) by as much to keep the batch, or set "
                              "--model.config.gradient_checkpointing true, or lower --data.max_length (64).")
    kept = folder / "last.ckpt"
    assert f"Kept: {kept}, saved at step 2; --ckpt_path {kept} resumes it" in message and kept.is_file()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in message  # PyTorch's statistics and hints: MMCAPTION_TRACEBACK=1 shows them

    def out_of_memory_in_validation(self, batch, batch_idx, dataloader_idx=0):
        raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)

    monkeypatch.setattr(MultimodalCaptioner, "validation_step", out_of_memory_in_validation)
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "d"),
                                        "--data.init_args.eval_batch_size", "3"])
    assert message.endswith("It ran out in the validation check before training. To fit: lower --data.eval_batch_size (3).")


def test_running_out_of_ram_is_one_line_and_other_errors_keep_their_traceback(capsys):
    def allocate():
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator's own error

    with pytest.raises(SystemExit) as exit_info:
        user_errors_exit(allocate)()
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: out of memory in RAM: ") and f"you tried to allocate {2**62} bytes." in line
    assert line.endswith("Close what else uses that memory, or use a device with more")  # outside a run
    assert out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")) is not None
    assert out_of_memory(RuntimeError("index out of range")) is None
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import RunningStage

    from mmcaption.advice import memory_advice

    trainer = SimpleNamespace(datamodule=SimpleNamespace(num_workers=8), global_step=0, checkpoint_callback=None,
                              state=SimpleNamespace(stage=RunningStage.TRAINING, fn="fit"))  # fit says training from its start
    module = SimpleNamespace(model=None, config=SimpleNamespace(quantization="none"), generation={"num_beams": None})
    assert memory_advice(trainer, module) == "It ran out preparing the data, before the model loads. To fit: lower --data.num_workers (8)."
    module.loading = True
    assert memory_advice(trainer, module) == "It ran out loading the model. To fit: set --model.config.quantization nf4 (none)."
    try:  # a bug met while handling an out-of-memory error is that bug, with its traceback
        try:
            raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)
        except torch.OutOfMemoryError:
            raise KeyError("a bug in a handler")  # noqa: B904 - met while handling, as a handler's bug is
    except KeyError as bug:
        assert out_of_memory(bug) is None
    with pytest.raises(ValueError):
        user_errors_exit(lambda: int("x"))()


def _stage_checkpoint(path: Path, stage: str, init_from: str | None = None) -> str:
    torch.save({"training_data": {"stage": stage}, "state_dict": {}, "hyper_parameters": {"init_from": init_from}}, path)
    return str(path)


def test_the_pipeline_resumes_the_stage_whose_checkpoint_it_is_given(tmp_path, monkeypatch, capsys):
    """An interrupted pipeline says "the same command with --ckpt_path <its checkpoint>": that must resume
    that stage, not hand a caption checkpoint to the instruct stage too (which refuses it, hours later)."""
    calls = []

    class Finished:
        def __init__(self, args):
            calls.append(args)

    monkeypatch.setattr(pipeline, "run_cli", Finished)
    monkeypatch.setattr(pipeline, "handoff_checkpoint", lambda cli: "caption-best.ckpt")
    caption = _stage_checkpoint(tmp_path / "caption.ckpt", "caption")
    pipeline.run_pipeline("c.yaml", "i.yaml", ["--trainer.max_steps", "9", "--ckpt_path", caption], check=False)
    assert calls == [["fit", "--config", "c.yaml", "--trainer.max_steps", "9", "--ckpt_path", caption],
                     ["fit", "--config", "i.yaml", "--model.init_from", "caption-best.ckpt", "--trainer.max_steps", "9"]]
    # each stage's line is the command it runs, whole (copied to run one stage again, it left the other arguments out)
    out = capsys.readouterr().out
    assert f"== stage 1, captions: mmcaption fit --config c.yaml --trainer.max_steps 9 --ckpt_path {caption} ==" in out
    assert "== stage 2, instructions: mmcaption fit --config i.yaml --model.init_from caption-best.ckpt --trainer.max_steps 9 ==" in out
    calls.clear()
    # the caption stage is done: not run again; the instruct stage keeps the init_from it started from
    instruct = _stage_checkpoint(tmp_path / "instruct.ckpt", "instruct", init_from=caption)
    stages = pipeline.run_pipeline("c.yaml", "i.yaml", [f"--ckpt_path={instruct}"], check=False)
    assert calls == [["fit", "--config", "i.yaml", "--model.init_from", caption, "--ckpt_path", instruct]]
    # both stages named still (the summary had no caption line, and the demo, unpacking two, failed after training)
    assert [(stage.name, stage.checkpoint) for stage in stages] == [("caption", caption), ("instruct", "caption-best.ckpt")]
    assert stages[0].cli is None  # trained by an earlier command
    calls.clear()
    pipeline.run_pipeline("c.yaml", "i.yaml", ["--ckpt_path", "last"], check=False)  # each stage its own last
    assert [call[-2:] for call in calls] == [["--ckpt_path", "last"], ["--ckpt_path", "last"]]

    # stage 1 trained on, and stage 2 went on from its own checkpoint, made from stage 1's older weights: said
    handed_on = tmp_path / "caption-best.ckpt"
    handed_on.write_bytes(b"stage 1 at step 6")
    monkeypatch.setattr(pipeline, "handoff_checkpoint", lambda cli: str(handed_on))

    class Resumed(Finished):
        model = types.SimpleNamespace(init_source={"sha256": hashlib.sha256(b"stage 1 at step 3").hexdigest(), "global_step": 3})

    monkeypatch.setattr(pipeline, "run_cli", Resumed)
    pipeline.run_pipeline("c.yaml", "i.yaml", ["--trainer.default_root_dir", "runs/p", "--ckpt_path", "last"], check=False,
                          stage_args={"instruct": ["--data.init_args.batch_size", "4"]})
    assert (f"note: stage 2 went on from its own checkpoint, whose run started from stage 1's weights at step 3; {handed_on} "
            "has changed since, and that training does not reach stage 2. To start stage 2 from it, run it anew: mmcaption "
            "fit --config i.yaml --data.init_args.batch_size 4 --trainer.default_root_dir runs/p --model.init_from "
            f"{handed_on}\n") in capsys.readouterr().err
    Resumed.model.init_source["sha256"] = hashlib.sha256(b"stage 1 at step 6").hexdigest()  # stage 1 was already done
    pipeline.run_pipeline("c.yaml", "i.yaml", ["--ckpt_path", "last"], check=False)
    assert "note: stage 2" not in capsys.readouterr().err
    monkeypatch.setattr(pipeline, "handoff_checkpoint", lambda cli: "caption-best.ckpt")

    def stopped_in_stage_2(args):  # Ctrl-C while the instruct stage preprocesses LLaVA: no checkpoint of its own yet
        if "i.yaml" in args:
            raise Interrupted(signal.SIGINT)
        return Finished(args)

    monkeypatch.setattr(pipeline, "run_cli", stopped_in_stage_2)
    with pytest.raises(Interrupted, match="stopped by SIGINT in stage 2, before its first checkpoint; stage 1 is done: run "
                                          "the same command with --ckpt_path caption-best.ckpt") as stop:
        pipeline.run_pipeline("c.yaml", "i.yaml", [], check=False)  # was "stopped by SIGINT", and a re-run trained stage 1 again
    assert stop.value.exit_code == 130
    # stage 1's last checkpoint, not its best: resumed from its best (an earlier step), stage 1 trained on to its end
    folder = tmp_path / "checkpoints-caption"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"")
    callback = types.SimpleNamespace(dirpath=str(folder), last_model_path="/moved/project/checkpoints-caption/last.ckpt")
    Finished.trainer = types.SimpleNamespace(checkpoint_callback=callback)
    with pytest.raises(Interrupted, match=rf"stage 1 is done: run the same command with --ckpt_path {folder / 'last.ckpt'} to"):
        pipeline.run_pipeline("c.yaml", "i.yaml", [], check=False)

    def refused_in_stage_2(args):  # a setting or the data of stage 2 refused: the same command trained stage 1 anew
        if "i.yaml" in args:
            raise ConfigError("data.init_args.train_file not found")
        return Finished(args)

    monkeypatch.setattr(pipeline, "run_cli", refused_in_stage_2)
    with pytest.raises(ConfigError, match="train_file not found"):
        pipeline.run_pipeline("c.yaml", "i.yaml", [], check=False)
    assert (f"note: stage 1 is done; once stage 2's problem below is mended, run the same command with --ckpt_path "
            f"{folder / 'last.ckpt'} to go on without training stage 1 again") in capsys.readouterr().err


def test_a_new_fit_into_a_folder_with_an_earlier_runs_checkpoints_says_how_to_continue_it(tmp_path, capsys):
    from mmcaption.checkpoint_folders import earlier_checkpoints_note

    folder = tmp_path / "checkpoints" / "caption"
    earlier_checkpoints_note(folder)  # no folder yet, then an empty one: nothing to say
    folder.mkdir(parents=True)
    (folder / ".mmcaption.lock").write_text("12345 mmcaption fit")  # left by a killed run: not a checkpoint
    earlier_checkpoints_note(folder)
    assert capsys.readouterr().err == ""
    torch.save({"global_step": 16, "state_dict": {}}, folder / "last.ckpt")
    earlier_checkpoints_note(folder)
    err = capsys.readouterr().err
    assert f"note: {folder} holds an earlier run's checkpoints (last.ckpt; last.ckpt is at step 16). This run starts at step 0" in err
    # named by its file: the keyword "last" is this run's last-v1.ckpt once the stop the note asks for has saved it
    assert f"last.ckpt stays the earlier run's. To continue that run instead, stop and add --ckpt_path {folder / 'last.ckpt'}" in err
    assert "saves beside them under new names (last-v1.ckpt, ...)" in err
    torch.save({"global_step": 8, "state_dict": {}}, folder / "last-v1.ckpt")  # a third run: Lightning writes last-v2
    os.utime(folder / "last.ckpt", (1_000_000, 1_000_000))  # the first run's, older than the second's
    earlier_checkpoints_note(folder)
    err = capsys.readouterr().err
    assert "saves beside them under new names (last-v2.ckpt, ...)" in err
    # the run to continue is the newest, named by its file (Lightning's `last` is the newest last*.ckpt): the note spoke of
    # last.ckpt, the oldest run's, and said `last`, which resumed another run
    assert "(last-v1.ckpt, last.ckpt; the newest, last-v1.ckpt, is at step 8)" in err
    assert f"To continue the newest run instead, stop and add --ckpt_path {folder / 'last-v1.ckpt'};" in err
    os.utime(folder / "last-v1.ckpt", (500_000, 500_000))  # last.ckpt newer: it is named
    earlier_checkpoints_note(folder)
    assert "; last.ckpt is at step 16). " in capsys.readouterr().err
    earlier_checkpoints_note(folder, saves_last=False)  # a ModelCheckpoint without save_last writes no last-v2.ckpt
    assert "saves beside them under its own names;" in capsys.readouterr().err
    (folder / "last.ckpt").unlink()
    (folder / "last-v1.ckpt").rename(folder / "epoch=0-step=8.ckpt")  # no last.ckpt: this run's last is last.ckpt
    earlier_checkpoints_note(folder)
    err = capsys.readouterr().err
    assert "new names (last.ckpt, ...); to continue that run instead, stop and add --ckpt_path " + str(folder / "epoch=0-step=8.ckpt") in err
    assert "stays the earlier run's" not in err


def test_predict_needs_trained_weights_names_files_that_are_not_checkpoints_and_keeps_a_users_config_yaml(
    backbones, trained_checkpoint, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("# my own settings\n")  # predict ran without a run folder wrote its config here
    output = tmp_path / "captions.jsonl"
    base = ["predict", "--data", "mmcaption.data.CaptionPredictDataModule", "--data.images", str(image_folder),
            "--data.output", str(output), "--trainer.enable_progress_bar", "false",
            "--model.config.language_model", str(backbones[0]), "--model.config.vision_model", str(backbones[1])]
    assert "predict needs trained weights: give --ckpt_path" in user_error(capsys, main, base)  # was: untrained captions
    assert not output.exists()

    yaml_file = tmp_path / "caption.yaml"
    yaml_file.write_text("model:\n  learning_rate: 1.0e-3\n")
    assert "not a file torch.save writes" in user_error(capsys, main, [*base, "--ckpt_path", str(yaml_file)])  # not "unsafe"
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, weights)
    assert "is not a checkpoint of mmcaption fit (Lightning did not write it)" in user_error(
        capsys, main, [*base, "--ckpt_path", str(weights)])
    assert "is a folder, not a checkpoint file" in user_error(capsys, main, [*base, "--ckpt_path", str(tmp_path)])
    # another project's Lightning checkpoint: its settings were laid over the command ("Subcommand 'predict' does not
    # accept option 'model.hidden'"), never saying whose the file is
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"l.weight": torch.ones(1)},
                "hyper_parameters": {"hidden": 4, "lr": 0.1}}, weights)
    assert user_error(capsys, main, [*base, "--ckpt_path", str(weights)]) == (
        f"error: --ckpt_path {weights} is not a checkpoint of mmcaption fit (Lightning wrote it for another model, of "
        "settings hidden, lr): give a .ckpt file from a run's checkpoint folder (checkpoints/<stage>/last.ckpt)")
    torch.save({"weights": {}}, weights)  # was: KeyError 'state_dict'
    assert "not a checkpoint of mmcaption fit (it has no state_dict; its keys: ['weights'])" in user_error(
        capsys, main, [*base, "--model.init_from", str(weights)])

    main([*base, "--ckpt_path", str(trained_checkpoint)])
    assert len(output.read_text().splitlines()) == 3
    assert (tmp_path / "config.yaml").read_text() == "# my own settings\n"
    capsys.readouterr()  # init_from (a config's is the stage before's): said whose weights are used
    with pytest.raises(SystemExit):  # (refused after the note: init_from does not bring the checkpoint's LoRA rank)
        main([*base, "--model.init_from", str(trained_checkpoint), "--data.output", str(tmp_path / "again.jsonl")])
    assert f"note: no --ckpt_path: predict uses the trained weights of model.init_from, {trained_checkpoint}" in capsys.readouterr().err


def test_the_pipeline_hands_on_the_checkpoint_in_its_own_folder_after_the_project_moved(tmp_path):
    # a run resumed in a moved or copied project keeps the old folder's absolute best_model_path: the moved
    # project's stage 1 "left no checkpoint", and a copy's stage 2 started from the other project's file
    from types import SimpleNamespace

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    for folder in (old, new):
        folder.mkdir(parents=True)
        for name in ("epoch=0-step=3.ckpt", "last.ckpt"):
            (folder / name).write_text(str(folder))

    def cli(best, last):
        callback = SimpleNamespace(dirpath=str(new), best_model_path=best, last_model_path=last)
        return SimpleNamespace(trainer=SimpleNamespace(checkpoint_callback=callback))

    best = str(old / "epoch=0-step=3.ckpt")
    assert pipeline.handoff_checkpoint(cli(best, str(new / "last.ckpt"))) == str(new / "epoch=0-step=3.ckpt")  # copied
    shutil.rmtree(old)
    assert pipeline.handoff_checkpoint(cli(best, "")) == str(new / "epoch=0-step=3.ckpt")  # moved
    (new / "epoch=0-step=3.ckpt").unlink()
    assert pipeline.handoff_checkpoint(cli(best, str(new / "last.ckpt"))) == str(new / "last.ckpt")
    (new / "last.ckpt").unlink()
    with pytest.raises(RuntimeError, match=rf"left no checkpoint in {new} \(the run names {best}, outside it: was the folder moved\?\)"):
        pipeline.handoff_checkpoint(cli(best, ""))


def test_an_interrupted_run_on_several_processes_is_resumed_on_one_from_its_shares_put_together(
        backbones, trained_checkpoint, image_folder, tmp_path):
    # each process of an interrupted run keeps its share (answers.rank0.csv: rows 0, 2, ...); the next run was told to
    # go on with --data.resume true, which several processes refuse and which one process started again from row 0
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions = write_csv(tmp_path / "q.csv", QUESTIONS * 2)
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / "whole.csv"))
    with (tmp_path / "whole.csv").open(newline="") as handle:
        whole = list(csv.DictReader(handle))
    made_by = json.loads((tmp_path / "whole.csv.summary.json").read_text())["made_by"]
    for rank, rows in enumerate([whole[0:4:2], whole[1:6:2]]):  # stopped: rank 0 after rows 0 and 2, rank 1 after 1, 3, 5
        share = tmp_path / f"answers.rank{rank}.csv"
        with share.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(whole[0]))
            writer.writeheader()
            writer.writerows(rows)
        share.with_name(f"{share.name}.summary.json").write_text(json.dumps({"rows": len(rows), "interrupted": "SIGTERM",
                                                                             "made_by": made_by, "share": {"rank": rank, "processes": 2}}))
    output = tmp_path / "answers.csv"
    with pytest.raises(OutputExistsError, match=r"answers\.rank0\.csv exists, one process's share of a run on several processes "
                                                r"that was interrupted \(SIGTERM\): go on from the shares with --data.resume true "
                                                r"on one device"):
        choice_data(backbones, questions, output).check_output(world_size=2, rank=0)

    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    with output.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == whole  # rows 0-3 from the shares (row 5 after the gap done again), 4-7 now
    summary = json.loads((tmp_path / "answers.csv.summary.json").read_text())
    assert summary["rows"] == 8 and summary["resumed_after"] == 4 and "interrupted" not in summary
    # an unreadable image's row read back from a CSV is an error, not an answer naming no option (its empty
    # 'generated' cell read as a generated answer)
    assert (summary["errors"], summary["no_option"]) == (2, 0)
    assert not list(tmp_path.glob("answers.rank*"))


HUNG_UP_WHILE_PIPED = """
import pathlib, sys, time
from mmcaption.errors import user_errors_exit

@user_errors_exit
def main():
    try:
        print("ready", file=sys.stderr, flush=True)  # inside: the signal may come as soon as it is read
        while True:
            time.sleep(0.05)
    finally:  # what a stopping command does next: a progress bar's lines, then its save
        for _ in range(100):
            print("progress " * 20, file=sys.stderr, flush=True)
        pathlib.Path(sys.argv[1]).write_text("saved")

main()
"""


def test_a_closed_terminal_whose_pipe_reader_went_with_it_still_lets_the_command_save(tmp_path):
    # `mmcaption fit ... | tee log` in a terminal that closes: tee dies with it, so every later write to the pipe
    # fails (EPIPE). The notice in the signal handler raised there, and the run ended without its checkpoint
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    read, write = os.pipe()
    # SIGHUP as a shell in a terminal has it (a test run under nohup passes on its ignored SIGHUP, which is kept)
    process = subprocess.Popen([sys.executable, "-c", HUNG_UP_WHILE_PIPED, str(tmp_path / "saved")], stdout=write,
                               stderr=write, env=env, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert reader.readline() == b"ready\n"
    # the reader gone, as tee is
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=60) == 129
    assert (tmp_path / "saved").read_text() == "saved"


def test_backbones_the_demo_writes_are_shared_as_the_umask_allows_and_a_private_one_is_said(tmp_path, monkeypatch):
    # safetensors wrote model.safetensors -rw------- under umask 002: a teammate then read "the folder lacks its files
    # (No such file or directory: .../model.safetensors). It holds ..., model.safetensors, ..."
    from mmcaption.demo.synthetic import demo_corpus
    from mmcaption.demo.tiny import save_tiny_backbones
    from mmcaption.model.backbone_checks import BackboneNotFoundError, naming_backbone

    previous = os.umask(0o002)
    try:
        language, vision = save_tiny_backbones(tmp_path, demo_corpus(seed=0, num_scenes=20), seed=0, lm_hidden_size=32,
                                               lm_layers=1)
    finally:
        os.umask(previous)
    weights = [*language.glob("*.safetensors"), *vision.glob("*.safetensors")]
    assert weights and {oct(path.stat().st_mode & 0o777) for path in weights} == {"0o664"}

    private = language / "model.safetensors"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == private else real_access(path, mode, **kw))
    with pytest.raises(BackboneNotFoundError, match=rf"cannot load the language model {language}: permission denied: {private} "
                                                    r"\(not readable by this user\); .* belongs to .*Ask its owner to let the group"):
        with naming_backbone(str(language), "language model"):  # what safetensors raises for a file it may not read
            raise FileNotFoundError(2, "No such file or directory", str(private))


def test_a_requeued_slurm_job_resumes_from_its_own_last_save_not_another_jobs_nor_its_first_ckpt_path(tmp_path, monkeypatch,
                                                                                                        capsys):
    # a requeued job took the newest last*.ckpt in the folder whoever saved it (another job's, 1,138 steps in), and one
    # given --ckpt_path went back to it, redoing 926 steps and then writing over its own later save
    from types import SimpleNamespace

    from mmcaption.checkpoint import job_of_checkpoint
    from mmcaption.slurm import requeued_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"slurm_job": "125", "global_step": 1138}, folder / "last.ckpt")
    trainer = SimpleNamespace(checkpoint_callback=ModelCheckpoint(dirpath=folder), global_rank=0, default_root_dir=tmp_path,
                              _checkpoint_connector=SimpleNamespace(_hpc_resume_path=None))
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train.sh", "SLURM_JOB_ID": "126",
                        "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert requeued_checkpoint(trainer, job_of_checkpoint) is None
    assert "which saved no checkpoint yet: it starts as its command says" in capsys.readouterr().err
    start = tmp_path / "start.ckpt"
    assert requeued_checkpoint(trainer, job_of_checkpoint, given=str(start)) is None  # as its command says
    torch.save({"slurm_job": "126", "global_step": 2076}, folder / "last-v1.ckpt")
    assert requeued_checkpoint(trainer, job_of_checkpoint, given=str(start)) == str(folder / "last-v1.ckpt")
    assert (f"note: SLURM requeued this job (restart 1): it resumes from its own last save, {folder / 'last-v1.ckpt'}, "
            f"not --ckpt_path {start}") in capsys.readouterr().err
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the job's first run: its command as given
    assert requeued_checkpoint(trainer, job_of_checkpoint, given=str(start)) is None
    # a save of an earlier release, which recorded no job: the newest of those, as before, when the job has none
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "127")
    torch.save({"global_step": 3000}, folder / "interrupted-step3000.ckpt")
    torch.save({"slurm_job": "", "global_step": 3100}, folder / "last-v2.ckpt")  # a run outside SLURM: never a job's
    assert requeued_checkpoint(trainer, job_of_checkpoint) == str(folder / "interrupted-step3000.ckpt")
    assert "it resumes from the newest save, which records no job (an earlier release's)" in capsys.readouterr().err
    # a job Lightning does not take for SLURM's (no SLURM_NTASKS), run without a ModelCheckpoint: its stop saved into the
    # run's folder, and the requeued job started again at step 0
    monkeypatch.delenv("SLURM_NTASKS")
    torch.save({"slurm_job": "127", "global_step": 410}, tmp_path / "interrupted-step410.ckpt")
    torch.save({"global_step": 9}, tmp_path / "last.ckpt")  # not a checkpoint folder's: no job's save to guess at
    bare = SimpleNamespace(checkpoint_callback=None, global_rank=0, default_root_dir=tmp_path,
                           _checkpoint_connector=SimpleNamespace(_hpc_resume_path=None))
    assert requeued_checkpoint(bare, job_of_checkpoint) == str(tmp_path / "interrupted-step410.ckpt")
    # Lightning's own ModelCheckpoint, without dirpath: it saved into its logger's version folder, resolved only later
    versioned = tmp_path / "logs" / "lightning_logs" / "version_127" / "checkpoints"
    versioned.mkdir(parents=True)
    torch.save({"slurm_job": "127", "global_step": 500}, versioned / "interrupted-step500.ckpt")
    logged = SimpleNamespace(checkpoint_callback=ModelCheckpoint(), global_rank=0, default_root_dir=tmp_path / "logs",
                             logger=None, _checkpoint_connector=SimpleNamespace(_hpc_resume_path=None))
    assert requeued_checkpoint(logged, job_of_checkpoint) == str(versioned / "interrupted-step500.ckpt")


def test_slurms_time_limit_signal_stops_every_command_cleanly_in_a_slurm_job(monkeypatch, tmp_path):
    # SIGUSR1 (#SBATCH --signal=SIGUSR1@90) killed preprocessing and a job Lightning did not take for SLURM's on the
    # spot; in predict Lightning's own handler saved an hpc_ckpt into the folder, which every later fit there was refused for
    from mmcaption.errors import Interrupted, signals_stop, stop_signals

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert signal.SIGUSR1 not in stop_signals()  # outside SLURM, SIGUSR1 is left alone
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train.sh"}.items():
        monkeypatch.setenv(name, value)
    assert signal.SIGUSR1 in stop_signals()
    with signals_stop():
        trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
        trainer._signal_connector.register_signal_handlers()  # as Lightning does when a run starts
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGUSR1)
        trainer._signal_connector.teardown()
    assert stopped.value.signum == signal.SIGUSR1
    assert not list(tmp_path.glob("hpc_ckpt_*.ckpt"))
    # who requeues on it: a job Lightning does not take for SLURM's does; one it was told not to requeue, or an
    # interactive session, does not
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import SLURMEnvironment

    from mmcaption.slurm import slurm_requeue_signal

    def told(environment) -> SimpleNamespace:
        return SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=environment))

    monkeypatch.delenv("SLURM_NTASKS")
    assert slurm_requeue_signal(told(None)) == signal.SIGUSR1
    assert slurm_requeue_signal(told(SLURMEnvironment(auto_requeue=False))) is None
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert slurm_requeue_signal(told(None)) is None


def test_the_progress_line_counts_to_where_training_ends_by_max_epochs_or_max_steps(tmp_path, capsys):
    # "training starts at step 0 of 70" for a run max_epochs ended at 45: every time-left estimate was wrong
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmcaption.callbacks import PlainProgress

    for settings, total in (({"max_epochs": 3, "max_steps": 70}, 15), ({"max_epochs": 9, "max_steps": 7}, 7),
                            ({"max_epochs": 3, "max_steps": -1, "accumulate_grad_batches": 2}, 9)):
        trainer = Trainer(accelerator="cpu", limit_train_batches=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, enable_progress_bar=True, callbacks=[PlainProgress()],
                          default_root_dir=tmp_path, **settings)
        trainer.fit(BoringModel())
        out = capsys.readouterr().out
        assert f"training starts at step 0 of {total}" in out, (settings, out)


def test_training_goes_on_to_its_checkpoint_when_the_reader_of_its_output_goes(tmp_path, monkeypatch):
    # `mmcaption fit ... | tee log` with tee killed: the next progress line's BrokenPipeError ended the run (exit 141)
    # 120 steps in, without a checkpoint or a word
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmcaption.callbacks import PlainProgress

    reader, writer = os.pipe()
    piped = os.fdopen(writer, "w")
    os.close(reader)  # the reader is gone before the first line
    monkeypatch.setattr(sys, "stdout", piped)
    trainer = Trainer(accelerator="cpu", max_steps=4, limit_val_batches=0, logger=False, enable_model_summary=False,
                      callbacks=[PlainProgress(every_seconds=0.0), ResumableStop(),
                                 ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
                      default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert trainer.global_step == 4 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert sys.stdout is piped  # put back after the run; its output goes nowhere now, without an error
    print("after the run", flush=True)
    piped.close()


def test_predict_goes_on_to_its_last_row_when_the_reader_of_its_output_goes(tmp_path, monkeypatch):
    # its progress lines every 30 s met the closed pipe of a killed `| tee log`, and the predict ended there
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmcaption.callbacks import PlainProgress

    class Predicting(BoringModel):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch)

    reader, writer = os.pipe()
    piped = os.fdopen(writer, "w")
    os.close(reader)
    monkeypatch.setattr(sys, "stdout", piped)
    trainer = Trainer(accelerator="cpu", limit_predict_batches=5, logger=False, enable_model_summary=False,
                      callbacks=[PlainProgress(every_seconds=0.0), ResumableStop()], default_root_dir=tmp_path)
    assert len(trainer.predict(Predicting())) == 5
    piped.close()


def test_predict_test_and_validate_in_a_log_file_say_how_far_they_are(tmp_path, capsys):
    # a folder predict in a batch job's log sat at "Loaded model weights" for hours, then printed its last line
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmcaption.callbacks import PlainProgress

    class Predicting(BoringModel):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch)

    trainer = Trainer(accelerator="cpu", limit_predict_batches=6, limit_test_batches=4, logger=False, enable_model_summary=False,
                      enable_progress_bar=True, callbacks=[PlainProgress(every_seconds=0.0)], default_root_dir=tmp_path)
    trainer.predict(Predicting())
    out = capsys.readouterr().out
    assert "predict: batch 1/6, " in out and "predict: batch 6/6, " in out and " batches/s" in out and " left" in out
    assert "training: " not in out  # a predict is no training run ("training: predict: batch 34/108")
    trainer.test(BoringModel())
    assert "test: batch 4/4, " in capsys.readouterr().out


def test_a_monitored_metric_these_settings_never_log_is_refused_before_training(backbones, coco_root, tmp_path, monkeypatch):
    # ModelCheckpoint(monitor=val/CIDEr) with no validation captions failed at the first validation (4,600 steps in at
    # the real config's interval), with no best checkpoint saved; in the pipeline, after the whole first stage
    from mmcaption.command_checks import check_command

    monkeypatch.chdir(tmp_path)
    command = [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.callbacks.monitor=val/CIDEr",
               "--trainer.callbacks.mode=max"]
    with pytest.raises(ConfigError, match=r"ModelCheckpoint's monitor val/CIDEr is computed only from validation captions: "
                                          r"set data.init_args.val_caption_images"):
        check_command([*command, "--data.init_args.val_caption_images", "0"])
    check_command([*command, "--data.init_args.val_caption_images", "4"])  # computed: fine
    # a score monitored with Lightning's default mode, min: the worst checkpoint kept as best, early stopping when it rose
    with pytest.raises(ConfigError, match=r"ModelCheckpoint's monitor val/CIDEr is a score, higher when better, and its mode "
                                          r"is min: .* Set mode: max on it"):
        check_command([*command[:-1], "--data.init_args.val_caption_images", "4"])
    # and a loss with a CIDEr config's mode, max, left as it was: the highest loss kept as best, and a run stopped early
    # while its loss fell
    with pytest.raises(ConfigError, match=r"ModelCheckpoint's monitor val/loss is a loss, lower when better, and its mode "
                                          r"is max: .* Set mode: min on it"):
        check_command([*command[:-2], "--trainer.callbacks.monitor=val/loss", "--trainer.callbacks.mode=max"])
    # a ModelCheckpoint filename naming a metric: with its '/' a folder per checkpoint (epoch=0-step=2-val/CIDEr=0.008.ckpt,
    # where the next run's earlier-checkpoints note never looked), or a Lightning-docs name never logged, written as 0.000
    base = [*command[:-2], "--data.init_args.val_caption_images", "4", "--trainer.callbacks.mode=max"]
    with pytest.raises(ConfigError, match=r"ModelCheckpoint's filename '\{epoch\}-\{val/CIDEr:\.3f\}' would write "
                                          r"'val/CIDEr=' into each name, and its '/' makes a folder of it: add "
                                          r"auto_insert_metric_name: false"):
        check_command([*base, "--trainer.callbacks.monitor=val/CIDEr", "--trainer.callbacks.filename={epoch}-{val/CIDEr:.3f}"])
    with pytest.raises(ConfigError, match=r"filename '\{epoch\}-\{val_loss:\.3f\}' names val_loss, which is never logged "
                                          r"\(its value would be written as 0\): did you mean val/loss\?"):
        check_command([*base, "--trainer.callbacks.monitor=val/CIDEr", "--trainer.callbacks.filename={epoch}-{val_loss:.3f}"])
    check_command([*base, "--trainer.callbacks.monitor=val/CIDEr", "--trainer.callbacks.filename=e{epoch}-cider{val/CIDEr:.3f}",
                   "--trainer.callbacks.auto_insert_metric_name=false"])  # Lightning's own way: fine
    # a second ModelCheckpoint alike the config's, for a filename or top-k of one's own: an 18-frame traceback, exit 1
    from mmcaption.settings_checks import lightning_setting_errors

    with pytest.raises(ConfigError, match=r"^trainer\.callbacks \(two alike: give one another monitor or mode, or change the "
                                          r"config's instead of adding one\): Found more than one stateful callback"):
        with lightning_setting_errors():
            Trainer(accelerator="cpu", logger=False, callbacks=[ModelCheckpoint(monitor="val/loss"),
                                                                ModelCheckpoint(monitor="val/loss")]).fit(
                make_captioner(backbones), datamodule=CaptionDataModule(
                    data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                    image_processor=str(backbones[1]), batch_size=4, num_workers=0))
    # Lightning's "all devices" on the CPU: a TypeError's 30-frame traceback
    with pytest.raises(ConfigError, match=r"^trainer\.devices \(on the CPU, how many processes to run: 1 or more; -1, all of "
                                          r"them, counts GPUs\): `devices` selected with `CPUAccelerator` should be an int > 0"):
        with lightning_setting_errors(building=True):
            Trainer(accelerator="cpu", devices=-1)
    # a pipeline's fit arguments reach both stages: the instruct stage logs no caption metric at all
    from types import SimpleNamespace

    from mmcaption.settings_checks import unlogged_monitor

    instruct = SimpleNamespace(val_answer_questions=100)
    assert "computed only from validation captions" in unlogged_monitor([SimpleNamespace(monitor="val/CIDEr")], instruct)
    assert unlogged_monitor([SimpleNamespace(monitor="val/answer_exact_match")], instruct) is None
    from lightning.pytorch.callbacks import EarlyStopping

    assert "EarlyStopping's monitor val/answer_exact_match is a score" in unlogged_monitor([EarlyStopping("val/answer_exact_match")], instruct)
    assert unlogged_monitor([EarlyStopping("val/answer_exact_match", mode="max"), EarlyStopping("val/loss")], instruct) is None
    # a typo or another case, refused before the first step with the name meant (was stopped at the first validation)
    for typed, meant in (("val/cider", "val/CIDEr"), ("val/los", "val/loss"), ("val/Bleu-4", "val/BLEU-4"), ("val_loss", "val/loss")):
        said = unlogged_monitor([SimpleNamespace(monitor=typed)], instruct)
        assert said.startswith(f"SimpleNamespace's monitor {typed} is never logged: did you mean {meant}? Validation logs "), said
    assert unlogged_monitor([SimpleNamespace(monitor="zzz")], instruct).startswith("SimpleNamespace's monitor zzz is never logged. ")
    assert unlogged_monitor([SimpleNamespace(monitor=m) for m in ("train/loss", "step", "epoch", None)], instruct) is None


def test_a_run_that_early_stopping_ended_says_so_in_its_last_line(capsys):
    # "training done at step 14" and nothing else: Lightning says why only at its (quiet) info level
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    from mmcaption.callbacks import PlainProgress

    stopping = EarlyStopping(monitor="val/CIDEr", mode="max", patience=2)
    stopping.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
    stopping.stopping_reason_message = ("Monitored metric val/CIDEr did not improve in the last 2 records. Best score: 0.412. "
                                        "Signaling Trainer to stop.")
    progress = PlainProgress()
    progress._enabled, progress._start = True, 0.0
    trainer = SimpleNamespace(callbacks=[stopping], global_step=14, is_global_zero=True, logger=SimpleNamespace(name="caption"))
    progress.on_train_end(trainer, None)
    assert ("training done at step 14 in" in (out := capsys.readouterr().out) and out.rstrip().endswith(
        " - stopped by EarlyStopping: Monitored metric val/CIDEr did not improve in the last 2 records. Best score: 0.412."))
    # batches skipped for a non-finite loss (on_nonfinite_loss skip) are counted there too: said only one by one before
    trainer.callbacks = []
    progress.on_train_end(trainer, SimpleNamespace(skipped_batches=3))
    assert capsys.readouterr().out.rstrip().endswith(" (3 batch(es) skipped for a non-finite loss: train/skipped_batches)")


def test_resuming_a_run_early_stopping_ended_ends_at_once_saying_so(capsys, monkeypatch):
    # the pipeline's --ckpt_path last trained an early-stopped caption stage on by another validation interval (and
    # changed its best checkpoint): Lightning restores EarlyStopping's verdict, not the stop
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    import mmcaption.callbacks

    monkeypatch.setattr(mmcaption.callbacks, "slurm_requeue_signal", lambda trainer: None)  # not under SLURM
    stopping = EarlyStopping(monitor="val/CIDEr", mode="max", patience=2)
    stopping.load_state_dict({**stopping.state_dict(), "stopping_reason": EarlyStoppingReason.PATIENCE_EXHAUSTED.value})
    callback = ResumableStop()
    for stoppers, ended in (([stopping], True), ([EarlyStopping(monitor="val/CIDEr")], False)):
        trainer = SimpleNamespace(callbacks=stoppers, ckpt_path="checkpoints/caption/last.ckpt", is_global_zero=True,
                                  should_stop=False, val_check_batch=None, accumulate_grad_batches=1,
                                  fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_should_check_val_fx=None)))
        callback.on_train_start(trainer, None)  # the hook Lightning calls once the checkpoint is restored
        callback._restore_handlers()
        assert trainer.should_stop == ended  # a run EarlyStopping did not end resumes as before
    assert ("note: checkpoints/caption/last.ckpt is of a run EarlyStopping ended (val/CIDEr): it ends at once"
            in capsys.readouterr().err)


def test_two_exports_into_one_new_folder_do_not_silently_replace_each_other(trained_checkpoint, tmp_path, monkeypatch):
    # both printed "exported to ..." and exited 0; the later one had replaced the earlier without --overwrite
    import mmcaption.export as export

    folder = tmp_path / "race"
    real = export.as_umask_allows

    def the_other_export_finishes_first(staging):
        real(staging)
        folder.mkdir(exist_ok=True)
        (folder / "mmcaption.json").write_text("{}")  # what the other export put there meanwhile

    monkeypatch.setattr(export, "as_umask_allows", the_other_export_finishes_first)
    with pytest.raises(OutputExistsError, match=rf"export folder {folder} was written by something else while this export "
                                                r"ran \(two exports into one folder\?\); it is left as it is"):
        export.export_checkpoint(trained_checkpoint, folder)
    assert [p.name for p in folder.iterdir()] == ["mmcaption.json"] and len(list(tmp_path.iterdir())) == 1  # no staging


def test_resuming_with_a_max_time_already_spent_says_so(capsys, monkeypatch):
    # "Time limit reached. Elapsed time is 0:00:06." and exit 0: a per-job max_time loop trained nothing, silently
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    import mmcaption.callbacks

    monkeypatch.setattr(mmcaption.callbacks, "slurm_requeue_signal", lambda trainer: None)
    timer = Timer(duration="00:00:00:06")
    timer.load_state_dict({"time_elapsed": {"train": 6.5}})  # as the checkpoint's run left it
    trainer = SimpleNamespace(callbacks=[timer], ckpt_path="checkpoints/caption/last.ckpt", is_global_zero=True,
                              should_stop=False, val_check_batch=None, accumulate_grad_batches=1, world_size=1)
    callback = ResumableStop()
    callback.on_fit_start(trainer, None)  # Lightning ends such a run before on_train_start: it was never said
    assert ("note: checkpoints/caption/last.ckpt has trained for 0m06s, which trainer.max_time (0m06s) counts too: it ends "
            "at once. Raise --trainer.max_time to train on") in capsys.readouterr().err


def test_a_max_time_stop_is_said_only_when_the_time_ended_the_run():
    # a validation EarlyStopping ended as the time ran out was said to be max_time's stop, to resume with more time
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping, Timer
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    from mmcaption.step_ends import time_limit_note

    timer = Timer(duration="00:00:00:03")
    timer.load_state_dict({"time_elapsed": {"train": 3.5}})
    trainer = SimpleNamespace(callbacks=[timer], global_step=8, estimated_stepping_batches=20)
    assert time_limit_note(trainer, "last.ckpt") == (
        "note: trainer.max_time (0m03s) stopped training at step 8 of 20, before the end of its learning-rate schedule; to "
        "train the rest, resume it (--ckpt_path last.ckpt) with a larger --trainer.max_time (the time trained so far counts)")
    stopper = EarlyStopping(monitor="val/loss")
    stopper.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
    trainer.callbacks.append(stopper)
    assert time_limit_note(trainer, "last.ckpt") is None
    trainer.callbacks.pop()
    trainer.global_step = 20  # the run ended as planned
    assert time_limit_note(trainer, "last.ckpt") is None


def test_validation_under_gradient_accumulation_comes_at_a_steps_end(tmp_path, capsys):
    # val_check_interval 3 of batches accumulated 2 by 2: validation after batch 3 saved its checkpoints between a step's
    # batches, and a run resumed from one (after a kill, or from its best) took its next step without batch 3, unsaid
    from lightning.pytorch.demos.boring_classes import BoringModel

    seen = []

    class Validations(Callback):
        def on_validation_start(self, trainer, pl_module):
            seen.append(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    folder = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=10, limit_val_batches=1, accumulate_grad_batches=2,
                      val_check_interval=3, num_sanity_val_steps=0, logger=False, enable_model_summary=False,
                      enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[Validations(), ResumableStop(), ModelCheckpoint(dirpath=folder, monitor=None, save_top_k=-1)])
    trainer.fit(BoringModel())
    assert seen == [4, 6, 10, 4, 6, 10]  # was [3, 6, 9, 3, 6, 9]: each held to its step's end, none lost
    assert capsys.readouterr().err.count("note: a validation that falls inside an optimizer step (accumulate_grad_batches 2) "
                                         "comes at the step's end") == 1
    # Lightning's own schedule kept, its every validation: an epoch of 5 batches validated at its end (a count rounded up
    # to whole steps, 6, came after the epoch: no validation at all), and across epochs (check_val_every_n_epoch null)
    for settings, expected in (({"val_check_interval": 1.0, "limit_train_batches": 5}, [5, 5]),
                               ({"val_check_interval": 4, "check_val_every_n_epoch": None, "limit_train_batches": 5}, [4, 4])):
        seen.clear()
        trainer = Trainer(accelerator="cpu", max_epochs=2, limit_val_batches=1, accumulate_grad_batches=2, num_sanity_val_steps=0,
                          logger=False, enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False,
                          default_root_dir=tmp_path, callbacks=[Validations(), ResumableStop()], **settings)
        trainer.fit(BoringModel())
        assert seen == expected, settings
    for path in folder.glob("*.ckpt"):  # each holds whole steps: batches seen, twice the steps taken
        saved = torch.load(path, weights_only=False)
        batches = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]
        assert batches == 2 * saved["global_step"], path.name


def test_a_stop_asked_between_a_steps_batches_stops_at_the_steps_end_with_the_epoch_open(tmp_path):
    # Lightning's Timer (trainer.max_time) asks at any batch: its stop dropped the step's gathered batches, and the
    # checkpoint was saved once Lightning had closed the epoch, so a resume skipped the rest of it
    from lightning.pytorch.demos.boring_classes import BoringModel

    class StopAtThirdBatch(Callback):  # as the Timer does, before ResumableStop's hook
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.should_stop or batch_idx == 2

    folder = tmp_path / "checkpoints"
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=10, limit_val_batches=0, accumulate_grad_batches=2,
                      logger=False, enable_model_summary=False, enable_progress_bar=False, default_root_dir=tmp_path,
                      callbacks=[StopAtThirdBatch(), ResumableStop(), ModelCheckpoint(dirpath=folder, save_last=True)])
    trainer.fit(BoringModel())
    assert trainer.global_step == 2  # batches 0-3: the step the third batch began, taken
    saved = torch.load(folder / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 and saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 4  # resumes at batch 4


def test_ctrl_c_while_the_command_starts_is_one_line_and_130(tmp_path):
    # the first seconds of any command import torch and Lightning: a Ctrl-C there printed a KeyboardInterrupt traceback
    # from inside Python's import machinery
    process = subprocess.Popen([sys.executable, "-m", "mmcaption", "fit", "--help"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # started, and importing (seconds)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGINT"), stderr[-3000:]


def test_a_fresh_run_into_a_logger_version_named_by_a_run_before_is_refused(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # Lightning wrote the second run's config.yaml over the first's and put both runs' curves in one folder, silently
    monkeypatch.chdir(tmp_path)
    named = ["--trainer.logger.init_args.version", "lr3e-3"]
    main([*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), *named])
    run = tmp_path / "logs" / "lightning_logs" / "lr3e-3"
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    message = user_error(capsys, main, [*fit_config(tmp_path, coco_root, backbones, tmp_path / "d"), *named,
                                       "--model.learning_rate", "0.01"])
    assert message == (f"error: {run} holds a run already (logger version 'lr3e-3'): give this run another version name, "
                       "resume that run with --ckpt_path, or remove the folder to start it afresh")
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    # the same job requeued by SLURM before its first save (a node failed, `version: ${SLURM_JOB_ID}`): the same run goes on
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    main([*fit_config(tmp_path, coco_root, backbones, tmp_path / "e"), *named])


def test_a_multi_process_runs_other_processes_say_one_marked_line_not_a_collective_traceback(monkeypatch, capsys):
    # rank 0 refused the data and left; rank 1, waiting in a barrier, printed gloo's 40-line traceback blaming "a remote
    # worker crashing" under the real message, and both ranks' error lines ran into one line
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")  # a shell inside srun passes it to every process: Lightning's rank counts

    def barrier_broken():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:31630")

    with pytest.raises(SystemExit) as exited:
        user_errors_exit(barrier_broken, signals=False)()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "[rank 1] error: another process of this run stopped (see its message)\n"

    def store_closed():  # Ctrl-C to the launcher while the processes connect: rank 1's traceback, rank 0's line above it
        raise torch.distributed.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed. Did the remote "
                                                 "server shutdown or crash?")

    with pytest.raises(SystemExit) as exited:
        user_errors_exit(store_closed, signals=False)()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "[rank 1] error: another process of this run stopped (see its message)\n"

    def refused():
        raise ConfigError("a setting")

    with pytest.raises(SystemExit):
        user_errors_exit(refused, signals=False)()
    assert capsys.readouterr().err == "[rank 1] error: a setting\n"

    def stopped():
        raise Interrupted(signal.SIGINT)

    with pytest.raises(SystemExit) as exited:  # each process stops alike: rank 0 says it
        user_errors_exit(stopped, signals=False)()
    assert exited.value.code == 130 and capsys.readouterr().err == ""


def test_a_run_waiting_on_a_cache_build_says_whose_it_is_and_waits_on_a_lock_it_may_not_write(tmp_path, capsys, monkeypatch):
    # "waiting for another process to finish preprocessing" named no one: on a cluster's shared disk, a teammate's job on
    # another node; and a teammate's lock this user could not open to write made the run build alongside, and fail
    import threading

    from mmcaption.data.cache import built_once

    target = tmp_path / "preprocessed" / "train-abc"
    holding, release, waited = threading.Event(), threading.Event(), []

    def holder() -> None:
        with built_once(target, "preprocessing split train"):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(30)
    lock = target.parent / ".train-abc.lock"
    assert f"{os.getpid()} on {socket.gethostname()}, " in lock.read_text()
    opened = os.open

    def a_teammates(path, flags, *args):  # their lock file: this user may read it, not write it (as root, by hand)
        if str(path) == str(lock) and flags & os.O_RDWR and threading.current_thread() is threading.main_thread():
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, flags, *args)

    monkeypatch.setattr(os, "open", a_teammates)
    later = threading.Timer(1.0, release.set)
    later.start()
    with built_once(target, "preprocessing split train"):  # another run of this process: flock locks per open file
        waited.append(True)
    thread.join(30)
    assert waited and release.is_set()  # it waited for the holder, not building alongside
    assert f"waiting for another process to finish preprocessing split train (PID, host, user and command: {os.getpid()} on " \
           in capsys.readouterr().err


def test_a_teammates_private_checkpoint_is_said_to_be_read_not_written(tmp_path, monkeypatch):
    # "point the setting that names it at a folder of your own" meant nothing for a checkpoint to read (init_from, ckpt_path)
    from mmcaption.resources import permission_message

    private = tmp_path / "caption.ckpt"
    private.write_bytes(b"weights")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # mode -rw------- of another user (root reads any file)
    said = permission_message(private, "Permission denied")
    assert "It is read, not written: its owner can make it readable (chmod g+r" in said and "folder of your own" not in said
    monkeypatch.undo()
    assert "folder of your own" in permission_message(tmp_path / "out" / "new.csv", "Permission denied")  # one to write
    # a teammate's checkpoint folder: whose it is and its mode (the message named neither)
    from mmcaption.folders import check_writable

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("mmcaption.folders.tempfile.TemporaryFile", refused)
    with pytest.raises(NotWritableError, match=rf"cannot write checkpoints to {tmp_path}: Permission denied \({tmp_path} belongs "
                                               rf"to \w+, mode d"):
        check_writable(tmp_path, "checkpoints")


def test_a_terminal_that_says_no_width_gets_progress_as_plain_lines(backbones, coco_root, tmp_path, monkeypatch):
    # Colab's `!mmcaption fit` runs on a pseudo-terminal of 0 columns: tqdm drew empty frames, and a run of hours showed
    # no step, loss or validation at all
    import fcntl
    import pty
    import struct
    import termios

    from mmcaption.callbacks import PlainProgress, StageProgressBar
    from mmcaption.command_checks import check_command
    from mmcaption.terminal import draws_bars

    monkeypatch.chdir(tmp_path)
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stderr", stream)
    command = [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.enable_progress_bar", "true"]
    try:
        for rows, columns, bar in ((0, 0, PlainProgress), (40, 120, StageProgressBar)):
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            assert draws_bars() == (columns > 0)
            progress = [c for c in check_command(command).trainer.callbacks if isinstance(c, (PlainProgress, StageProgressBar))]
            assert [type(c) for c in progress] == [bar], columns
    finally:
        stream.close()
        os.close(leader)


LOADER_LEFT_RUNNING = """
import sys, torch
from torch.utils.data import DataLoader
from mmcaption.data.workers import end_workers_at_exit, worker_init
end_workers_at_exit()  # as every mmcaption loader with workers does
loader = DataLoader(list(range(64)), batch_size=2, num_workers=1, persistent_workers=True, worker_init_fn=worker_init)
batches = iter(loader)
next(batches)  # a run stopped by an error between two batches: its frames keep the loader and its worker
print("error: the disk is full", file=sys.stderr)
sys.exit(2)
"""


def test_a_command_stopped_by_an_error_exits_while_its_loader_workers_run():
    # a full disk at a checkpoint after a validation printed its line, and then the process waited on the training
    # loader's worker for ever: the workers ignore SIGTERM, which is how Python's exit ends them (a crashed container
    # job held its GPUs until someone killed it)
    result = subprocess.run([sys.executable, "-c", LOADER_LEFT_RUNNING], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2 and result.stderr.strip() == "error: the disk is full"  # and nothing after it


SLOW_TO_END = """
import multiprocessing, signal, sys, time
from mmcaption.data.workers import end_workers_at_exit

def writer(path):
    def flush(*_):
        time.sleep(3)  # a buffer written out on SIGTERM
        open(path, "w").write("flushed")
        sys.exit(0)
    signal.signal(signal.SIGTERM, flush)
    while True:
        time.sleep(0.1)

if __name__ == "__main__":
    end_workers_at_exit()  # what building any mmcaption loader does
    multiprocessing.Process(target=writer, args=(sys.argv[1],), daemon=True).start()
    time.sleep(0.5)
"""


def test_the_exit_hook_leaves_a_programs_own_daemonic_process_to_end_as_python_ends_it(tmp_path):
    # it killed every daemonic child after 2 s, a library user's own process (flushing on SIGTERM) among them
    script, flushed = tmp_path / "slow.py", tmp_path / "flushed"
    script.write_text(SLOW_TO_END)
    subprocess.run([sys.executable, str(script), str(flushed)], timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
                   check=True)
    assert flushed.read_text() == "flushed"


@pytest.mark.slow
def test_a_signal_as_predicts_loader_workers_start_stops_it(trained_checkpoint, image_folder, tmp_path):
    # Ctrl-C or `docker stop` just as the loader forked its workers ran the handler inside the fork's at-fork hooks,
    # where Python prints an exception and drops it: the run went on to its end and exited 0 (7 times of 8, by hand)
    script = ("import os, signal, sys\n"
              "sent = []\n"
              "def at_fork():\n"
              "    if not sent:\n"
              "        sent.append(1)\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.register_at_fork(after_in_parent=at_fork)\n"
              "sys.argv = ['mmcaption', *sys.argv[1:]]\n"
              "from mmcaption.scripts import mmcaption\n"
              "mmcaption()\n")
    output = tmp_path / "captions.jsonl"
    args = ["predict", "--ckpt_path", str(trained_checkpoint), "--data", "mmcaption.data.CaptionPredictDataModule",
            "--data.images", str(image_folder), "--data.output", str(output), "--data.batch_size", "1",
            "--data.num_workers", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 143, done.stderr[-3000:]
    assert "Exception ignored" in done.stderr  # the handler did run where its exception is dropped
    assert "predict stopped (SIGTERM) before any row was done" in done.stdout + done.stderr
    assert not output.exists() and not list(tmp_path.glob(".captions.jsonl*"))


def test_a_signal_between_an_exports_two_renames_is_acted_on_after_both(tmp_path, monkeypatch):
    # `mmcaption-export --overwrite` moved the earlier export aside, and a Ctrl-C before the new one was put in its place
    # left no export folder at all: the old one hidden as .export.old-*, the new one as a staging folder
    from mmcaption import folders
    from mmcaption.errors import signals_stop

    target, staging = tmp_path / "export", tmp_path / ".export.partial-1"
    for folder, name in ((target, "old.txt"), (staging, "new.txt")):
        folder.mkdir()
        (folder / name).write_text(name)
    real = os.replace

    def replace(source, destination):
        real(source, destination)
        if Path(source) == target:  # the earlier export moved aside: the signal comes now
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace)
    with signals_stop(), pytest.raises(Interrupted, match="stopped by SIGTERM"):
        folders.replace_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # a Ctrl-C there without the command's handlers (the Python API): the earlier export stays, it is not deleted
    staging.mkdir()

    def interrupted(source, destination):
        if Path(source) == staging:
            raise KeyboardInterrupt
        real(source, destination)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folders.replace_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and not list(tmp_path.glob(".export.old-*"))


def test_a_killed_runs_unfinished_checkpoint_saves_are_removed_when_the_next_run_takes_the_folder(tmp_path, capsys):
    # a kill during a save left .epoch=0-step=30.ckpt.<random>.partial, as large as a checkpoint with its optimizer
    # state, for good: later runs, fresh or resumed, said nothing of it
    from mmcaption.folders import locks_released_after, take_checkpoint_folder

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    files = {"last.ckpt": b"whole", ".epoch=0-step=30.ckpt.8zyw_hk1.partial": b"x" * 1000, ".last.ckpt.o8twwdqe.partial": b"",
             "notes.partial": b"the user's"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with locks_released_after():
        take_checkpoint_folder(folder)
        assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["last.ckpt", "notes.partial"]
    assert (f"note: removed 2 unfinished checkpoint saves a killed run left in {folder} (.epoch=0-step=30.ckpt.8zyw_hk1.partial, "
            ".last.ckpt.o8twwdqe.partial)") in capsys.readouterr().err


def test_a_signal_as_predict_starts_its_output_is_one_line_and_leaves_no_empty_partial_file(backbones, trained_checkpoint,
                                                                                           image_folder, tmp_path, monkeypatch):
    # SIGTERM while the writer recorded the software (git's status) came after the partial file was opened and before
    # what its summary reads was set: an AttributeError's 60 lines, exit 1, and an empty hidden .partial left
    def stopped():
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr("mmcaption.predictions.software_record", stopped)
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    output = tmp_path / "answers.csv"
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, write_csv(tmp_path / "q.csv", QUESTIONS), output))
    assert not output.exists() and not list(tmp_path.glob(".answers.csv*"))


def test_a_full_disk_in_predict_says_to_resume_and_resuming_completes_the_output(backbones, trained_checkpoint, image_folder,
                                                                                 tmp_path, monkeypatch):
    # "the disk is full ... run the same command again", and the same command was then refused as "a killed run's" rows
    import errno

    from mmcaption.predictions import PredictionWriter
    from mmcaption.resources import resource_message

    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    questions, output = write_csv(tmp_path / "q.csv", QUESTIONS * 2), tmp_path / "answers.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, tmp_path / "whole.csv"))
    real, batches = PredictionWriter._write, []

    def write(self, rows):
        batches.append(rows)
        if len(batches) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    monkeypatch.setattr(PredictionWriter, "_write", write)
    with pytest.raises(OSError) as full:
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    said = resource_message(full.value)
    assert said.startswith(f"the disk is full while writing {tmp_path / '.answers.csv.partial'} (No space left on device); ")
    assert said.endswith(f"; predict: the rows done are kept (in {output}); once there is room, the same command with "
                         "--data.resume true goes on from them")
    monkeypatch.setattr(PredictionWriter, "_write", real)  # room again
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert output.read_text() == (tmp_path / "whole.csv").read_text()
    # a real full disk fails the file's close too (its buffer cannot be written): the rows stay in the hidden partial
    # file, which the message named nowhere ("the rows done are kept")
    output.unlink()
    output.with_name(output.name + ".summary.json").unlink()  # with its summary, which a run never writes over unasked

    class ClosingFails:
        def __init__(self, handle):
            self.handle = handle

        def close(self):
            self.handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    def write_then_fail_closing(self, rows):
        batches.append(rows)
        real(self, rows)
        if len(batches) == 2:
            self.handle = ClosingFails(self.handle)
            raise OSError(errno.ENOSPC, "No space left on device")

    batches.clear()
    monkeypatch.setattr(PredictionWriter, "_write", write_then_fail_closing)
    with pytest.raises(OSError) as full:
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output))
    partial = tmp_path / ".answers.csv.partial"
    assert not output.exists() and partial.is_file()
    assert resource_message(full.value).endswith(f"; predict: the rows done are kept (in {partial}, hidden beside answers.csv); "
                                                 "once there is room, the same command with --data.resume true goes on from them")
    monkeypatch.setattr(PredictionWriter, "_write", real)
    infos = []
    monkeypatch.setattr("mmcaption.data.predict.rank_zero_info", infos.append)
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, resume=True))
    assert output.read_text() == (tmp_path / "whole.csv").read_text()
    assert any(line.startswith(f"resume: {output}: the ") and "which a run that did not end left (killed, out of memory or "
               "disk space), are kept" in line for line in infos), infos  # it blamed a kill (SIGKILL, out of memory)
    # an --data.overwrite run's rows go to answers.interrupted.csv (said then): resuming answers.csv is no advice for it
    batches.clear()
    monkeypatch.setattr(PredictionWriter, "_write", write)
    with pytest.raises(OSError) as full:
        predictor(tmp_path).predict(module, datamodule=choice_data(backbones, questions, output, overwrite=True))
    assert "--data.resume" not in resource_message(full.value) and (tmp_path / "answers.interrupted.csv").is_file()


def test_resuming_a_finished_folders_captions_is_refused_before_the_model_loads(trained_checkpoint, image_folder, tmp_path,
                                                                                monkeypatch, capsys):
    # new photos added to a folder captioned already: the refusal came after the checkpoint had loaded (a minute with
    # Phi-2), and its advice ("give the new ones their own --data.output") captioned the whole folder again
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "captions.jsonl"
    names = sorted(str(p) for p in image_folder.iterdir())
    output.write_text("".join(json.dumps({"image": name, "caption": "a shape"}) + "\n" for name in names[:2]))
    output.with_name("captions.jsonl.summary.json").write_text(json.dumps({"rows": 2, "errors": 0}))
    no_backbones(monkeypatch)
    message = user_error(capsys, main, ["predict", "--ckpt_path", str(trained_checkpoint), "--data",
                                        "mmcaption.data.CaptionPredictDataModule", "--data.images", str(image_folder),
                                        "--data.output", str(output), "--data.resume", "true", "--trainer.logger", "false"])
    assert message.startswith(f"error: resume: {output} is complete (2 rows") and (
        f"this input has 3 rows now: resume goes on with an interrupted run, so to caption the 1 image not in it ({names[2]}), "
        "list it in a text file, one per line, and predict that (--data.images <list>) into its own --data.output") in message


def test_a_patience_changed_on_resume_is_the_one_used_and_said(backbones, coco_root, tmp_path, capsys):
    # Lightning restores EarlyStopping's patience from the checkpoint: raising it to let a run go further was ignored,
    # without a word (a learning rate changed on resume wins, and is said)
    from lightning.pytorch.callbacks import EarlyStopping

    language_dir, vision_dir = backbones
    folder = tmp_path / "checkpoints"

    def run(steps: int, patience: int, resume: bool) -> EarlyStopping:
        stopper = EarlyStopping(monitor="val/loss", patience=patience)
        Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=1, logger=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, val_check_interval=2,
                callbacks=[ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0), ResumableStop(), stopper]).fit(
            make_captioner(backbones), ckpt_path=str(folder / "last.ckpt") if resume else None,
            datamodule=CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir),
                                         image_processor=str(vision_dir), batch_size=4, num_workers=0))
        return stopper

    run(2, patience=1, resume=False)
    capsys.readouterr()
    assert run(4, patience=5, resume=True).patience == 5
    assert "note: EarlyStopping's patience 5 is used, not 1 as " in capsys.readouterr().err


def test_an_error_every_process_of_a_run_meets_is_said_once(tmp_path, monkeypatch, capsys):
    # a file missing for both processes of a 2-GPU run, or a refused resume: each process said it, rank 1's often first
    from mmcaption.terminal import said_once

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, line in ((0, "error: images not found"), (1, "error: images not found"), (1, "error: its own")):
        monkeypatch.setenv("RANK", str(rank))
        said_once(line)
    assert capsys.readouterr().err.splitlines() == ["error: images not found", "[rank 1] error: its own"]
    # what an earlier run on the same port left is not this run's first process's line: said after a few seconds
    (said,) = tmp_path.glob("mmcaption-said-*")
    os.utime(said, (0, 0))
    said_once("error: images not found")
    assert capsys.readouterr().err == "[rank 1] error: images not found\n"
    # a process the launcher stops while it waits for the first one's line says its own before it goes (torchrun ends
    # the others once one has ended: rank 1's error was lost)
    script = ("import os, signal, threading\nfrom mmcaption.terminal import said_once\n"
              "threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()\nsaid_once('error: its own')\n")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT="29518", WORLD_SIZE="2", RANK="1", TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (128 + signal.SIGTERM, "[rank 1] error: its own\n")


def test_a_loader_worker_killed_by_the_out_of_memory_killer_is_said_as_such(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # kill -9 of a worker (what the kernel's out-of-memory killer does) ended fit with PyTorch's traceback, or with
    # "another process of this run stopped" of a one-process run: its pipe's ConnectionResetError read as a DDP peer's
    from mmcaption.data.datasets import ImageTextDataset

    monkeypatch.chdir(tmp_path)
    folder, fetched = tmp_path / "c", tmp_path / "fetched"
    args = [*fit_config(tmp_path, coco_root, backbones, folder), "--trainer.max_steps", "20", "--trainer.limit_val_batches", "0",
            "--trainer.limit_train_batches", "2", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "1"]
    parent, getitems = os.getpid(), ImageTextDataset.__getitems__

    def killed_at_the_sixth_batch(self, indices):
        if os.getpid() != parent:  # in a worker: each epoch's is a new one
            with fetched.open("a") as file:
                file.write("batch\n")
            if len(fetched.read_text().splitlines()) >= 6:  # after the first epochs' checkpoints
                os.kill(os.getpid(), signal.SIGKILL)
        return getitems(self, indices)

    monkeypatch.setattr(ImageTextDataset, "__getitems__", killed_at_the_sixth_batch)
    message = user_error(capsys, main, args)
    assert re.match(r"error: a data-loader worker \(pid \d+\) (was killed by signal Killed|exited unexpectedly): on Linux most "
                    r"often by the out-of-memory killer", message), message
    kept = folder / "last.ckpt"
    assert re.search(r"It died in training step \d+\. To fit: lower --data.num_workers \(1\), or lower --data.batch_size \(4\) "
                     r"and raise --trainer.accumulate_grad_batches \(1\) by as much to keep the batch\. ", message), message
    died = int(re.search(r"It died in training step (\d+)\.", message).group(1))
    # saved at the step before the one it died in (nothing trained since the last save is lost; see test_resume.py)
    assert message.endswith(f"Kept: {kept}, saved at step {died - 1}; --ckpt_path {kept} resumes it, with the batch lowered "
                            "and the accumulation raised as above (the same samples an optimizer step) or fewer workers too; "
                            f"--model.init_from {kept} starts from its weights with other data settings.") and kept.is_file(), message
    assert load_checkpoint_file(kept)["global_step"] == died - 1
    # the loader may see the worker's pipe reset before its exit status: that chain said "another process of this run"
    def pipe_reset():
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as reset:
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly") from reset

    assert user_error(capsys, lambda _: user_errors_exit(pipe_reset)(), []).startswith(
        "error: a data-loader worker (pid 4242) exited unexpectedly: on Linux most often by the out-of-memory killer")
    # ... or as the worker was handing a batch over: the pipe closed mid-read, a bare EOFError in the loader
    import multiprocessing

    class Loader:
        def __init__(self, workers):
            self._workers = workers

        def _try_get_data(self):  # the name torch's and torchdata's loaders read their workers' batches in
            raise EOFError

    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    worker.start()
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    assert user_error(capsys, lambda _: user_errors_exit(Loader([worker])._try_get_data)(), []).startswith(
        f"error: a data-loader worker (pid {worker.pid}) was killed by signal Killed: on Linux most often by the out-of-memory")
    # torch's SIGCHLD handler can say the same death again, wherever the process stands, while the first report (the one
    # the run's callbacks noted) is being handled: the second one ended the command, and the note was lost with the first
    def said_twice(put_aside: bool = False):
        try:
            first = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
            add_note(first, "It died in training step 5.")
            raise first
        except RuntimeError:
            again = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
            if put_aside:
                raise again from None
            raise again  # noqa: B904 (as torch raises it)

    assert user_error(capsys, lambda _: user_errors_exit(said_twice)(), []).endswith("It died in training step 5.")
    # ... but not through an error put aside (`raise ... from None`): its note may be of another failure
    assert "It died" not in user_error(capsys, lambda _: user_errors_exit(lambda: said_twice(put_aside=True))(), [])


def test_a_batch_that_shared_memory_cannot_hold_is_said_not_waited_for(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # a worker's batch goes to the main process through shared memory (/dev/shm: Docker's 64 MB by default; `ulimit -f`):
    # where it did not fit, Python's queue printed the worker's traceback and dropped the batch, and fit and predict
    # waited for it for ever (a SIGTERM could not stop the fit either: its save waits for the end of the step)
    from multiprocessing.reduction import ForkingPickler

    def no_room(tensor):  # what torch's reduction of a tensor raises when /dev/shm is full
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_4242_1_0>: No space left on device (28)")

    monkeypatch.setitem(ForkingPickler._extra_reducers, torch.Tensor, no_room)  # (the workers are forked from here)
    dm = CaptionDataModule(data_dir=str(coco_root), cache_dir=str(tmp_path / "cache"), tokenizer=str(backbones[0]),
                           image_processor=str(backbones[1]), batch_size=4, num_workers=1)
    dm.prepare_data()
    dm.setup("fit")
    for loader in (dm.train_dataloader(), DataLoader(range(8), batch_size=2, num_workers=1, worker_init_fn=worker_init)):
        loader.timeout = 120  # (torchdata's StatefulDataLoader, then torch's own: each waited for ever)
        message = user_error(capsys, lambda _, loader=loader: user_errors_exit(lambda: next(iter(loader)))(), [])
        assert message.startswith("error: a data-loader worker could not hand a batch to the main process (unable to allocate "
                                  "shared memory(shm) for file </torch_4242_1_0>: No space left on device (28)): a batch goes "
                                  "through shared memory (/dev/shm, "), message
        assert message.endswith("`docker run --shm-size 8g` (or `--ipc host`) gives it more. --data.init_args.num_workers 0 "
                                "loads the data in the main process, without it")
    # `ulimit -f`, which limits the files shared memory is made of too: said as such, with its size
    def too_large(tensor):
        raise RuntimeError("unable to resize file </torch_4242_1_0> to the right size: File too large (27)")

    monkeypatch.setitem(ForkingPickler._extra_reducers, torch.Tensor, too_large)
    monkeypatch.setattr("mmcaption.resources._file_size_limit", lambda: "4,096 bytes")
    loader = DataLoader(range(8), batch_size=2, num_workers=1, worker_init_fn=worker_init, timeout=120)
    assert user_error(capsys, lambda _: user_errors_exit(lambda: next(iter(loader)))(), []) == (
        "error: a data-loader worker could not hand a batch to the main process (unable to resize file </torch_4242_1_0> to "
        "the right size: File too large (27)): a batch goes through files in shared memory (/dev/shm), and this process may "
        "write files of 4,096 bytes at most (`ulimit -f`): raise the limit, or --data.init_args.num_workers 0 loads the "
        "data in the main process, without it")


def test_a_full_disk_under_the_logs_stops_the_curves_not_the_training(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # TensorBoard's writer thread died with its traceback, and the next step's metrics raised "No space left on device"
    # (no file named) in the training loop: the run stopped, losing what it learnt since its last checkpoint, although
    # the checkpoints' disk had room
    from tensorboard.compat.tensorflow_stub.io import gfile

    monkeypatch.chdir(tmp_path)
    folder, logs = tmp_path / "c", tmp_path / "logs"
    args = [*fit_config(tmp_path, coco_root, backbones, folder, log_dir=logs), "--trainer.max_steps", "8",
            "--trainer.log_every_n_steps", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    append, written = gfile.LocalFileSystem.append, []

    def full_after_a_few(self, filename, file_content, binary_mode=False):
        written.append(filename)
        if len(written) > 3:  # the events file's disk is full from its fourth write on
            raise OSError(28, "No space left on device")
        return append(self, filename, file_content, binary_mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "append", full_after_a_few)
    main(args)  # ends as a finished run
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    [warning] = [line for line in err.splitlines() if line.startswith("warning: the disk is full")]
    assert re.match(rf"warning: the disk is full under {re.escape(str(logs))}/lightning_logs/version_0 \(No space left on device, "
                    rf"[0-9.]+ MB free\): TensorBoardLogger's curves stop at step \d+ \(what was written there is kept\), and "
                    rf"training goes on, its checkpoints saved in {re.escape(str(folder))} as before\.", warning), warning
    assert load_checkpoint_file(folder / "last.ckpt")["global_step"] == 8  # trained to its end
    assert len(written) == 4 and all("events.out.tfevents" in str(name) for name in written)  # nothing tried after


class _SignalWhenCollected:
    """Sends this process SIGTERM from its ``__del__``, where Python drops an exception (as a DataLoader iterator's
    workers are shut down when the run's loaders are let go)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside __del__


class SignalInTeardown(Callback):
    """A stop signal as the run is torn down, its work done."""

    def teardown(self, trainer, pl_module, stage):
        _SignalWhenCollected()  # collected at once


def test_a_stop_signal_in_the_teardown_of_a_finished_command_stops_it_saying_it_is_complete(
    backbones, coco_root, tmp_path, monkeypatch, capsys
):
    # raised where Python drops it (a DataLoader's __del__), SIGTERM after the last step was lost: the command exited 0
    # and a pipeline went on to its next stage; raised inside Lightning's teardown, it chained tracebacks
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "c"
    args = fit_config(tmp_path, coco_root, backbones, folder)
    config = yaml.safe_load(Path(args[2]).read_text())
    config["trainer"]["callbacks"].append({"class_path": f"{__name__}.SignalInTeardown"})
    Path(args[2]).write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"])
    err = capsys.readouterr().err
    assert stopped.value.code == 143, err
    assert err.strip().splitlines()[-1] == ("SIGTERM received as the command ended: what it did is complete and saved; "
                                            "stopped there"), err
    assert "Traceback" not in err and load_checkpoint_file(folder / "last.ckpt")["global_step"] == 2

    # the pipeline: a signal held through stage 1's teardown stops it before stage 2, saying how to go on
    from mmcaption.errors import Interrupted, hold_stops, signals_stop

    calls = []

    def stage(args):
        calls.append(args)
        hold_stops()  # as the stage's fit does once its training has ended
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

    monkeypatch.setattr(pipeline, "run_cli", stage)
    monkeypatch.setattr(pipeline, "handoff_checkpoint", lambda cli: "caption-best.ckpt")
    monkeypatch.setattr(pipeline, "stage_last", lambda cli: "caption-last.ckpt")
    with signals_stop(), pytest.raises(Interrupted) as held:
        pipeline.run_pipeline("c.yaml", "i.yaml", [], check=False)
    assert len(calls) == 1 and held.value.signum == signal.SIGTERM  # stage 2 never began
    assert str(held.value) == ("SIGTERM received as stage 1 ended, before stage 2 began; stage 1 is done: run the same "
                               "command with --ckpt_path caption-last.ckpt to go on without training stage 1 again")
    # once a run's teardown is over (run_cli returns), a stop acts at once again: the demo's evaluation after its
    # stages, or stage 2's preparing, were not to wait for the end of the command
    from mmcaption.errors import release_held_stops

    with signals_stop(), pytest.raises(Interrupted, match="stopped by SIGINT"):
        hold_stops()
        release_held_stops()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)


@pytest.mark.parametrize("save_last", [True, "link"])
def test_a_run_finished_at_max_epochs_resumed_with_another_setting_trains_nothing_and_rewrites_no_checkpoint(
    backbones, coco_root, tmp_path, monkeypatch, capsys, save_last
):
    # its last.ckpt is saved as the last epoch ends, so Lightning's loop started and ended at once: last.ckpt was saved
    # again recording the resume's learning rate (steps it never trained), with no word that nothing was trained, and
    # a run folder of nothing listed in TensorBoard
    monkeypatch.chdir(tmp_path)
    fit = [*fit_config(tmp_path, coco_root, backbones, tmp_path / "c"), "--trainer.max_steps", "-1", "--trainer.max_epochs", "2",
           "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "2"]
    config = yaml.safe_load((tmp_path / "fit.yaml").read_text())  # saved at the last validation, as the demo's configs'
    config["trainer"]["callbacks"][0]["init_args"].update(monitor="val/loss", save_last=save_last)
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    main(fit)
    last = tmp_path / "c" / "last.ckpt"
    written = last.read_bytes()
    capsys.readouterr()
    main([*fit, "--ckpt_path", "last", "--model.learning_rate", "0.5"])
    out, err = capsys.readouterr()
    assert last.read_bytes() == written and sorted(p.name for p in last.parent.iterdir() if p.name.startswith("last")) == ["last.ckpt"]
    assert f"note: {last} is at step 4 (epoch 2), the end of trainer.max_epochs 2: this fit trained nothing more (to train on, " \
           "raise --trainer.max_epochs above 2)" in err, err
    assert "saved" not in out and sorted(p.name for p in (tmp_path / "logs" / "lightning_logs").iterdir()) == ["version_0"]
    # resumed with an epoch more, it trains it and saves it (an early mark of "saved" broke save_last: link there)
    main([*fit, "--ckpt_path", "last", "--trainer.max_epochs", "3"])
    assert max(torch.load(p, weights_only=False)["global_step"] for p in last.parent.glob("last*.ckpt")) == 6
