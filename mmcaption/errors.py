"""What can go wrong because of what a user gave: one base class, one way of reporting.

Every error the user can fix (bad data, a checkpoint that does not fit, a setting that cannot work, a
file that must not be overwritten, a folder that cannot be written) is an :class:`MMCaptionError`.
The command-line tools print its message on one line and exit with status 2; anything else is a bug
and keeps its traceback. ``MMCAPTION_TRACEBACK=1`` shows the traceback of user errors too, for bug
reports.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from functools import wraps
from typing import Any

from mmcaption.resources import causes, resource_message
from mmcaption.terminal import leave_a_closed_terminal, process_rank, reader_gone, said, said_once, shell_word

USER_ERROR_EXIT = 2
TRACEBACK_VARIABLE = "MMCAPTION_TRACEBACK"
_VARIABLE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)(?(1)\})")  # $NAME or ${NAME}, as a shell reads it


def shell_variable(text: str) -> re.Match | None:
    """The first environment variable ``text`` names as a shell would read it: one set here, or one it begins with."""
    return next((m for m in _VARIABLE.finditer(text) if m.group(2) in os.environ or m.start() == 0), None)


def unexpanded_variable(path: object) -> str:
    """For a path not found that names an environment variable as written (single quotes in a job script, a Python
    string): what it is and what a shell would have made of it; else ``""``. The message named ``$HOME/ckpts/cap.ckpt``
    as not found, and the user looked for a file."""
    text = str(path)
    if (match := shell_variable(text)) is None:
        return ""
    expanded = os.path.expandvars(text)
    return (f" ({match.group(0)} is an environment variable as written, not expanded: single quotes in a shell, or a "
            "string in Python, keep it" + (f"; a shell would read {expanded}" if expanded != text else "") + ")")


class MMCaptionError(Exception):
    """A problem with the user's input, files or settings; its message names the file or setting."""


class ConfigError(MMCaptionError, ValueError):
    """Settings that cannot work together, or a value that cannot be used."""


class NotAModelFolderError(MMCaptionError, FileNotFoundError):
    """A folder given as a saved model that ``save_pretrained`` did not write."""


class NonFiniteLossError(MMCaptionError, FloatingPointError):
    """Training met a NaN or infinite loss (``model.on_nonfinite_loss: error``)."""


class OutputExistsError(MMCaptionError, FileExistsError):
    """A file or folder would be written over without the user asking for it."""


class NotWritableError(MMCaptionError, PermissionError):
    """A folder the run must write to cannot be written."""


class ResumeError(MMCaptionError):
    """A checkpoint resumed with another stage's data, or with training data that changed."""


class FolderLockedError(MMCaptionError):
    """Another run is writing to the same checkpoint folder."""


class ImageInputError(MMCaptionError):
    """An image given to the Python API that cannot be read (not found, not an image, a failed download, an object
    that is no image). Raised as the error it is too (``FileNotFoundError``, PIL's ``UnidentifiedImageError``,
    ``TypeError``, ...: :func:`image_input_error`), so that a service tells a request's bad image
    (``except MMCaptionError``) from a failure of its own."""

    def __reduce__(self) -> tuple[Any, ...]:  # across processes, as the error it is (an OSError with its file name)
        kind = next(kind for kind in type(self).__mro__ if not issubclass(kind, MMCaptionError))
        named = isinstance(self, OSError) and self.filename is not None
        return kind, (self.errno, self.strerror, self.filename) if named else self.args


@functools.cache
def _image_input_type(kind: type[BaseException]) -> type[BaseException]:
    """``kind`` and :class:`ImageInputError` at once, named as ``kind`` is (a traceback says ``FileNotFoundError``)."""
    if issubclass(kind, ImageInputError):
        return kind
    return type(kind.__name__, (ImageInputError, kind), {"__module__": kind.__module__, "__qualname__": kind.__qualname__})


def image_input_error(error: BaseException, message: str | None = None) -> BaseException:
    """``error`` (or one like it, saying ``message``) as an :class:`ImageInputError` as well as its own type; its
    ``errno`` and file name kept, for code that reads them."""
    kind = _image_input_type(type(error))
    if isinstance(error, OSError) and error.errno is not None:  # message: its strerror
        return kind(error.errno, error.strerror if message is None else message, error.filename)
    said = str(error) if message is None else message
    try:
        return kind(said)
    except TypeError:  # an error built otherwise (UnicodeDecodeError takes five arguments)
        return _image_input_type(ValueError)(said)


