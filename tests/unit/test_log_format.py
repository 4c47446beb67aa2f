"""``TASKGATE_LOG_FORMAT`` (issue 17, item 5) and the trace parts that need no server: the JSON
line's fields, what it names and from where, the setting's check, W3C ``traceparent`` parsing,
and that without an OTLP endpoint nothing of OpenTelemetry is imported."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from shared import logs
from shared.errors import ConfigError
from shared.settings import Settings
from shared.tracing import TraceParent, parse_traceparent, span_id_of
from tests.support import ROOT, offline_env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def record(msg: str, args: object = (), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("taskgate.test", logging.WARNING, __file__, 1, msg, args, None)  # type: ignore[arg-type]
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_time_level_logger_message_and_what_is_bound() -> None:
    fmt = logs.JsonFormatter()
    plain = json.loads(fmt.format(record("hello %s", ("you",))))
    assert plain.keys() == {"time", "level", "logger", "message"}
    assert plain["message"] == "hello you" and plain["level"] == "WARNING"
    assert plain["logger"] == "taskgate.test" and plain["time"].endswith("+00:00")
    with logs.bound(trace_id=TRACE, user="ann"), logs.bound(task_id="t-1", user=None):
        line = json.loads(fmt.format(record("x")))
        # A record's own extra wins over what is bound.
        own = json.loads(fmt.format(record("y", task_id="t-2")))
    assert (line["task_id"], line["trace_id"], line["user"]) == ("t-1", TRACE, "ann")
    assert own["task_id"] == "t-2"
    assert "task_id" not in json.loads(fmt.format(record("after")))
    # Celery's task lines carry the task id in their arguments.
    celery = json.loads(
        fmt.format(record("Task %(name)s[%(id)s] received", ({"id": "c-1", "name": "n"},)))
    )
    assert celery["task_id"] == "c-1" and celery["message"] == "Task n[c-1] received"


def test_json_line_is_one_line_with_the_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        rec = logging.LogRecord(
            "taskgate.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    out = logs.JsonFormatter().format(rec)
    assert "\n" not in out
    assert "ValueError: bad" in json.loads(out)["exc"]


def test_log_format_setting() -> None:
    assert Settings.from_env(offline_env()).log_format == "text"
    assert Settings.from_env(offline_env(TASKGATE_LOG_FORMAT="json")).log_format == "json"
    assert Settings.from_env(offline_env(TASKGATE_LOG_FORMAT="JSON")).log_format == "json"
    with pytest.raises(ConfigError, match="TASKGATE_LOG_FORMAT"):
        Settings.from_env(offline_env(TASKGATE_LOG_FORMAT="xml"))


def test_a_bad_log_format_stops_the_gateway_with_one_line() -> None:
    env = offline_env(TASKGATE_LOG_FORMAT="yaml")
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli.commands", "gateway"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "TASKGATE_LOG_FORMAT" in out.stderr and "Traceback" not in out.stderr


def test_setup_json_gives_json_lines_text_stays_text() -> None:
    code = (
        "import logging, sys\n"
        "from shared import logs\n"
        "logs.setup('INFO', sys.argv[1])\n"
        "with logs.bound(task_id='t-9', trace_id='%s'):\n"
        "    logging.getLogger('taskgate.x').info('about %%s', 'it')\n" % TRACE
    )
    for fmt in ("json", "text"):
        out = subprocess.run(
            [sys.executable, "-c", code, fmt], cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        (line,) = out.stderr.strip().splitlines()
        if fmt == "json":
            assert json.loads(line)["trace_id"] == TRACE
            assert json.loads(line)["message"] == "about it"
        else:
            assert line.endswith("INFO    taskgate.x: about it")


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        f"01-{TRACE}-00f067aa0ba902b7-01",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",
        f"00-{TRACE}-00f067aa0ba902b-01",
    ],
)
def test_invalid_traceparents(value: object) -> None:
    with pytest.raises(ValueError):
        parse_traceparent(value)


def test_valid_traceparent_and_span_ids() -> None:
    trace = parse_traceparent(f"00-{TRACE}-00f067aa0ba902b7-00")
    assert trace == TraceParent(TRACE, "00f067aa0ba902b7", "00")
    tid = "0ef90642-7c7b-42f8-b83a-fe51684a9774"
    assert span_id_of(tid) == "0ef906427c7b42f8"
    assert trace.header(span_id_of(tid)) == f"00-{TRACE}-0ef906427c7b42f8-00"
    odd = span_id_of("not-a-uuid")
    assert len(odd) == 16 and odd != "0" * 16


def test_no_endpoint_imports_no_tracing_sdk() -> None:
    code = (
        "import sys\n"
        # redis-py imports opentelemetry's API by itself when it is installed; the SDK's
        # tracing and the exporter are what taskgate would bring in.
        "OURS = ('opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "from shared import tracing\n"
        "assert not tracing.configure('x', {})\n"
        "with tracing.span('s', tracing.new_trace()):\n"
        "    pass\n"
        "tracing.finished('p', [(tracing.new_trace(), '1' * 16, {})], 0)\n"
        "import gateway.app, worker.runner\n"
        "print(sorted(m for m in sys.modules if m.startswith(OURS)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "[]"
