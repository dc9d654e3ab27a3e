"""A rich progress bar on stderr, for the CLI and for encode(show_progress_bar=True)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def progress_bar(description: str, total: int, unit: str) -> Iterator:
    """A rich progress bar on stderr; yields a callback taking how many units are done."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        console=Console(stderr=True))
    task = progress.add_task(description, total=total)
    live = progress.console.is_terminal  # elsewhere (a log, a pipe) rich draws only the last state, at stop
    if live:
        progress.start()
    ok = False
    try:
        yield lambda done: progress.update(task, completed=done)
        progress.update(task, completed=total)  # generation may stop early at EOS
        ok = True
    finally:
        if live:
            progress.live.transient = not ok  # on failure, leave only the error line
            progress.stop()
        elif ok:  # the bar's last state, once; on failure nothing, not even a blank line
            progress.start()
            progress.stop()
