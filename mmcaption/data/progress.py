"""How far a long preprocessing pass has come, said in a job's log: off a terminal (SLURM, nohup, ``| tee log``)
datasets' bar is off, and a first run's passes over 118,287 COCO images or 157,712 conversations were minutes of
nothing between a start line and an end line."""

from __future__ import annotations

import time

from lightning.pytorch.utilities import rank_zero_info

from mmcaption.terminal import draws_bars

PROGRESS_SECONDS = 60  # how often a log hears how far a pass has come
FIRST_SECONDS = 15  # and when first: with its rate and time left (LLaVA's file, read and checked, then a minute silent)


class Progress:
    """After :data:`FIRST_SECONDS`, then every :data:`PROGRESS_SECONDS`, one line: ``"{what}: 5,696 of 10,000 {unit}, 95 {unit}/s, about 1 min left"``
    (without a ``total``, the count and the rate); nothing where datasets' bar is drawn."""

    def __init__(self, what: str, total: int | None = None, unit: str = "images", already: int = 0) -> None:
        self.what, self.total, self.unit, self.already = what, total, unit, already  # (already: done by an earlier run)
        self.start = self.said = time.perf_counter()
        self.shown = not draws_bars()

    def at(self, done: int) -> None:
        """``done`` of the pass's items are through."""
        now = time.perf_counter()
        wait = min(FIRST_SECONDS, PROGRESS_SECONDS) if self.said == self.start else PROGRESS_SECONDS
        if not self.shown or done <= self.already or now - self.said < wait:
            return
        self.said, rate = now, (done - self.already) / (now - self.start)
        of = f" of {self.total:,}" if self.total else ""
        left = f", about {(self.total - done) / rate / 60:.0f} min left" if self.total and done < self.total else ""
        rank_zero_info(f"{self.what}: {done:,}{of} {self.unit}, {rate:.0f} {self.unit}/s{left}")
