"""Terminal rendering helpers shared by commands: progress bars and tables."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

PIPED_WIDTH = 200
"""Columns for output that goes to a file or a pipe (rich would wrap it at 80 or ``COLUMNS``): wide enough that no
table of ours wraps, whatever the environment of the process reading it."""


def _width(stream) -> int | None:
    return None if hasattr(stream, "isatty") and stream.isatty() else PIPED_WIDTH


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar with count, rate and ETA on stderr; yields ``update(completed)``."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def update(completed: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=completed, rate=f"{speed:,.0f}/s" if speed else "")

        yield update


def table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(str(x) for x in row))
    return t


def print_json(data: object) -> None:
    """Machine-readable output on stdout, nothing else."""
    print(json.dumps(data, indent=2, default=str))
