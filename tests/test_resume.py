"""A training run killed with SIGKILL resumes from its last checkpoint and continues exactly as an
uninterrupted run would have: same batches, same losses. Checkpoint files are never half-written."""

import errno
import io
import json
import os
import pickle
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import types
from contextlib import suppress
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from mmcaption.advice import OutOfMemoryAdvice
from mmcaption.checkpoint import (
    AtomicCheckpointIO,
    CheckpointFileError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    save_atomically,
)
from mmcaption.demo import prepare_demo_assets, scalar_series
from mmcaption.folders import LOCK_FILE
from mmcaption.resources import resource_message

from .conftest import REPO, run_in_process

DEMO_CONFIG = str(REPO / "configs" / "demo" / "caption.yaml")
# 16 images x 5 captions at batch 8: 10 steps an epoch. The run is killed in its second epoch, where
# resuming must also restore the epoch's shuffle, not only the position in it.
MAX_STEPS = 16
STEPS_PER_EPOCH = 10
KILL_AFTER = 12


def fit_command(workdir: Path, name: str, delay: float = 0.0, ckpt_path: Path | None = None, max_steps: int = MAX_STEPS,
                extra: tuple[str, ...] = ()) -> list[str]:
    overrides = {
        "trainer": {
            "max_steps": max_steps, "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(workdir / f"checkpoints-{name}"), "monitor": None, "every_n_train_steps": 3,
                               "save_last": True}},
                {"class_path": "tests.recording.RecordSteps",
                 "init_args": {"path": str(workdir / f"{name}.jsonl"), "delay": delay}},
            ],
        },
        "data": {"init_args": {"batch_size": 8, "num_workers": 1}},
    }
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    command = [sys.executable, "-m", "mmcaption", "fit", "--config", DEMO_CONFIG, "--config", str(config)]
    return command + (["--ckpt_path", str(ckpt_path)] if ckpt_path else []) + list(extra)


def ran(command: list[str], cwd: Path) -> tuple[int, str]:
    """``command`` (a :func:`fit_command`) run to its end in this process (:func:`tests.conftest.run_in_process`): for
    the runs no signal interrupts, the ~13 s of imports a process takes are taken once."""
    assert command[1:3] == ["-m", "mmcaption"], command
    return run_in_process(command[3:], cwd)


