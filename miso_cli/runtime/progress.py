"""How far along a job is: parsed from its log or its progress file, with step time and ETA.

Two sources, both read incrementally (offsets remembered, so a poll costs only
the new bytes, and a restarted miso picks up where it left off):

* the job's log (stdout+stderr), matched line by line against built-in patterns
  for tqdm (which Hugging Face Trainer also uses), Keras and PyTorch Lightning,
  or a per-job ``progress_regex``;
* the file named by ``MISO_PROGRESS_FILE``, JSON lines written by
  :mod:`miso_cli.report`.

Step time is estimated robustly: the first interval after a (re)start is warm-up
(graph compilation, autotuning, data loader start) and is dropped, and
intervals much slower than the median (evaluation, checkpointing pauses) are
left out; the rest give a rate as total time over total steps, which does not
suffer from the quantisation of polling once a second.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from miso_cli import safefs

# A tqdm bar: "desc:  45%|####5     | 45/100 [00:02<00:02, 20.00it/s, loss=0.5]".
# The "|" before the counts and " [" after them are in every tqdm bar with a total.
_TQDM = re.compile(
    r"(?:^|[:\s])(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<step>\d+(?:\.\d+)?)(?P<unit>[kMGT]?)"
    r"/(?P<total>\d+(?:\.\d+)?)(?P<tunit>[kMGT]?)\s*\["
)
# tqdm without a total: "desc: 150it [00:03, 46.84it/s]".
_TQDM_NOTOTAL = re.compile(r"(?:^|[:\s])(?P<step>\d+)(?:it| it)\s*\[\d")
# Lightning's bar descriptions: the training bar is "Epoch N" (or "Epoch N/M" with rich).
_LIGHTNING_EPOCH = re.compile(r"^\s*Epoch (?P<epoch>\d+)(?:/(?P<last>\d+))?\s*:?")
_LIGHTNING_RICH = re.compile(
    r"^\s*Epoch (?P<epoch>\d+)/(?P<last>\d+)\s+\S*\s*(?P<step>\d+)/(?P<total>\d+)\s"
)
# Bars that are not training: validation, test, predict, sanity checks, HF evaluation.
_NOT_TRAINING = re.compile(
    r"^\s*(Validation|Validating|Testing|Test|Predicting|Sanity Checking|Evaluating|Evaluation)",
    re.IGNORECASE,
)
# Keras: "Epoch 3/10" on its own line, then "1875/1875 [====] - 4s 2ms/step - loss: ..."
# (Keras 2), "1875/1875 ━━━━ 3s 1ms/step - ..." (Keras 3) or "1875/1875 - 4s - ..." (verbose=2).
_KERAS_EPOCH = re.compile(r"^\s*Epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s*$")
_KERAS_STEP = re.compile(
    r"^\s*(?P<step>\d+)/(?P<total>\d+)\s+(?:\[[=>.]*\]|[━─\u2501\u2500]+| - |\s*- )"
)
_SPLIT = re.compile(r"[\r\n\x08]+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves (Keras 3, HF)
_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

BUILTIN_KINDS = ("tqdm", "keras", "hf", "lightning")
MAX_READ = 1 << 20  # never read more than 1 MiB of new log per poll: only the end matters


@dataclass
class Reading:
    """One progress observation: global step (and total, when the output says)."""

    step: float
    total: float | None = None
    source: str = "log"


class LineParser:
    """Turns log lines into :class:`Reading` s; keeps the epoch context Keras/Lightning need."""

    def __init__(
        self, kind: str = "auto", regex: str | None = None, steps: int | None = None
    ) -> None:
        self.kind = kind
        self.regex = re.compile(regex) if regex else None
        self.steps = steps
        self.keras_epoch: int | None = None
        self.keras_epochs: int | None = None
        self.bar_total: float | None = None  # the training bar's total, once chosen

    def _want(self, kind: str) -> bool:
        return self.kind == "auto" or self.kind == kind

    def parse(self, line: str) -> Reading | None:
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        if not line.strip():
            return None
        if self.regex is not None:
            return self._custom(line)
        if self._want("keras"):
            m = _KERAS_EPOCH.match(line)
            if m:
                self.keras_epoch = int(m.group("epoch"))
                self.keras_epochs = int(m.group("epochs"))
                return None
            m = _KERAS_STEP.match(line)
            if m:
                step, per_epoch = int(m.group("step")), int(m.group("total"))
                if self.keras_epoch is None or self.keras_epochs is None:
                    return Reading(step, per_epoch, "keras")
                done = (self.keras_epoch - 1) * per_epoch + step
                return Reading(done, self.keras_epochs * per_epoch, "keras")
        if _NOT_TRAINING.match(line):
            return None
        if self._want("lightning"):
            m = _LIGHTNING_RICH.match(line)
            if m:
                epoch, per_epoch = int(m.group("epoch")), int(m.group("total"))
                epochs = int(m.group("last")) + 1
                done = epoch * per_epoch + int(m.group("step"))
                return Reading(done, epochs * per_epoch, "lightning")
            m = _LIGHTNING_EPOCH.match(line)
            if m:
                bar = _TQDM.search(line)
                if bar:
                    epoch, per_epoch = int(m.group("epoch")), _num(bar, "total", "tunit")
                    done = epoch * per_epoch + _num(bar, "step", "unit")
                    total = None
                    if m.group("last") is not None:
                        total = (int(m.group("last")) + 1) * per_epoch
                    return Reading(done, total, "lightning")
        if self._want("tqdm") or self._want("hf"):
            bar = _TQDM.search(line)
            if bar:
                step, total = _num(bar, "step", "unit"), _num(bar, "total", "tunit")
                # Several bars may share a log (training, then evaluation): follow the
                # one with the job's step count, else the largest one seen.
                if self.steps is not None and total == self.steps:
                    self.bar_total = total
                elif self.bar_total is None or (
                    total > self.bar_total and (self.steps is None or self.bar_total != self.steps)
                ):
                    self.bar_total = total
                if total != self.bar_total:
                    return None
                return Reading(step, total, "tqdm")
            m = _TQDM_NOTOTAL.search(line)
            if m and self.bar_total is None:
                return Reading(int(m.group("step")), None, "tqdm")
        return None

    def _custom(self, line: str) -> Reading | None:
        assert self.regex is not None
        m = self.regex.search(line)
        if not m:
            return None
        groups = self.regex.groupindex
        try:
            step = float(m.group("step") if "step" in groups else m.group(1))
            total: float | None = None
            if "total" in groups and m.group("total") is not None:
                total = float(m.group("total"))
            elif "total" not in groups and "step" not in groups and self.regex.groups >= 2:
                total = float(m.group(2)) if m.group(2) is not None else None
        except (TypeError, ValueError, IndexError):
            return None
        return Reading(step, total, "regex")


def _num(m: re.Match[str], key: str, unit: str) -> float:
    return float(m.group(key)) * _UNITS.get(m.group(unit) or "", 1)


@dataclass
class StepTimer:
    """Robust step time from (time, step) samples; restart() begins a new warm-up."""

    window: int = 32
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=34))

    def restart(self) -> None:
        self.samples.clear()

    def add(self, t: float, step: float) -> None:
        if self.samples:
            last_t, last_step = self.samples[-1]
            if step < last_step:  # restarted from an earlier step: a new warm-up
                self.samples.clear()
            elif step == last_step or t <= last_t:
                return
        self.samples.append((t, step))

    def step_time_s(self) -> float | None:
        pts = list(self.samples)
        intervals = [(t1 - t0, s1 - s0) for (t0, s0), (t1, s1) in zip(pts, pts[1:], strict=False)]
        if not intervals:
            return None
        if len(pts) == self.samples.maxlen:
            steady = intervals  # the warm-up interval has left the window already
        else:
            steady = intervals[1:] or intervals
        steady = steady[-self.window :]
        ratios = sorted(dt / ds for dt, ds in steady)
        median = ratios[len(ratios) // 2]
        kept = [(dt, ds) for dt, ds in steady if dt / ds <= 3 * median]
        return sum(dt for dt, _ in kept) / sum(ds for _, ds in kept)


@dataclass
class Progress:
    """A job's progress as shown and journaled."""

    step: float | None = None
    total: float | None = None
    step_time_s: float | None = None
    updated_at: float | None = None  # when the step last advanced
    source: str | None = None

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total:
            return None
        return max(0.0, min(1.0, self.step / self.total))

    @property
    def throughput(self) -> float | None:
        """Steps per second."""
        return 1.0 / self.step_time_s if self.step_time_s else None

    @property
    def eta_s(self) -> float | None:
        if self.step is None or self.total is None or self.step_time_s is None:
            return None
        return max(0.0, self.total - self.step) * self.step_time_s

    def to_json(self) -> dict[str, float | str | None]:
        return {
            "step": self.step,
            "total": self.total,
            "fraction": self.fraction,
            "step_time_s": self.step_time_s,
            "throughput_steps_s": self.throughput,
            "eta_s": self.eta_s,
            "updated_at": self.updated_at,
            "source": self.source,
        }


