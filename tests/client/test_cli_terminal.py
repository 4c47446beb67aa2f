"""``taskgate submit ... --follow`` in a real pseudo-terminal: the screen, as a terminal
emulator renders the escape codes, shows a live bar that moves, then 100% and COMPLETED.

``TASKGATE_UPDATE_CLI_SCREENSHOT=1`` (``make cli-screenshot``) also draws the last screen to
docs/cli-follow.png with chromium."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tests.client.terminal import run_in_terminal, save_png, screen_html
from tests.support import ROOT, GatewayProcess

TASKGATE = str(Path(sys.executable).with_name("taskgate"))
BAR = "━"
SCREENSHOT = ROOT / "docs" / "cli-follow.png"


def test_follow_draws_a_live_bar_then_100_percent_and_completed(
    remote: GatewayProcess, token: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGATE_")}
    env.update({"TASKGATE_URL": remote.url, "TASKGATE_TOKEN": token, "TERM": "xterm-256color"})
    env.pop("NO_COLOR", None)
    args = ["submit", "demo.count", "--input", '{"steps": 20, "delay": 0.05}', "--follow"]
    run = run_in_terminal([TASKGATE, *args], env)
    print("\n".join(run.last))
    assert run.status == 0, run.last

    bars = [line for line in run.last if BAR in line]
    assert len(bars) == 1, run.last
    assert "demo.count" in bars[0] and "100%" in bars[0] and "COMPLETED" in bars[0]
    outcome = next(line for line in run.last if line.startswith("COMPLETED"))
    assert '{"counted":20}' in outcome.replace(" ", "")
    # It was live: screens before the end showed the bar part way, with the task running.
    moving = [
        int(m.group(1))
        for screen in run.screens[:-1]
        for line in screen
        if BAR in line and "RUNNING" in line and (m := re.search(r"(\d+)%", line))
    ]
    assert any(0 < p < 100 for p in moving), moving
    assert moving == sorted(moving), f"the bar went back: {moving}"
    # Colours reached the terminal: the status is drawn in green.
    assert run.screen is not None
    y = run.last.index(bars[0])
    x = bars[0].index("COMPLETED")
    assert run.screen.buffer[y][x].fg == "green"

    if os.environ.get("TASKGATE_UPDATE_CLI_SCREENSHOT") == "1":
        prompt = 'taskgate submit demo.count --input \'{"steps": 20, "delay": 0.05}\' --follow'
        save_png(screen_html(run.screen, prompt), SCREENSHOT, width=960, height=150)
        assert SCREENSHOT.stat().st_size > 1000