def run(command: list[str], cwd: Path) -> str:
    """``command`` run as :func:`ran` runs it, which must succeed: its console text."""
    status, said = ran(command, cwd)
    assert status == 0, said[-3000:]
    return said


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def records(path: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    """(working folder with the demo data, the steps of an uninterrupted run there)."""
    workdir = tmp_path_factory.mktemp("resume")
    prepare_demo_assets(workdir / "demo_data", train_images=16, val_images=4, pretrain_steps=0, clip_steps=0)
    run(fit_command(workdir, "straight"), workdir)
    steps = records(workdir / "straight.jsonl")
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
    return workdir, steps


def start_and_wait(workdir: Path, name: str, until, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a slowed-down run and return once ``until()`` holds (the run still going)."""
    process = subprocess.Popen(fit_command(workdir, name, delay=0.5), cwd=workdir, env=env or subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not until():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{name}: not there within 5 minutes"
        time.sleep(0.2)
    return process


def assert_resume_repeats_the_straight_run(workdir: Path, straight_steps: dict, name: str, last: Path) -> None:
    interrupted = records(workdir / f"{name}.jsonl")
    checkpoint = load_checkpoint_file(last)  # readable whatever the signal interrupted
    resumed_from = checkpoint["global_step"]
    assert resumed_from > STEPS_PER_EPOCH and resumed_from % STEPS_PER_EPOCH != 0  # mid-epoch, second epoch
    run(fit_command(workdir, f"{name}-resumed", ckpt_path=last), workdir)
    resumed = records(workdir / f"{name}-resumed.jsonl")
    assert sorted(resumed) == list(range(resumed_from + 1, MAX_STEPS + 1))  # nothing repeated, nothing skipped
    for step in range(1, MAX_STEPS + 1):
        run_row = resumed.get(step) or interrupted[step]
        assert run_row["first_ids"] == straight_steps[step]["first_ids"], step
        assert run_row["token_sum"] == straight_steps[step]["token_sum"], step
        assert run_row["loss"] == pytest.approx(straight_steps[step]["loss"], rel=1e-5, abs=1e-6), step
    # no temporary file is left beside the checkpoints (the folder's lock file is the run's own, not debris)
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


@pytest.mark.slow
@pytest.mark.xdist_group("resume")  # shares the module's uninterrupted run
def test_sigkill_mid_epoch_then_resume_replays_the_uninterrupted_batches_and_losses(straight):
    workdir, straight_steps = straight
    last = workdir / "checkpoints-killed" / "last.ckpt"
    # killed from outside once a mid-epoch checkpoint exists
    process = start_and_wait(workdir, "killed", lambda: last.is_file() and load_checkpoint_file(last)["global_step"] >= KILL_AFTER)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert max(records(workdir / "killed.jsonl")) < MAX_STEPS, "the run finished before it was killed"
    assert_resume_repeats_the_straight_run(workdir, straight_steps, "killed", last)


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_a_checkpoint_saved_at_an_epochs_last_step_resumes_exactly(straight):
    # the training loader drew its iterator's seed from the process's generator: resumed from a save at an epoch's
    # last step (the config's own last.ckpt after its end-of-epoch validation, every_n_train_steps landing there), the
    # next epoch's draw came before the saved random state was put back, and every later dropout mask differed
    workdir, _ = straight
    epochs_of_5 = ("--data.init_args.num_workers", "0", "--trainer.limit_train_batches", "5")
    command = fit_command(workdir, "boundary", max_steps=8, extra=epochs_of_5)
    config = workdir / "boundary.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=5, save_top_k=-1)
    config.write_text(yaml.safe_dump(settings))
    run(command, workdir)  # uninterrupted, saving at step 5: the end of its first epoch
    uninterrupted = records(workdir / "boundary.jsonl")
    (saved,) = (workdir / "checkpoints-boundary").glob("*step=5.ckpt")
    run(fit_command(workdir, "boundary-resumed", ckpt_path=saved, max_steps=8, extra=epochs_of_5), workdir)
    resumed = records(workdir / "boundary-resumed.jsonl")
    assert sorted(resumed) == [6, 7, 8]
    for step, row in resumed.items():
        assert row["first_ids"] == uninterrupted[step]["first_ids"], step
        assert row["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6, abs=1e-7), step


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_mid_epoch_saves_exits_non_zero_and_resumes_exactly(straight, signum, exit_code):
    workdir, straight_steps = straight
    name = signal.Signals(signum).name.lower()
    steps = workdir / f"{name}.jsonl"
    # between two of the run's own checkpoints (every 3 steps): only the signal's checkpoint holds this step
    process = start_and_wait(workdir, name, lambda: steps.is_file() and max(records(steps), default=0) >= KILL_AFTER - 1)
    os.killpg(process.pid, signum)  # to every process of the run, data loader workers too, as a terminal's Ctrl-C
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr[-3000:]
    last = workdir / f"checkpoints-{name}" / "last.ckpt"
    done = max(records(steps))
    assert done < MAX_STEPS, "the run finished before the signal"
    saved = load_checkpoint_file(last)
    assert saved["global_step"] == done  # saved at the end of the step it was in
    # a next stage started from it says these weights did not finish training (one started from a best checkpoint does not)
    assert saved["stopped_by"] == signal.Signals(signum).name and saved["planned_steps"] == MAX_STEPS
    message = stderr.strip().splitlines()[-1]
    assert message == (f"stopped by {signal.Signals(signum).name} at step {done}: saved {last}; "
                       f"resume by running the same command with --ckpt_path {last}")
    assert "Traceback" not in stderr
    assert_resume_repeats_the_straight_run(workdir, straight_steps, name, last)


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_ctrl_c_in_an_epochs_last_batch_resumes_exactly(straight):
    # saved at the end of an epoch's last batch under max_steps (max_epochs -1, as "Training longer" says): Lightning
    # closed that epoch as it resumed and again after a pass that found the loader at its end, so the next epoch was
    # shuffled and numbered as the one after it, and every later loss differed
    workdir, straight_steps = straight
    signal_at = ("--trainer.max_epochs", "-1", "--trainer.callbacks+=tests.recording.SignalAt",
                 "--trainer.callbacks.init_args.step", str(STEPS_PER_EPOCH - 1))
    stopped = subprocess.run(fit_command(workdir, "epoch-last", extra=signal_at), cwd=workdir, env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    last = workdir / "checkpoints-epoch-last" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == STEPS_PER_EPOCH
    run(fit_command(workdir, "epoch-last-resumed", ckpt_path=last, extra=("--trainer.max_epochs", "-1")), workdir)
    resumed = records(workdir / "epoch-last-resumed.jsonl")
    assert sorted(resumed) == list(range(STEPS_PER_EPOCH + 1, MAX_STEPS + 1))
    for step, row in resumed.items():
        assert row["first_ids"] == straight_steps[step]["first_ids"], step
        assert row["loss"] == pytest.approx(straight_steps[step]["loss"], rel=1e-5, abs=1e-6), step
    assert load_checkpoint_file(workdir / "checkpoints-epoch-last-resumed" / "last.ckpt")["epoch"] == 1  # as the straight run's


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_closing_the_terminal_mid_epoch_saves_and_resumes_exactly(straight):
    # an SSH connection dropped, a terminal window closed: the kernel sends SIGHUP to the terminal's foreground
    # processes, data loader workers too, and writing to the terminal fails from then on. The run died at once,
    # without a checkpoint: the steps since the last save were lost
    workdir, _ = straight
    steps = workdir / "hangup.jsonl"
    pid, terminal = pty.fork()  # the run in a terminal of its own, as a shell in a terminal window starts it
    if pid == 0:
        os.chdir(workdir)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a shell in a terminal has it (a test run under nohup: ignored)
        logged = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "logs",
                  "--trainer.log_every_n_steps", "1"]
        os.execve(sys.executable, fit_command(workdir, "hangup", delay=0.5, extra=tuple(logged)), subprocess_env())
    output, status = bytearray(), None
    try:
        deadline = time.monotonic() + 300
        while not (steps.is_file() and max(records(steps), default=0) >= KILL_AFTER - 1):
            assert time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0), output.decode(errors="replace")[-3000:]
            if select.select([terminal], [], [], 0.2)[0]:
                with suppress(OSError):
                    output += os.read(terminal, 65536)  # the run's output: a terminal that is read, as a window is
        os.close(terminal)  # the terminal goes away: SIGHUP
        deadline = time.monotonic() + 120
        while status is None and time.monotonic() < deadline:
            done_pid, wait_status = os.waitpid(pid, os.WNOHANG)
            status = wait_status if done_pid else time.sleep(0.2)
        assert status is not None, "the run did not end within 2 minutes of its terminal closing"
    finally:
        if status is None:  # a failed check: the run (in a session of its own) must not outlive the test
            with suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 129, output.decode(errors="replace")[-3000:]
    last = workdir / "checkpoints-hangup" / "last.ckpt"
    done = max(records(steps))
    assert done < MAX_STEPS, "the run finished before the terminal closed"
    assert load_checkpoint_file(last)["global_step"] == done  # saved at the end of the step it was in, as on SIGTERM,
    # whose resume from there the test above checks step by step; that step's loss is logged too (the curve had a gap)
    logged = [row.split(",") for row in next((workdir / "logs").rglob("metrics.csv")).read_text().splitlines()]
    step = logged[0].index("step")
    assert sorted({int(row[step]) for row in logged[1:]}) == list(range(done))  # steps 1..done, logged from 0

    # started with nohup, the run goes on when the terminal closes, as it was asked to
    with_nohup = subprocess.run([sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                                 "from mmcaption.errors import stop_signals; print([s.name for s in stop_signals()])"],
                                env=subprocess_env(), capture_output=True, text=True, check=True)
    assert with_nohup.stdout.strip() == "['SIGINT', 'SIGTERM']"


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_slurms_time_limit_signal_saves_at_the_step_end_requeues_and_the_requeued_job_resumes_exactly(straight, tmp_path):
    """``#SBATCH --signal=SIGUSR1@90``: Lightning's own handler saved hpc_ckpt_N.ckpt mid-step into the working
    folder, and every later run under SLURM there resumed from it (another experiment's too), inexactly."""
    workdir, straight_steps = straight
    (tmp_path / "bin").mkdir()
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    env = {**subprocess_env(), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_NTASKS": "1",
           "SLURM_JOB_NAME": "train.sh", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    steps = workdir / "slurm.jsonl"
    process = start_and_wait(workdir, "slurm", lambda: steps.is_file() and max(records(steps), default=0) >= KILL_AFTER - 1, env)
    os.killpg(process.pid, signal.SIGUSR1)  # SLURM signals every process of the job: the data loader worker too
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    last = workdir / "checkpoints-slurm" / "last.ckpt"
    done = max(records(steps))
    assert done < MAX_STEPS and load_checkpoint_file(last)["global_step"] == done  # at the end of the step it was in
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by SIGUSR1 at step {done}: saved {last}; resume by running the same command with --ckpt_path {last}. "
        "SLURM job 4242 is requeued: it runs the same command again, which resumes from this checkpoint")
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"
    assert not list(workdir.glob("hpc_ckpt_*.ckpt"))
    interrupted = records(steps)
    # the requeued job runs the same command, with SLURM_RESTART_COUNT set
    result = subprocess.run(fit_command(workdir, "slurm"), cwd=workdir, env={**env, "SLURM_RESTART_COUNT": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"note: SLURM requeued this job (restart 1): it resumes from its own last save, {last}" in result.stderr
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    assert [row["step"] for row in rows[len(interrupted):]] == list(range(done + 1, MAX_STEPS + 1))
    for row in rows:
        assert row["first_ids"] == straight_steps[row["step"]]["first_ids"], row["step"]
        assert row["loss"] == pytest.approx(straight_steps[row["step"]]["loss"], rel=1e-5, abs=1e-6), row["step"]
    # an hpc_ckpt that Lightning would resume any run under SLURM from is refused by name
    (workdir / "hpc_ckpt_1.ckpt").write_bytes(last.read_bytes())
    result = subprocess.run(fit_command(workdir, "slurm-other"), cwd=workdir, env=env, capture_output=True, text=True)
    (workdir / "hpc_ckpt_1.ckpt").unlink()
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{workdir / 'hpc_ckpt_1.ckpt'} is a checkpoint Lightning saved on a SLURM requeue signal" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_training_longer_from_a_max_steps_stop_goes_on_with_the_epoch_and_the_learning_rate_given(straight):
    workdir, straight_steps = straight
    stopped = 11  # mid-epoch, between the run's own checkpoints (every 3 steps): only the end-of-training save holds it
    run(fit_command(workdir, "short", max_steps=stopped), workdir)
    last = workdir / "checkpoints-short" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == stopped
    # another number of loader workers (fewer, as the advice on a worker killed for memory says): torchdata restores its
    # place only with as many (a traceback, then the run hung; then refused): the sampler starts after the samples done
    said = run(fit_command(workdir, "fewer", ckpt_path=last, extra=("--data.init_args.num_workers", "0")), workdir)
    assert (f"note: {last} was saved by a training loader with 1 worker processes, and this run has 0: it resumes from sample "
            f"8 of 80 of its epoch 2") in said
    assert "saved as a data-loader worker died" not in said  # its loader position was dropped for the other count, not lost
    fewer = records(workdir / "fewer.jsonl")
    assert sorted(fewer) == list(range(stopped + 1, MAX_STEPS + 1))
    for step in fewer:  # (the losses differ: the stopped run's schedule ended at its step 11, the weights with it)
        assert fewer[step]["samples"] == straight_steps[step]["samples"], step
    config = yaml.safe_load(Path(DEMO_CONFIG).read_text())
    halved = config["model"]["learning_rate"] / 2
    said = run(fit_command(workdir, "longer", ckpt_path=last, extra=("--model.learning_rate", str(halved), "--model.weight_decay",
                                                                    "0.05", "--model.adam_betas", "[0.8, 0.95]")), workdir)
    # the jump from the finished schedule's 0 is said (a run extended went on at part of its peak without a word)
    assert re.search(rf"the learning rate goes from 0 to [\d.e-]+ \(\d+% of {halved:g}\) at step {stopped}: the schedule now "
                     rf"ends at step {MAX_STEPS}, this run's end", said), said[-2000:]
    longer = records(workdir / "longer.jsonl")
    assert sorted(longer) == list(range(stopped + 1, MAX_STEPS + 1))
    for step in longer:  # the rest of the epoch, in its order (it started a new epoch, skipping the rest of this one)
        assert longer[step]["first_ids"] == straight_steps[step]["first_ids"], step
        # the rate given on resume, on the schedule of the new length (the checkpoint's rate was kept, and the first
        # step trained at the old schedule's last rate, 0)
        assert longer[step]["lr"] == pytest.approx(straight_steps[step]["lr"] / 2, rel=1e-6), step
    saved = load_checkpoint_file(workdir / "checkpoints-longer" / "last.ckpt")
    assert saved["global_step"] == MAX_STEPS
    # the weight decay and betas given on resume, as the note said: the restored optimizer kept the saved ones
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"])) for g in groups] == [(0.05, (0.8, 0.95)), (0.0, (0.8, 0.95))]


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_resuming_from_a_checkpoint_older_than_the_folders_last_keeps_the_newer_one(straight):
    # --ckpt_path best, or a checkpoint kept aside: Lightning wrote the resumed run's last over the newer last.ckpt
    workdir, _ = straight
    folder = workdir / "checkpoints-branch"
    shutil.copytree(workdir / "checkpoints-straight", folder)
    (older,) = folder.glob("epoch=*-step=15.ckpt")
    newer = (folder / "last.ckpt").read_bytes()
    said = run(fit_command(workdir, "branch", ckpt_path=older), workdir)
    assert (f"note: {folder / 'last.ckpt'} (step 16) is newer than the checkpoint resumed from (step 15): it is kept, and "
            "this run's last checkpoint is saved beside it") in said
    assert (folder / "last.ckpt").read_bytes() == newer
    assert load_checkpoint_file(folder / "last-v1.ckpt")["global_step"] == MAX_STEPS


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_a_max_time_stop_resumes_in_the_epoch_it_stopped_in(straight):
    # a cluster job chain of max_time runs: the checkpoint of each stop was saved once Lightning had closed the epoch, and
    # every resume skipped the rest of the epoch it stopped in (and a schedule sized by epochs shrank), unsaid
    workdir, straight_steps = straight
    said = run(fit_command(workdir, "timed", delay=0.5, extra=("--trainer.max_time", "00:00:00:04")), workdir)
    last = workdir / "checkpoints-timed" / "last.ckpt"
    step = load_checkpoint_file(last)["global_step"]
    assert 0 < step < STEPS_PER_EPOCH  # at most 8 steps of 0.5 s in 4 s: inside the first epoch
    assert (f"note: trainer.max_time (0m04s) stopped training at step {step} of {MAX_STEPS}, before the end of its "
            f"learning-rate schedule; to train the rest, resume it (--ckpt_path {last}) with a larger --trainer.max_time") \
        in said
    run(fit_command(workdir, "timed-on", ckpt_path=last, extra=("--trainer.max_time", "00:01:00:00")), workdir)
    resumed = records(workdir / "timed-on.jsonl")
    assert sorted(resumed) == list(range(step + 1, MAX_STEPS + 1))
    for at in resumed:  # the rest of the first epoch in its order, then the second: was the second epoch at once
        assert resumed[at]["first_ids"] == straight_steps[at]["first_ids"], at


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_a_run_resumed_for_more_epochs_with_other_accumulation_trains_them_on_a_schedule_of_its_length(straight):
    # the schedule was counted from step 0 under the new settings: 2 epochs of 10 batches accumulating 2 made 10 steps,
    # reached already, and the second epoch trained at a rate of 0 without a word
    workdir, _ = straight
    epochs = ("--trainer.max_steps", "-1", "--trainer.max_epochs")
    run(fit_command(workdir, "one-epoch", extra=(*epochs, "1")), workdir)
    last = workdir / "checkpoints-one-epoch" / "last.ckpt"
    assert load_checkpoint_file(last)["global_step"] == STEPS_PER_EPOCH
    # a run that reached max_epochs, resumed to train longer: its next epoch came in epoch 0's order, batch for batch
    run(fit_command(workdir, "more-epochs", ckpt_path=last, extra=(*epochs, "2")), workdir)
    more = records(workdir / "more-epochs.jsonl")
    assert sorted(more) == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))
    straight_steps = straight[1]
    for step in range(STEPS_PER_EPOCH + 1, MAX_STEPS + 1):  # the uninterrupted run's second epoch, as far as it went
        assert more[step]["first_ids"] == straight_steps[step]["first_ids"], step
    said = run(fit_command(workdir, "accumulated", ckpt_path=last, extra=(*epochs, "2", "--trainer.accumulate_grad_batches", "2")),
               workdir)
    end = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2
    assert (f"the learning-rate schedule ends at step {end}: this run's epochs from step {STEPS_PER_EPOCH} ({STEPS_PER_EPOCH} "
            f"batches, accumulate_grad_batches 2); counted from step 0 it would end at step {STEPS_PER_EPOCH}") in said
    stepped = [json.loads(line) for line in (workdir / "accumulated.jsonl").read_text().splitlines()][1::2]  # each step's
    assert [row["step"] for row in stepped] == list(range(STEPS_PER_EPOCH + 1, end + 1))  # second batch: the one it steps on
    base = yaml.safe_load(Path(DEMO_CONFIG).read_text())["model"]["learning_rate"]
    assert [row["lr"] for row in stepped] == pytest.approx([base * (end - s) / end for s in range(STEPS_PER_EPOCH, end)])
    assert load_checkpoint_file(workdir / "checkpoints-accumulated" / "last.ckpt")["planned_steps"] == end


@pytest.mark.slow
@pytest.mark.xdist_group("resume")  # shares the module's uninterrupted run
def test_training_longer_from_a_max_steps_stop_at_an_epochs_end_goes_on_with_the_next_epochs_order(straight):
    # Lightning counted the finished epoch twice (its issue #19617): the next epoch was shuffled as the one after it,
    # and max_epochs came an epoch early (a run resumed to train longer trained nothing)
    workdir, straight_steps = straight

    def saving(name: str, **settings) -> dict:
        return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(workdir / f"checkpoints-{name}"), "monitor": None, "save_top_k": -1, **settings}}

    # every place a checkpoint is saved at an epoch's last batch: the max_steps save after it (the run's last.ckpt),
    # at that batch's end (every_n_train_steps dividing the epoch), at a validation's end on it, inside the epoch's end
    savers = workdir / "at-epoch-end.yaml"
    savers.write_text(yaml.safe_dump({"trainer": {"callbacks+": [
        saving("batch-end", every_n_train_steps=5), saving("validation-end", mode="max"),  # (mode: a key of its own)
        saving("epoch-end-inside", every_n_epochs=1, save_on_train_epoch_end=True)]}}))
    validating = ("--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "5", "--trainer.check_val_every_n_epoch", "1",
                  "--data.init_args.val_caption_images", "0")
    run(fit_command(workdir, "epoch-end", max_steps=STEPS_PER_EPOCH, extra=("--config", str(savers), *validating)), workdir)
    last = workdir / "checkpoints-epoch-end" / "last.ckpt"
    saved = {name: workdir / f"checkpoints-{name}" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"
             for name in ("batch-end", "validation-end", "epoch-end-inside")}
    for name, checkpoint in (("after", last), *saved.items()):
        # each step's loss in TensorBoard at its place: Lightning put the resumed run's one step to the right of where the
        # same steps of an uninterrupted run are (step 10's at 11), one more with each such resume
        logged = ("--trainer.logger", json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                  "init_args": {"save_dir": str(workdir / f"logs-{name}")}}),
                  "--trainer.log_every_n_steps", "1", "--trainer.callbacks+=LearningRateMonitor",
                  "--trainer.callbacks.logging_interval=step")
        run(fit_command(workdir, f"resumed-{name}", ckpt_path=checkpoint, max_steps=2 * STEPS_PER_EPOCH, extra=logged), workdir)
        (log_dir,) = (workdir / f"logs-{name}").glob("*/version_*")
        for curve in ("train/loss", "lr-AdamW/pg1"):  # (LearningRateMonitor logs at a batch's start)
            assert [step for step, _ in scalar_series(log_dir, curve)] == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)), (name, curve)
        longer = records(workdir / f"resumed-{name}.jsonl")
        assert sorted(longer) == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1)), name
        for step in range(STEPS_PER_EPOCH + 1, MAX_STEPS + 1):
            assert longer[step]["first_ids"] == straight_steps[step]["first_ids"], (name, step)
        epoch = [sample for row in longer.values() for sample in row["samples"]]  # the whole next epoch, each sample once
        assert len(epoch) == len(set(epoch)) == 8 * STEPS_PER_EPOCH, name
    run(fit_command(workdir, "epoch-end-two", ckpt_path=last, max_steps=100, extra=("--trainer.max_epochs", "2")), workdir)
    assert sorted(records(workdir / "epoch-end-two.jsonl")) == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))


