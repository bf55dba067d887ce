"""Progress bars and summary tables (rich), quiet when not wanted."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    """Yields advance(n); a no-op when disabled and on every rank but the main one."""
    from . import dist

    if not enabled or not dist.is_main():
        yield lambda n=1: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    from . import dist

    if not dist.is_main():
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(table)
