"""Progress display of every long stage: a Rich bar on a terminal, plain lines when the output is a file.

Rich does two things differently from what a user of a sweep needs, so this thin layer adds them:

- which arm a bar belongs to: the experiment runner sets a label with :func:`progress_label` (``N=16 seed=0
  baseline``) and every bar made meanwhile by :class:`StageProgress` or :func:`track` starts with it;
- progress in a log file: off a terminal Rich draws no live bar and prints only the final state, so there a
  bar writes one plain line each time it passes another share of its total (and when it completes) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from rich.progress import Progress, TaskID

T = TypeVar("T")

_LABEL: ContextVar[str | None] = ContextVar("lesionforge_progress_label", default=None)


def duration_text(seconds: float) -> str:
    """A wait or a time left as a person reads it: ``45 s``, ``12 min``, ``2.5 h``."""
    s = seconds
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


@contextmanager
def progress_label(label: str) -> Iterator[None]:
    """Bars made inside this block start their description with ``label`` (nested labels join with ``/``)."""
    outer = _LABEL.get()
    token = _LABEL.set(f"{outer} / {label}" if outer else label)
    try:
        yield
    finally:
        _LABEL.reset(token)


class StageProgress(Progress):
    """A :class:`rich.progress.Progress` whose tasks carry the current label and which, when its console is
    not a terminal, prints a plain line whenever a task passes another ``line_share`` of its total (0: at
    every step), and with ``line_on_description`` whenever its description changes, instead of drawing a live
    bar. Other arguments are Rich's."""

    def __init__(self, *columns: Any, line_share: float = 0.1, line_on_description: bool = False, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self._lines = not self.disable and not self.console.is_terminal
        if self._lines:
            self.disable = True  # no live display: the plain lines replace it
        self._line_share = line_share
        self._line_on_description = line_on_description
        self._printed: dict[TaskID, tuple[int, str]] = {}
        self._label = _LABEL.get()

    def _with_label(self, description: str) -> str:
        return f"{self._label} | {description}" if self._label else description

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(self._with_label(description), *args, **kwargs)
        self._line(task_id)
        return task_id

    def update(self, task_id: TaskID, *args: Any, description: str | None = None, **kwargs: Any) -> None:
        if description is not None:
            description = self._with_label(description)
        super().update(task_id, *args, description=description, **kwargs)
        self._line(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def _line(self, task_id: TaskID) -> None:
        if not self._lines:
            return
        with self._lock:
            task = self._tasks[task_id]
            total, done = task.total, task.completed
        if not total:
            return
        step = max(1, math.ceil(total * self._line_share))
        mark = int(done // step) + (done >= total)  # completing always prints
        last_mark, last_description = self._printed.get(task_id, (-1, ""))
        if mark <= last_mark and not (self._line_on_description and task.description != last_description):
            return
        self._printed[task_id] = (mark, task.description)
        elapsed = f", {task.elapsed:.0f} s" if task.elapsed else ""
        self.console.print(f"{task.description}: {done:g}/{total:g} ({100 * done / total:.0f} %){elapsed}",
                           markup=False, highlight=False, soft_wrap=True)


def track(sequence: Sequence[T] | Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """:func:`rich.progress.track` with the label and the plain lines of :class:`StageProgress`."""
    with StageProgress() as bar:
        yield from bar.track(sequence, total=total, description=description)