KILL_DURING_WRITE = """
import sys, time, torch
from mmcaption.checkpoint import save_atomically

class Slow(torch.nn.Module):
    def __reduce_ex__(self, protocol):  # only the test's writer is slow: it sleeps half-way through
        time.sleep(60)
        return (dict, ())

path = sys.argv[1]
save_atomically({"global_step": 1, "weights": torch.ones(1000)}, path)
print("first", flush=True)
save_atomically({"global_step": 2, "weights": torch.zeros(1000), "slow": Slow()}, path)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "first"
    deadline = time.monotonic() + 60
    while not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]:  # the second write has begun
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    process.kill()
    process.wait()
    process.stdout.close()
    checkpoint = load_checkpoint_file(target)
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["weights"], torch.ones(1000))


def test_a_checkpoint_is_hashed_as_it_loads_only_where_results_name_it(tmp_path, monkeypatch):
    # an evaluation's results name the checkpoint by the sha256 of the bytes it loaded, read once more to hash them: not
    # for a resumed fit (nothing records it; GBs read again at each resume), nor on the other processes of a DDP run
    from mmcaption import checkpoint

    hashed = []
    monkeypatch.setattr(checkpoint, "hash_before_loading", lambda handle, path: hashed.append(path))
    target = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, target)

    class Running:
        def __init__(self, fn, is_global_zero):
            self.state, self.is_global_zero = types.SimpleNamespace(fn=fn), is_global_zero

    # (predict: on each process, which writes its share's summary)
    for fn, zero, hashes in (("fit", True, False), ("validate", False, False), ("validate", True, True), ("predict", False, True)):
        hashed.clear()
        trainer = Running(fn, zero)
        assert AtomicCheckpointIO(trainer).load_checkpoint(target)["global_step"] == 1
        assert hashed == ([target] if hashes else []), (fn, zero)
    assert pickle.loads(pickle.dumps(AtomicCheckpointIO(trainer)))._trainer is None  # a spawned process's copy (was a TypeError)


def test_a_failed_write_such_as_a_full_disk_keeps_the_old_checkpoint_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()

    class FillingDisk(io.BufferedWriter):  # the disk fills half-way through torch.save's own writer
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    opened = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FillingDisk(io.FileIO(fd, "wb")) if mode == "wb" else opened(fd, mode, *a, **k))
    with pytest.raises(OSError, match="No space left") as failed:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "weights": torch.ones(100_000)}, target)
    monkeypatch.undo()
    assert AtomicCheckpointIO().load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

    # what the user reads: the file and the space left, and - in training - the checkpoint to resume from. It said
    # "the disk is full (No space left on device)... run the same command again", which starts at step 0 without
    # --ckpt_path, and named no file (the write went through a file object)
    error = failed.value
    fit = SimpleNamespace(state=SimpleNamespace(fn="fit"), checkpoint_callback=SimpleNamespace(last_model_path=str(target)))
    OutOfMemoryAdvice().on_exception(fit, None, error)
    message = resource_message(error)
    assert message.startswith(f"the disk is full while writing {target} (No space left on device); ")
    assert " GB free there now. " in message
    assert message.endswith(f"run the same command again; --ckpt_path {target} resumes from its last whole checkpoint, "
                            "not from step 0")
    # `ulimit -f` (or a FAT32 drive's 4 GB) where the checkpoint is written: said with the file and the resume too
    class LimitedFile(io.BufferedWriter):
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(errno.EFBIG, "File too large")
            return super().write(data)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: LimitedFile(io.FileIO(fd, "wb")) if mode == "wb" else opened(fd, mode, *a, **k))
    with pytest.raises(OSError, match="File too large") as failed:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "weights": torch.ones(100_000)}, target)
    monkeypatch.undo()
    OutOfMemoryAdvice().on_exception(fit, None, failed.value)
    assert resource_message(failed.value) == (
        f"{target} grew larger than its disk or this process may write (File too large): FAT32 drives hold files of up to 4 "
        f"GB, and `ulimit -f` limits them too. What was complete before stays whole; write to another disk, or raise the "
        f"limit; --ckpt_path {target} resumes from its last whole checkpoint, not from step 0")


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_with_a_pickled_payload_is_refused_by_name(tmp_path, capsys):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt: refused"):
        load_checkpoint_file(bad)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt: refused"):
        AtomicCheckpointIO().load_checkpoint(bad)
    assert "this ran" not in capsys.readouterr().out

    truncated = tmp_path / "truncated.ckpt"
    save_atomically({"weights": torch.ones(10_000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointFileError, match="truncated.ckpt: not a readable checkpoint"):
        load_checkpoint_file(truncated)


KILL_DURING_PREPROCESSING = """
import sys, time
import mmcaption.data.image_pass as image_pass
from mmcaption.data import CaptionDataModule