class AlreadyDone(MMCaptionError):
    """Nothing is left to do (a requeued job whose output is finished): said as a note, and the command ends as a
    success, exit 0, so that a job script goes on with its next step."""


class Interrupted(BaseException):
    """The command was stopped by Ctrl-C (SIGINT), SIGTERM (``docker stop``, ``kill``, a scheduler) or SIGHUP
    (its terminal closed): it exits with 130 / 143 / 129, as a shell reports a process killed by the signal,
    after one line saying so. A
    ``BaseException``, as ``KeyboardInterrupt`` is: no library's ``except Exception`` takes it for an error
    of its own (``datasets`` would wrap it in a generation error)."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        _stop.under_way = True  # the command is stopping: a further signal waits for its cleanup (signals_stop)
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunInterrupted(Interrupted):
    """Training stopped on a signal after saving a checkpoint it can be resumed from."""

    def __init__(self, signum: int, checkpoint: str | None, step: int, requeued: str | None = None,
                 done: bool | str = False) -> None:
        self.checkpoint, self.step = checkpoint, step
        name = signal.Signals(signum).name
        where = f"saved {checkpoint}" if checkpoint else "nothing saved"
        # a command's (signals_stop is the console scripts'), or a script's own Trainer with ResumableStop in it
        how = "running the same command with --ckpt_path {}" if _stop.active else "trainer.fit(..., ckpt_path={!r})"
        resume = f"; resume by {how.format(shell_word(checkpoint) if _stop.active else checkpoint)}" if checkpoint else ""
        if done:  # in the validation after the last step, which ends first: a resume had nothing left to train
            resume = "; training was done, its last validation too: nothing is left to resume"
        if done == "validation" and checkpoint:  # at the last step, before its validation: a resume ran none of it
            run = (f"mmcaption validate with the same settings and --ckpt_path {shell_word(checkpoint)}" if _stop.active
                   else f"trainer.validate(..., ckpt_path={checkpoint!r})")
            resume = f"; training was done, not the validation due at its last step: {run} runs it"
        super().__init__(signum, f"stopped by {name} at step {step}: {where}{resume}" + (f". {requeued}" if requeued else ""))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def stop_signals() -> list[int]:
    """The signals that stop a command cleanly: Ctrl-C, SIGTERM (``docker stop``, ``kill``, ``timeout``, a
    scheduler) and SIGHUP (the terminal closed, an SSH connection dropped), unless the process was started
    to ignore SIGHUP (``nohup``): it then goes on when the terminal closes, as it was asked to. In a SLURM job,
    SIGUSR1 too (``#SBATCH --signal=SIGUSR1@90``, before the time limit): its default ended the process on the spot
    (preprocessing, or a job Lightning does not take for SLURM's, without SLURM_NTASKS), and in predict Lightning's
    own handler saved an hpc_ckpt that later runs in the folder were refused for."""
    usr1 = [signal.SIGUSR1] if hasattr(signal, "SIGUSR1") and os.environ.get("SLURM_JOB_ID") else []
    return [s for s in (*STOP_SIGNALS, *usr1) if not (s != signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN)]


class _StopState:
    under_way = False  # an Interrupted was raised: the command is cleaning up
    noted = False  # the note that a further signal waits was printed
    pending: int | None = None  # the signal of the last Interrupted raised by the handler (see raise_if_stopped)
    holding = False  # inside stops_held: a signal waits for the block's end
    held: int | None = None
    active = False  # inside signals_stop: a block within it (run_cli under a console script's) keeps its handlers


_stop = _StopState()


def carry_on() -> None:
    """Go on after an :class:`Interrupted` caught where a Ctrl-C ends one task and not the command (an answer chat
    streams): the next signal stops as the first did, where it would have waited for a cleanup."""
    _stop.under_way = _stop.noted = False
    _stop.pending = None


@contextmanager
def signals_stop() -> Iterator[None]:
    """For the block, Ctrl-C, SIGTERM and SIGHUP (:func:`stop_signals`) raise :class:`Interrupted` in this process: what is running
    cleans up as after any error (a staging folder removed, the rows done kept), where SIGTERM's default
    kills the process on the spot and Ctrl-C ends in a traceback, or in Lightning's exit status 1.
    Training sets its own handlers inside the block (:class:`~mmcaption.callbacks.ResumableStop`) and
    puts these back. A forked copy of the process (a DataLoader worker without its own handlers) gets the
    handling it had before (SIGTERM's default, Ctrl-C's KeyboardInterrupt).

    Once the command is stopping (any :class:`Interrupted` raised), a further signal waits: raised again in
    the middle of the cleanup, it cut the DataLoader's worker shutdown short, and the process then hung at
    exit on workers that ignore signals (they leave stopping to this process) and never got told to end."""
    if threading.current_thread() is not threading.main_thread() or _stop.active:
        yield
        return
    owner = os.getpid()
    _stop.under_way = _stop.noted = False
    _stop.pending = None

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked process: the handling it had before, the signal sent again to it
            previous_handler = previous[signum]
            signal.signal(signum, previous_handler if previous_handler is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        leave_a_closed_terminal(signum)
        if _stop.holding:  # two renames that must both happen: acted on once they have
            _stop.held = _stop.held or signum
            return
        if _stop.under_way:
            if not _stop.noted:
                _stop.noted = True
                with suppress(OSError):  # output whose reader is gone
                    print(f"{signal.Signals(signum).name} received while stopping: finishing the cleanup first "
                          "(kill -9 stops at once)", file=sys.stderr, flush=True)
            return
        _stop.pending = signum
        raise Interrupted(signum)

    previous = {signum: signal.getsignal(signum) for signum in stop_signals()}
    for signum in previous:
        signal.signal(signum, stop)
    _stop.active = True
    distributed = sys.modules.get("torch.distributed")  # (imported by Lightning: this module needs no torch)
    joining = getattr(distributed, "init_process_group", None)
    if joining is not None:
        distributed.init_process_group = _killed_while_joining(joining, list(previous))
    try:
        yield
    finally:
        if joining is not None:
            distributed.init_process_group = joining
        _stop.active = _stop.holding = False
        _stop.pending = _stop.held = None  # what a later run in this process (a script's next predict) must not raise
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _killed_while_joining(join: Callable[..., Any], signums: list[int]) -> Callable[..., Any]:
    """``torch.distributed.init_process_group`` with the stop signals' default actions: it waits in C++ for the other
    processes (a SLURM job of 2 tasks started without srun waits for one that never comes), where a Python handler runs
    only once it returns - SIGTERM (``timeout``, ``scancel``) and Ctrl-C did nothing, and only SIGKILL ended the job.
    Nothing is written yet that a stop would need to clean up."""
    @wraps(join)
    def joined(*args: Any, **kwargs: Any) -> Any:
        # not in the process that launched the others (Lightning's launcher, which watches them from a thread): they are
        # its children and join at once, and killed outright it left them waiting for it (its clean stop ends them). One
        # that launched none (num_nodes 2, devices 1: its observer watches no child) waits for other machines' like any
        if threading.current_thread() is not threading.main_thread() or any(
                type(thread).__name__ == "_ChildProcessObserver" and getattr(thread, "_child_processes", True)
                for thread in threading.enumerate()):
            return join(*args, **kwargs)
        handlers = {signum: signal.signal(signum, signal.SIG_DFL) for signum in signums}
        try:
            return join(*args, **kwargs)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return joined


@contextmanager
def stops_held() -> Iterator[None]:
    """A stop signal during the block is acted on at its end, when the block ends without an error of its own: an
    export's old folder moved aside and the new one not yet in its place left no folder at all."""
    was, _stop.holding = _stop.holding, True
    try:
        yield
    finally:
        _stop.holding = was
    if not was and _stop.held is not None:
        signum, _stop.held = _stop.held, None
        raise Interrupted(signum)


def hold_stops() -> None:
    """The command's work is done and its teardown runs (Lightning's, DataLoader workers ended in ``__del__``, where Python
    drops an exception): a stop signal from here on is held, and :func:`act_on_held_stops` acts on it as the command
    returns. Raised there, it chained tracebacks through Lightning's teardown, or was dropped: the command exited 0, and
    a pipeline went on to its next stage."""
    if _stop.active:
        _stop.holding = True


def release_held_stops() -> None:
    """A run's teardown is over: a stop signal acts at once again (between a pipeline's or the demo's stages too), and
    one held meanwhile stays due (:func:`act_on_held_stops`, :func:`raise_if_stopped` at the next batch)."""
    _stop.holding = False
    if _stop.held is not None:
        _stop.pending, _stop.held = _stop.held, None


def act_on_held_stops(done: str) -> None:
    """Raise :class:`Interrupted`, saying ``done``, for a stop signal held (:func:`hold_stops`) or dropped where it was
    raised; the signals act at once again from here."""
    _stop.holding = False
    signum = _stop.held or _stop.pending
    _stop.held = _stop.pending = None
    if signum is not None:
        raise Interrupted(signum, f"{signal.Signals(signum).name} received as {done}")


def raise_if_stopped() -> None:
    """Raise again the :class:`Interrupted` of a signal whose handler ran where Python drops exceptions - inside a
    fork's at-fork hooks, as a DataLoader starts its workers: the command went on to its end and exited 0, and a second
    signal waited for a cleanup that never came. Called at each batch: an Interrupted raised as it should be never
    gets there."""
    if _stop.pending is not None:
        signum, _stop.pending = _stop.pending, None
        raise Interrupted(signum)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line. An error re-raised from a DataLoader worker carries the
    worker's whole traceback in its message: keep the original message only."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def user_errors_exit(main: Callable[..., Any] | None = None, *, signals: bool = True) -> Any:
    """Wrap a console script: a user error prints ``error: <message>`` and exits 2, a command stopped by
    Ctrl-C or SIGTERM prints what was kept (how to resume a training run) and exits 130 / 143 (with
    ``signals``, the signals are turned into :class:`Interrupted` while it runs: :func:`signals_stop`);
    everything else propagates with its traceback."""
    if main is None:
        return lambda function: user_errors_exit(function, signals=signals)

    @wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_stop() if signals else nullcontext():
                try:
                    result = main(*args, **kwargs)
                    act_on_held_stops("the command ended: what it did is complete and saved; stopped there")
                    return result
                except Interrupted as interrupted:
                    stopped = (str(interrupted), interrupted.exit_code)
                # the stopped command's frames (DataLoader iterators with worker processes among them) are freed
                # here, where a further signal still waits: a second Ctrl-C does not cut their shutdown short
                gc.collect()
            with suppress(OSError):  # output whose reader is gone (a closed terminal's pipe)
                if process_rank() == 0:  # every process of a multi-process run stops alike: said once
                    print(stopped[0], file=sys.stderr, flush=True)
            sys.exit(stopped[1])
        except AlreadyDone as done:
            said_once(f"note: {one_line(done)}")
            sys.exit(0)
        except MMCaptionError as error:
            if traceback_wanted():
                raise
            said_once(f"error: {one_line(error)}")
            sys.exit(USER_ERROR_EXIT)
        except BrokenPipeError:
            if not reader_gone(sys.stdout):  # another pipe (a worker's, a socket's): a failure of its own
                raise
            # `mmcaption test ... | head`: the reader has what it wanted; end quietly, as a program SIGPIPE stops does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's last flush has nowhere to fail
            sys.exit(128 + signal.SIGPIPE)
        except Exception as error:
            message = resource_message(error)  # first: a killed loader worker's pipe also reads as a peer gone
            if message is None and peer_gone(error) and not traceback_wanted():  # that process says what it was
                said("error: another process of this run stopped (see its message)")
                sys.exit(USER_ERROR_EXIT)
            if message is None or traceback_wanted():
                raise
            said(f"error: {message}")
            sys.exit(USER_ERROR_EXIT)

    return wrapper


def peer_gone(error: BaseException) -> bool:
    """A collective operation that failed because another process of the run stopped (gloo's "Connection closed by
    peer", NCCL's watchdog, the rendezvous store's while the processes connect): that process's own error is the one to read."""
    return any(words in str(cause) for cause in causes(error) for words in (
        "Connection closed by peer", "Connection reset by peer", "remote worker crashing", "NCCL communicator was aborted",
        "Connection was likely closed"))


def traceback_wanted() -> bool:
    """``MMCAPTION_TRACEBACK=1``: a user error keeps its traceback too, for a bug report."""
    return os.environ.get(TRACEBACK_VARIABLE, "").strip() not in ("", "0")