class ProgressTracker:
    """Follows one job's log and progress file; ``poll(now)`` reads only what is new."""

    def __init__(
        self,
        log_path: Path,
        progress_file: Path | None,
        *,
        kind: str = "auto",
        regex: str | None = None,
        steps: int | None = None,
        log_offset: int = 0,
        file_offset: int = 0,
    ) -> None:
        self.log_path = Path(log_path)
        self.progress_file = Path(progress_file) if progress_file else None
        self.kind = kind
        self.regex = regex
        self.steps = steps
        self.parser = LineParser(kind if kind not in ("file", "none") else "auto", regex, steps)
        self.log_offset = log_offset
        self.file_offset = file_offset
        self._partial = ""  # an unfinished last line (tqdm rewrites it with \r)
        self._file_partial = b""
        self.timer = StepTimer()
        self.progress = Progress(total=float(steps) if steps else None)
        self.output_at: float | None = None  # when the log last grew

    def restart(self, log_offset: int | None = None) -> None:
        """A new attempt: output starts at ``log_offset``; step time warms up again."""
        if log_offset is not None:
            self.log_offset = log_offset
        self._partial = ""
        self.parser = LineParser(self.parser.kind, self.regex, self.steps)
        self.timer.restart()

    def poll(self, now: float) -> bool:
        """Read new output; True when the step advanced."""
        before = self.progress.step
        if self.kind != "none":
            if self.kind != "file":
                for reading in self._read_log(now):
                    self._apply(reading, now)
            for t, reading in self._read_file():
                self._apply(reading, t)
        changed = self.progress.step != before
        if changed:
            self.progress.updated_at = now
        self.progress.step_time_s = self.timer.step_time_s()
        return changed

    def _apply(self, reading: Reading, t: float) -> None:
        self.progress.step = reading.step
        self.progress.source = reading.source
        if self.steps is not None:
            self.progress.total = float(self.steps)
        elif reading.total is not None:
            self.progress.total = reading.total
        self.timer.add(t, reading.step)

    def _read_log(self, now: float) -> list[Reading]:
        try:
            size = os.path.getsize(self.log_path)
        except OSError:
            return []
        if size < self.log_offset:  # truncated or replaced: start over
            self.log_offset = 0
            self._partial = ""
        if size == self.log_offset:
            return []
        start = self.log_offset
        if size - start > MAX_READ:
            start = size - MAX_READ
            self._partial = ""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
        except OSError:
            return []
        self.log_offset = start + len(data)
        self.output_at = now
        text = self._partial + data.decode("utf-8", errors="replace")
        parts = _SPLIT.split(text)
        self._partial = parts[-1][-4096:]
        latest: Reading | None = None
        for line in parts:
            r = self.parser.parse(line)
            if r is not None:
                latest = r
        return [latest] if latest is not None else []

    def _read_file(self) -> list[tuple[float, Reading]]:
        if self.progress_file is None:
            return []
        try:
            size = os.path.getsize(self.progress_file)
        except OSError:
            return []
        if size < self.file_offset:
            self.file_offset = 0
            self._file_partial = b""
        if size == self.file_offset:
            return []
        start = max(self.file_offset, size - MAX_READ)
        try:
            # The job owns the folder of its progress file: never follow a link it planted
            # there (miso may run as root), nor block on a FIFO.
            with os.fdopen(safefs.open_file(self.progress_file, os.O_RDONLY), "rb") as fh:
                fh.seek(start)
                data = fh.read(size - start)
        except OSError:
            return []
        self.file_offset = start + len(data)
        data = self._file_partial + data
        lines = data.split(b"\n")
        self._file_partial = lines[-1][-4096:]
        out: list[tuple[float, Reading]] = []
        for raw in lines[:-1]:
            try:
                rec = json.loads(raw)
                t = float(rec["t"])
                step = float(rec["step"])
                total = rec.get("total")
                total = float(total) if total is not None else None
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out.append((t, Reading(step, total, "file")))
        return out