prepared = image_pass._prepared  # each image's work in the image pass (check_image runs only for a tiny or bad one)
def slow_prepared(image, image_size):  # only this test's run is slow: it gives the kill time to land mid-write
    time.sleep(0.5)  # (12 images on up to 8 threads: a second at least)
    return prepared(image, image_size)
image_pass._prepared = slow_prepared
root, language, vision = sys.argv[1:4]
CaptionDataModule(data_dir=root, tokenizer=language, image_processor=vision, num_workers=0).prepare_data()
"""


def test_preprocessing_killed_midway_leaves_nothing_complete_and_the_next_run_finishes(backbones, coco_root, tmp_path):
    import shutil

    from mmcaption.data import CaptionDataModule

    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    language, vision = (str(p) for p in backbones)
    process = subprocess.Popen([sys.executable, "-c", KILL_DURING_PREPROCESSING, str(root), language, vision])
    cache = root / "preprocessed"
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and [p for p in cache.iterdir() if p.name.endswith(".partial")]):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    process.kill()
    process.wait()

    dm = CaptionDataModule(data_dir=str(root), tokenizer=language, image_processor=vision, num_workers=0)
    target = dm.split_folder("train2017")
    assert not target.exists()  # only a staging folder is left, which nothing reads as a split
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train2017"]) == 60


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_a_run_out_of_memory_resumes_mid_epoch_with_half_the_batch_and_twice_the_accumulation(straight):
    # what the advice on running out of memory says to do (lower the batch, raise the accumulation by as much): --ckpt_path
    # was refused for the changed batch_size, and --model.init_from started the schedule, the step count and the epoch anew
    workdir, _ = straight
    grouped = ("--data.init_args.group_by_length", "true", "--data.init_args.length_group_batches", "2")
    command = fit_command(workdir, "grouped", extra=grouped)
    config = workdir / "grouped.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=5, save_top_k=-1)
    config.write_text(yaml.safe_dump(settings))
    run(command, workdir)  # uninterrupted, batches of 8, saving at steps 5, 10 (the end of its first epoch) and 15
    uninterrupted = [json.loads(line) for line in (workdir / "grouped.jsonl").read_text().splitlines()]
    (mid_epoch,) = (workdir / "checkpoints-grouped").glob("*step=5.ckpt")
    halved = (*grouped, "--data.init_args.batch_size", "4", "--trainer.accumulate_grad_batches", "2")
    said = run(fit_command(workdir, "halved", ckpt_path=mid_epoch, max_steps=9, extra=halved), workdir)
    assert (f"note: {mid_epoch} resumes with other batch settings (batch_size 8 -> 4, accumulate_grad_batches 1 -> 2): the "
            "rest of its epoch 1 is the same 8 samples an optimizer step, in the same order, from sample 40 of 80; dropout draws "
            "its masks a batch at a time, so its steps are other draws than the uninterrupted run's") in said
    rows = [json.loads(line) for line in (workdir / "halved.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and [row["step"] for row in rows[1::2]] == [6, 7, 8, 9]  # two batches of 4 an optimizer step
    for first, second, straight_row in zip(rows[::2], rows[1::2], uninterrupted[5:9]):
        assert sorted(first["samples"] + second["samples"]) == sorted(straight_row["samples"]), straight_row["step"]
    assert load_checkpoint_file(workdir / "checkpoints-halved" / "last.ckpt")["global_step"] == 9
    # and back to batches of 8 (the memory freed), from the halved run's own save mid-epoch: its last step
    back = (*grouped, "--data.init_args.num_workers", "1")
    run(fit_command(workdir, "back", ckpt_path=workdir / "checkpoints-halved" / "last.ckpt", max_steps=11, extra=back), workdir)
    rows = [json.loads(line) for line in (workdir / "back.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [10, 11]
    assert [sorted(row["samples"]) for row in rows] == [sorted(row["samples"]) for row in uninterrupted[9:11]]

    # the same samples a step cut otherwise is what resumes mid-epoch: half the batch alone would skip and repeat some
    status, said = ran(fit_command(workdir, "smaller", ckpt_path=mid_epoch, extra=(*grouped, "--data.init_args.batch_size", "4")),
                       workdir)
    assert status == 2 and "mid-epoch, a run resumes with its 8 samples an optimizer step (batch_size x " \
        "accumulate_grad_batches x devices), cut into other batches or processes as memory and machines need " \
        "(--data.batch_size 4 --trainer.accumulate_grad_batches 2)" in said, said[-2000:]
    assert not (workdir / "smaller.jsonl").exists()

    # at an epoch's end nothing of it is left: any batch goes on, and the next epoch is ordered in it
    (epoch_end,) = (workdir / "checkpoints-grouped").glob("*step=10.ckpt")
    said = run(fit_command(workdir, "next-epoch", ckpt_path=epoch_end, max_steps=30, extra=(*grouped, "--data.init_args.batch_size",
                                                                                          "4")), workdir)
    assert f"note: {epoch_end} resumes with other batch settings (batch_size 8 -> 4): it was saved at an epoch's end" in said
    rows = [json.loads(line) for line in (workdir / "next-epoch.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(11, 31))  # the whole second epoch in 20 batches of 4
    second_epoch = [sample for row in rows for sample in row["samples"]]
    assert sorted(second_epoch) == sorted(sample for row in uninterrupted[:10] for sample in row["samples"])


def test_a_checkpoint_from_before_the_order_by_optimizer_steps_is_refused_mid_epoch_only_where_it_changed():
    from mmcaption.rebatch import earlier_order, val_check_note

    def checkpoint(ready, steps, total):
        return {"epoch": 1, "global_step": steps,
                "loops": {"fit_loop": {"epoch_loop.batch_progress": {"current": {"ready": ready}, "total": {"completed": total}},
                                       "state_dict": {}}}}

    def training_data(group_by_length=True):  # as an earlier release recorded it: no accumulate_grad_batches
        return {"batch_size": 8, "devices": 1, "samples": 80, "group_by_length": group_by_length}

    # 26 batches in 13 steps: it accumulated 2, and its epoch's order grouped single batches by length
    saved = training_data()
    assert "grouped an epoch's samples by length in single batches" in earlier_order(checkpoint(6, 13, 26), saved)
    assert saved["accumulate_grad_batches"] == 2
    assert earlier_order(checkpoint(0, 10, 20), training_data()) is None  # at an epoch's start: nothing of the order left
    assert earlier_order(checkpoint(6, 13, 26), training_data(group_by_length=False)) is None  # a plain shuffle is the same
    saved = training_data()
    assert earlier_order(checkpoint(3, 13, 13), saved) is None and saved["accumulate_grad_batches"] == 1  # one batch a step
    # Lightning counts an integer val_check_interval in batches: the note gives the value that keeps it in steps
    trainer = SimpleNamespace(val_check_interval=50)
    assert val_check_note(trainer, {"accumulate_grad_batches": 1}, {"accumulate_grad_batches": 2}) == (
        "; --trainer.val_check_interval 50 counts batches: validation comes every 25 optimizer steps where it came every "
        "50; 100 keeps it")
    assert val_check_note(SimpleNamespace(val_check_interval=1.0), {"accumulate_grad_batches": 1}, {"accumulate_grad_batches": 2}) == ""


def test_a_mid_epoch_resume_on_other_processes_takes_this_process_share_of_the_samples_trained_on():
    # a run of 2 processes stopped mid-epoch, resumed on 1 (a machine with fewer GPUs) or on 4: it was refused ("trained on
    # other data or batches"), though an epoch's order is one of optimizer steps' samples on all processes
    from mmcaption.rebatch import resume_with_other_batches

    def checkpoint(ready):
        return {"epoch": 0, "global_step": ready,
                "loops": {"fit_loop": {"epoch_loop.batch_progress": {
                    "current": dict.fromkeys(("ready", "started", "processed", "completed"), ready),
                    "total": dict.fromkeys(("ready", "started", "processed", "completed"), ready)},
                    "state_dict": {"combined_loader": [{"a": "position"}]}}}}

    def data(batch_size, devices, accumulate=1):
        return {"batch_size": batch_size, "devices": devices, "accumulate_grad_batches": accumulate, "samples": 80,
                "seed": 0, "group_by_length": True, "length_group_batches": 2}

    def resume(saved, current, ready=6):
        trainer = SimpleNamespace(is_global_zero=True, val_check_interval=None, datamodule=SimpleNamespace(resume_skip=None),
                                  lightning_module=torch.nn.Identity())  # a model without dropout
        changed = [key for key in current if saved[key] != current[key]]
        saved_checkpoint = checkpoint(ready)
        why = resume_with_other_batches(trainer, saved_checkpoint, saved, current, changed, "last.ckpt")
        return why, trainer.datamodule.resume_skip, saved_checkpoint["loops"]["fit_loop"]

    # 6 steps of 2 x 4: 48 samples of the epoch's order, 24 each. On 1 process with batches of 8: the 48 are its own
    why, skip, loop = resume(data(4, 2), data(8, 1))
    assert why is None and skip == (48, 0)
    assert loop["epoch_loop.batch_progress"]["current"]["ready"] == 6 and "combined_loader" not in loop["state_dict"]
    # with batches of 4 accumulated twice: 12 batches of it
    why, skip, loop = resume(data(4, 2), data(4, 1, accumulate=2))
    assert why is None and skip == (48, 0) and loop["epoch_loop.batch_progress"]["current"]["ready"] == 12
    # on 4 processes with batches of 2: 12 each
    why, skip, loop = resume(data(4, 2), data(2, 4))
    assert why is None and skip == (12, 0) and loop["epoch_loop.batch_progress"]["current"]["ready"] == 6
    # another number of samples a step is refused, with the settings that keep it on this run's processes
    why, skip, _ = resume(data(4, 2), data(4, 1))
    assert skip is None and why == (
        "mid-epoch, a run resumes with its 8 samples an optimizer step (batch_size x accumulate_grad_batches x devices), cut "
        "into other batches or processes as memory and machines need (--data.batch_size 4 --trainer.accumulate_grad_batches 2)")
    assert resume(data(4, 2), data(2, 3))[0].endswith("as memory and machines need")  # 8 samples do not share out among 3
    # at the epoch's end (10 steps) any number of processes goes on, the next epoch ordered for them
    why, skip, _ = resume(data(4, 2), data(4, 4), ready=10)
    assert why is None and skip == (20, 0)


@pytest.mark.slow
@pytest.mark.xdist_group("resume")
def test_a_worker_killed_for_memory_saves_the_steps_done_and_fewer_workers_resume_them_exactly(straight):
    # the out-of-memory killer takes a loader worker: the run ended with the checkpoint of its last every-3-steps save (up
    # to 30 minutes of a real run lost), and resuming with fewer workers, as the advice says, was refused
    workdir, straight_steps = straight
    def done():
        return (workdir / "worker.jsonl").is_file() and max(records(workdir / "worker.jsonl")) >= KILL_AFTER + 1

    process = start_and_wait(workdir, "worker", done)
    trained = max(records(workdir / "worker.jsonl"))  # (the step sleeps after its record: the kill lands before the next)
    assert trained % 3, "the step the worker dies after is one of the run's own saves: nothing to show"
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no loader worker found"
    for child in children:
        os.kill(int(child), signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0 and "data-loader worker" in err, err[-3000:]
    last = workdir / "checkpoints-worker" / "last.ckpt"
    assert f"Kept: {last}, saved at step {trained};" in err, err[-3000:]
    assert load_checkpoint_file(last)["global_step"] == trained
    said = run(fit_command(workdir, "worker-resumed", ckpt_path=last, extra=("--data.init_args.num_workers", "0")), workdir)
    assert f"note: {last} was saved as a data-loader worker died: it resumes from sample " in said
    resumed = records(workdir / "worker-resumed.jsonl")
    assert sorted(resumed) == list(range(trained + 1, MAX_STEPS + 1))  # nothing repeated, nothing skipped
    for step, row in resumed.items():
        assert row["samples"] == straight_steps[step]["samples"], step
        assert row["loss"] == pytest.approx(straight_steps[step]["loss"], rel=1e-5, abs=1e-6), step
