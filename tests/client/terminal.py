"""A command in a real pseudo-terminal (pexpect), its output rendered by a terminal emulator
(pyte) to screens a test can read, and a screen drawn to a PNG with chromium."""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pyte

COLUMNS, LINES = 100, 12
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# pyte's colour names to CSS, a dark terminal theme.
PALETTE = {
    "default": "#d8dee9", "black": "#3b4252", "red": "#ef6b73", "green": "#8fd694",
    "brown": "#ebcb8b", "yellow": "#ebcb8b", "blue": "#81a1c1", "magenta": "#c895bf",
    "cyan": "#88c0d0", "white": "#e5e9f0", "brightblack": "#7b8394",
    "brightred": "#ff8a8a", "brightgreen": "#a3e6a8", "brightyellow": "#ffe08a",
    "brightblue": "#9ab8e0", "brightmagenta": "#dcaad6", "brightcyan": "#9fe0ee",
    "brightwhite": "#ffffff",
}  # fmt: skip
BACKGROUND = "#1f232b"


@dataclass
class Run:
    """What the command did: its exit status, every screen it showed, the last one."""

    status: int | None
    screens: list[list[str]] = field(default_factory=list)
    screen: pyte.Screen | None = None

    @property
    def last(self) -> list[str]:
        return self.screens[-1] if self.screens else []


def run_in_terminal(argv: Sequence[str], env: Mapping[str, str], timeout: float = 60.0) -> Run:
    """``argv`` in a pseudo-terminal of ``COLUMNS`` x ``LINES``; each chunk of output is fed to
    the emulator and the screen kept as it was after it."""
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(
        argv[0], list(argv[1:]), env=dict(env), dimensions=(LINES, COLUMNS), timeout=timeout
    )
    run = Run(status=None, screen=screen)
    try:
        while True:
            try:
                chunk = child.read_nonblocking(65536, timeout=timeout)
            except pexpect.EOF:
                break
            stream.feed(chunk)
            run.screens.append([line.rstrip() for line in screen.display])
    finally:
        child.close()
    run.status = child.exitstatus
    return run


def _style(char: pyte.screens.Char) -> str:
    fg = PALETTE.get(char.fg, f"#{char.fg}" if len(char.fg) == 6 else PALETTE["default"])
    if char.bold and char.fg in PALETTE and not char.fg.startswith("bright"):
        fg = PALETTE.get("bright" + char.fg, fg)
    css = [f"color:{fg}"]
    if char.bg != "default":
        css.append(f"background:{PALETTE.get(char.bg, '#' + char.bg)}")
    if char.bold:
        css.append("font-weight:bold")
    return ";".join(css)


def screen_html(screen: pyte.Screen, prompt: str) -> str:
    """The screen as an HTML page of a terminal window, ``prompt`` on its first line."""
    rows = []
    for y in range(screen.lines):
        line = screen.buffer[y]
        cells = [line[x] for x in range(screen.columns)]
        text = "".join(c.data for c in cells).rstrip()
        if not text and y > 0 and all(not "".join(c.data for c in screen.buffer[k].values()).strip()
                                      for k in range(y, screen.lines)):  # fmt: skip
            break
        spans = []
        for cell in cells[: len(text)]:
            spans.append(f'<span style="{_style(cell)}">{html.escape(cell.data)}</span>')
        rows.append("".join(spans))
    body = "\n".join(rows)
    return f"""<!doctype html><meta charset="utf-8"><style>
body {{ margin: 0; background: #e8ebf0; }}
.win {{ margin: 16px; border-radius: 8px; overflow: hidden; display: inline-block;
        box-shadow: 0 4px 18px rgba(0,0,0,.25); }}
.bar {{ background: #3a3f4b; height: 26px; }}
.bar i {{ display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin: 7px 0 0 8px; }}
pre {{ margin: 0; padding: 12px 16px 16px; background: {BACKGROUND}; color: {PALETTE["default"]};
       font: 15px/1.35 "DejaVu Sans Mono", monospace; width: {screen.columns}ch; }}
.p {{ color: #8fd694; }}
</style><div class="win"><div class="bar"><i style="background:#ff5f56"></i><i
style="background:#ffbd2e"></i><i style="background:#27c93f"></i></div><pre><span class="p">$</span> {html.escape(prompt)}
{body}</pre></div>"""  # noqa: E501


def save_png(page: str, out: Path, width: int = 1000, height: int = 320) -> None:
    """``page`` drawn by headless chromium to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "screen.html"
        source.write_text(page)
        subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
                f"--screenshot={out}", source.as_uri(),
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
