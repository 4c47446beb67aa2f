"""How the CLI shows tasks it follows: a live rich progress bar per task, and a closing line
with the result or the error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.text import Text

STYLES = {
    "PENDING": "cyan",
    "RUNNING": "yellow",
    "RETRYING": "magenta",
    "COMPLETED": "bold green",
    "FAILED": "bold red",
    "TIMED_OUT": "bold red",
    "CANCELLED": "bold bright_black",
}
MESSAGE_WIDTH = 40


def short(task_id: str) -> str:
    return task_id[:8]


def status_text(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


class ProgressView:
    """One bar per followed task: name and short id, bar, percent, status, latest message."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("[dim]{task.fields[message]}"),
            console=console,
            auto_refresh=True,
            refresh_per_second=10,
        )
        self._bars: dict[int, TaskID] = {}

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def add(self, key: int, name: str, task_id: str | None = None) -> None:
        """A bar for the task ``key`` (its id may come with its first snapshot)."""
        self._bars[key] = self.progress.add_task(
            self._description(name, task_id), total=100.0, status="", message=""
        )

    @staticmethod
    def _description(name: str, task_id: str | None) -> str:
        return f"{escape(name)} [dim]{short(task_id)}[/]" if task_id else escape(name)

    def update(self, key: int, snap: Mapping[str, Any]) -> None:
        """Draw ``snap`` on the bar of ``key``."""
        bar = self._bars[key]
        progress = snap.get("progress") or {}
        percent = float(progress.get("percent") or 0.0)
        status = str(snap.get("status", ""))
        style = STYLES.get(status, "")
        message = str(progress.get("message") or "")[:MESSAGE_WIDTH]
        if status == "RETRYING" and snap.get("attempt"):
            message = f"attempt {snap['attempt']} failed, retrying"
        self.progress.update(
            bar,
            description=self._description(str(snap.get("task", "")), str(snap.get("task_id"))),
            completed=percent,
            status=f"[{style}]{status}[/]" if style else status,
            message=escape(message),
        )


def outcome(snap: Mapping[str, Any]) -> Text:
    """The closing line for a task that ended: its status, then the result or the error."""
    status = str(snap.get("status"))
    line = Text.assemble(status_text(status), " ", (str(snap.get("task")), "bold"), " ")
    line.append(str(snap.get("task_id")), style="dim")
    error = snap.get("error")
    if status == "COMPLETED":
        line.append("  result: ")
        line.append(orjson.dumps(snap.get("result")).decode())
    elif isinstance(error, Mapping):
        line.append(f"  {error.get('type', 'Error')}: {error.get('message', '')}", style="red")
    return line
