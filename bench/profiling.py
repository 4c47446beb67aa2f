"""``--profile``: py-spy attached to the gateway process while a benchmark loads it.

py-spy samples the running process from outside (``--nonblocking``: it never pauses it), so the
gateway runs unmodified. The collapsed stacks are summarised as the share of on-CPU samples
spent in each function (self) and under each function (inclusive), and by library.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, out: Path, duration: float, rate: int = 200) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = py_spy()
        if exe is None:
            return
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(duration)),
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self, title: str, top: int = 25) -> str:
        if self.proc is None:
            return f"{title}: py-spy not installed (pip install -e '.[bench]')\n"
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if not self.out.exists():
            return f"{title}: py-spy wrote nothing (ptrace not permitted?)\n"
        return summarise(self.out.read_text(), title, top)


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def _library(frame: str) -> str:
    """py-spy prints paths relative to sys.path: the first component is the package."""
    m = re.search(r"\((.*)\)$", frame)
    path = m.group(1) if m else frame
    if path.startswith("<"):
        return "interpreter"
    head, sep, _ = path.partition("/")
    return head if sep else f"stdlib {path}"


def summarise(raw: str, title: str, top: int = 25) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_lib: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        by_lib[_library(frames[-1])] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        return f"{title}: no samples\n"
    out = [f"## {title}: {total} on-CPU samples", "", "self time by library:"]
    out += [f"  {100 * n / total:5.1f}%  {lib}" for lib, n in by_lib.most_common(12)]
    out += ["", "self time by function:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    out += ["", "inclusive time by function:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top + 15)]
    return "\n".join(out) + "\n"
