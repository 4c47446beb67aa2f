"""docker-compose.yml, the Dockerfile, deploy/nginx.conf and .dockerignore, checked against the
project without a Docker engine (none runs here or in CI).

Each service's command is parsed by the real CLI it names (taskgate's argparse, Celery's click
commands with this project's Celery app, Flower's options), its environment is run through
``Settings.from_env``, its healthcheck is matched to a route of the app or to the node name its
command gives, and the files' hadolint-style rules are read from their text.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import re
import shlex
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from gateway.cli import commands as taskgate_cli
from gateway.cli.embedded import queue_concurrency
from shared.beat import unknown_names
from shared.settings import MIN_SECRET_BYTES, Settings
from tests.deploy.parsers import (
    Directive,
    MissingVariable,
    Stage,
    duration_s,
    interpolate,
    parse_dockerfile,
    parse_nginx,
    project_env_names,
    variables,
    walk_strings,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What the shell running `docker compose up` must set; stand-ins of the right shape.
REQUIRED = {"TASKGATE_SECRET": "s" * 48, "FLOWER_BASIC_AUTH": "admin:change-me"}
# Interpolated by compose but read by another program than taskgate: Flower's own option, and the
# official rabbitmq image's variables. Each is checked against its reader below.
NOT_THE_PROJECTS = {"FLOWER_BASIC_AUTH", "RABBITMQ_DEFAULT_PASS"}
RABBITMQ_IMAGE_ENV = {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "ash", "dash"}


# ---------------------------------------------------------------------------------------------
# The compose file as compose would see it


@cache
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def resolved(node: Any, env: Mapping[str, str] = REQUIRED) -> Any:
    """``node`` with every string interpolated as compose does with ``env`` set."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: resolved(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolved(v, env) for v in node]
    return node


@cache
def compose() -> dict[str, Any]:
    data = resolved(raw_compose())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def is_taskgate(service: Mapping[str, Any]) -> bool:
    """Runs the image this repository's Dockerfile builds."""
    return "build" in service


def taskgate_services() -> list[str]:
    return [name for name, s in services().items() if is_taskgate(s)]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_of(name: str) -> Settings:
    return Settings.from_env(environment(services()[name]))


def command(name: str) -> list[str]:
    cmd = services()[name].get("command")
    assert isinstance(cmd, list), f"{name}: command must be an exec-form list, not {cmd!r}"
    return [str(part) for part in cmd]


def by_command(*prefix: str) -> list[str]:
    return [n for n in taskgate_services() if command(n)[: len(prefix)] == list(prefix)]


def celery_option(args: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if flag.startswith("--") and arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def healthcheck_argv(name: str) -> list[str]:
    """The healthcheck as the argv Docker runs (``CMD-SHELL`` split as ``sh -c`` would)."""
    test = services()[name]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test!r}"
    if test[0] == "CMD-SHELL":
        assert len(test) == 2, f"{name}: CMD-SHELL takes one string"
        return shlex.split(test[1])
    return [str(x) for x in test[1:]]


def python_url(name: str) -> str:
    """The URL of a ``python -c "...urlopen('URL'...)"`` healthcheck."""
    argv = healthcheck_argv(name)
    assert argv[:2] == ["python", "-c"], f"{name}: healthcheck is not a python one-liner: {argv}"
    m = re.search(r"urlopen\('([^']+)'", argv[2])
    assert m, f"{name}: the one-liner opens no URL: {argv[2]}"
    return m.group(1)


# ---------------------------------------------------------------------------------------------
# The CLIs the commands name


@cache
def celery_app() -> Any:
    """The project's Celery app (the one ``-A worker`` loads), built once."""
    from worker.celery_app import make_celery

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_celery(settings_of(by_command("celery", "-A", "worker", "worker")[0]))


def parse_celery(argv: list[str]) -> click.Context:
    """``argv`` (``celery -A worker SUB ...``) parsed by Celery's own click commands, as the
    container would run it: an unknown subcommand or option raises ``click.UsageError``."""
    from celery.bin.celery import CLIContext
    from celery.bin.celery import celery as group

    assert argv[0] == "celery", argv
    assert argv[1:3] == ["-A", "worker"], f"{argv}: not the project's app (-A worker)"
    assert "-A" in {o for p in group.params for o in p.opts}
    obj = CLIContext(app=celery_app(), no_color=True, workdir=None, quiet=True)
    parent = click.Context(group, info_name="celery", obj=obj)
    name, cmd, rest = group.resolve_command(parent, argv[3:])
    assert cmd is not None and name is not None
    return cmd.make_context(name, rest, parent=parent)


def taskgate_accepts(argv: list[str]) -> bool:
    """Whether ``taskgate``'s own parser takes ``argv`` (``--help`` stops before running)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            taskgate_cli.main([*argv, "--help"])
        except SystemExit as exc:
            return exc.code == 0
    return False


@cache
def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the gateway, built by the project's own create_app."""
    from gateway.app import create_app

    app = create_app(settings_of(by_command("taskgate", "gateway")[0]))
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}


# ---------------------------------------------------------------------------------------------
# Compose: every service


def test_the_services_are_all_there() -> None:
    names = set(services())
    gateways = by_command("taskgate", "gateway")
    assert len(gateways) >= 2, f"two gateways behind the proxy, found {gateways}"
    assert {"redis", "nginx", "rabbitmq"} <= names
    assert by_command("celery", "-A", "worker", "beat"), "no beat"
    assert by_command("celery", "-A", "worker", "flower"), "no flower"
    queues = {
        q for n in by_command("celery", "-A", "worker", "worker")
        for q in (celery_option(command(n), "-Q", "--queues") or "").split(",")
    }  # fmt: skip
    assert set(Settings().queues) <= queues, f"a queue without a worker: {queues}"


@pytest.mark.parametrize("name", sorted(raw_compose()["services"]))
def test_commands_are_exec_form_without_a_shell(name: str) -> None:
    service = services()[name]
    for key in ("command", "entrypoint"):
        if key in service:
            value = service[key]
            assert isinstance(value, list), f"{name}.{key}: exec form (a list), not {value!r}"
            assert value[0] not in SHELLS, f"{name}.{key}: a shell would be PID 1: {value!r}"
            assert "&&" not in value and ";" not in value, f"{name}.{key}: {value!r}"
    assert "command" in service or not is_taskgate(service), f"{name}: which part does it run?"


@pytest.mark.parametrize("name", sorted(raw_compose()["services"]))
def test_each_service_restarts_has_a_healthcheck_and_a_grace_period(name: str) -> None:
    service = services()[name]
    assert service.get("restart") == "unless-stopped", f"{name}: restart policy"
    check = service.get("healthcheck")
    assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    for key in ("interval", "timeout"):
        assert duration_s(check[key]) > 0, f"{name}: healthcheck {key}"
    assert duration_s(check["timeout"]) < duration_s(check["interval"]) + 1
    assert "stop_grace_period" in service, f"{name}: no stop_grace_period"


@pytest.mark.parametrize("name", sorted(raw_compose()["services"]))
def test_depends_on_waits_for_health_of_services_that_have_it(name: str) -> None:
    for dep, rule in (services()[name].get("depends_on") or {}).items():
        assert dep in services(), f"{name} depends on unknown {dep}"
        assert rule.get("condition") == "service_healthy", f"{name} -> {dep}: {rule}"
        assert services()[dep].get("healthcheck"), f"{name} waits on {dep}, which has no check"
        if services()[dep].get("profiles"):
            assert rule.get("required") is False, f"{name} needs {dep} only with its profile"


def test_images_are_pinned_and_the_taskgate_image_is_this_version() -> None:
    stages = {s.name for s in parse_dockerfile(DOCKERFILE.read_text())}
    for name, service in services().items():
        image = service.get("image", "")
        repo, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
        assert tag and tag != "latest", f"{name}: image {image!r} must be pinned to a tag"
        if is_taskgate(service):
            assert repo == "taskgate" and tag == PYPROJECT["project"]["version"], image
            build = service["build"]
            assert build["context"] == "." and build["target"] in stages, build
            # Build args reach a Dockerfile ARG; the extras named are the wheel's own.
            assert set(build.get("args", {})) <= dockerfile_args(), build
            if "TASKGATE_EXTRAS" in build.get("args", {}):
                extras = build["args"]["TASKGATE_EXTRAS"].split(",")
                assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]), extras
            assert "volumes" not in service or all(
                not str(v).startswith(("./", ".:", "/")) for v in service["volumes"]
            ), f"{name}: the image carries the code; no bind mount of the source"


# ---------------------------------------------------------------------------------------------
# Compose: commands against the project's CLIs


@pytest.mark.parametrize("name", sorted(by_command("taskgate")))
def test_taskgate_commands_are_real_subcommands(name: str) -> None:
    argv = command(name)
    assert "taskgate" in PYPROJECT["project"]["scripts"], "taskgate is not an installed script"
    assert taskgate_accepts(argv[1:]), f"{name}: `{shlex.join(argv)}` is refused by taskgate"
    assert not taskgate_accepts(["no-such-command"])  # the check itself can say no


def test_celery_parsing_refuses_what_celery_refuses() -> None:
    with pytest.raises(click.UsageError):
        parse_celery(["celery", "-A", "worker", "worker", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_celery(["celery", "-A", "worker", "no-such-command"])


@pytest.mark.parametrize("name", sorted(by_command("celery", "-A", "worker", "worker")))
def test_workers_consume_known_queues_with_their_own_pool_size(name: str) -> None:
    ctx = parse_celery(command(name))
    settings = settings_of(name)
    queues = ctx.params["queues"]
    assert queues and set(queues) <= set(settings.queues), f"{name}: {queues}"
    assert ctx.params["concurrency"] >= 1
    # The pool size comes from CELERY_<QUEUE>_WORKER_CONCURRENCY, as `taskgate up`'s does, and
    # its default is a value `taskgate up` would accept.
    raw = raw_compose()["services"][name]["command"]
    c_arg = raw[raw.index("-c") + 1]
    (var,) = variables(c_arg)
    assert len(queues) == 1 and var == f"CELERY_{queues[0].upper()}_WORKER_CONCURRENCY", c_arg
    assert queue_concurrency({var: interpolate(c_arg, {})}, queues[0]) == ctx.params["concurrency"]
    assert ctx.params["hostname"].startswith(f"{queues[0]}@"), "node name for the healthcheck"


PINGED = by_command("celery", "-A", "worker", "worker") + by_command(
    "celery", "-A", "worker", "beat"
)


@pytest.mark.parametrize("name", sorted(PINGED))
def test_celery_healthchecks_ping_the_node_the_command_names(name: str) -> None:
    argv = command(name)
    ctx = parse_celery(argv)
    check = healthcheck_argv(name)
    ping = parse_celery(check)
    assert ping.info_name == "inspect" and ping.params["command"] == "ping", check
    (destination,) = ping.params["destination"]
    if argv[3] == "beat":
        assert ctx.params["remote_control"] is True, "beat answers ping only with remote control"
    node = celery_option(argv, "-n", "--hostname")
    assert node is not None and node.endswith("@%h"), f"{name}: give the node a name: {argv}"
    # %h is the container's hostname, which is $HOSTNAME in the healthcheck's shell.
    assert destination == node.replace("%h", "$HOSTNAME"), (destination, node)
    test = raw_compose()["services"][name]["healthcheck"]["test"]
    assert "$$HOSTNAME" in test[1], "compose must pass $HOSTNAME to the shell ($$)"


def test_beat_runs_the_schedule_with_known_tasks_and_keeps_its_file() -> None:
    (name,) = by_command("celery", "-A", "worker", "beat")
    ctx = parse_celery(command(name))
    raw = raw_compose()["services"][name]
    assert variables(str(raw["environment"].get("TASKGATE_BEAT_SCHEDULE"))) == {
        "TASKGATE_BEAT_SCHEDULE"
    }, "beat takes its schedule from TASKGATE_BEAT_SCHEDULE"
    for schedule in ("", 'demo.count=60:{"steps": 5}'):
        env = {**REQUIRED, "TASKGATE_BEAT_SCHEDULE": schedule}
        settings = Settings.from_env(environment(resolved(raw, env)))
        assert settings.beat_schedule
        assert not unknown_names(settings.beat_schedule, set(celery_app().tasks))
    schedule_file = Path(ctx.params["schedule"])
    mounts = [str(v).split(":")[1] for v in services()[name].get("volumes", [])]
    assert str(schedule_file.parent) in mounts, f"the schedule file is on a volume: {mounts}"


def test_flower_requires_basic_auth() -> None:
    from flower.options import options as flower_options

    (name,) = by_command("celery", "-A", "worker", "flower")
    ctx = parse_celery(command(name))
    assert ctx.info_name == "flower"
    argv = list(ctx.params["tornado_argv"])
    auth = celery_option(argv, "--basic-auth")
    assert auth == REQUIRED["FLOWER_BASIC_AUTH"], f"{name}: no --basic-auth: {argv}"
    assert "basic_auth" in flower_options, "Flower has no basic_auth option"
    for arg in argv:
        assert arg.startswith("--") and arg[2:].split("=")[0].replace("-", "_") in flower_options
    # Unset, compose refuses the whole file: Flower is never published without auth.
    raw = raw_compose()["services"][name]["command"]
    with pytest.raises(MissingVariable, match="FLOWER_BASIC_AUTH"):
        resolved(raw, {"TASKGATE_SECRET": "s" * 48})
    port = celery_option(argv, "--port")
    assert any(str(p).endswith(f":{port}") for p in services()[name].get("ports", []))
    assert urlsplit(python_url(name)).port == int(port or 0)
    assert urlsplit(python_url(name)).path == "/healthcheck"  # Flower's, answered without auth


# ---------------------------------------------------------------------------------------------
# Compose: environment


def test_every_variable_is_one_the_project_reads() -> None:
    known = project_env_names()
    assert "TASKGATE_REDIS_URL" in known and "CELERY_FAST_WORKER_CONCURRENCY" in known
    for name, service in raw_compose()["services"].items():
        env_keys = set((service.get("environment") or {}).keys())
        if name == "rabbitmq":
            assert env_keys <= RABBITMQ_IMAGE_ENV, env_keys
        elif "build" in service:
            assert env_keys <= known, f"{name}: not read by taskgate: {env_keys - known}"
        else:
            assert not env_keys, f"{name}: {env_keys}"
    # Build args are the image's (Dockerfile ARGs), not variables the running project reads.
    strings = list(walk_strings(raw_compose()))
    build_vars = {v for path, text in strings if "build.args." in path for v in variables(text)}
    assert build_vars <= dockerfile_args(), build_vars - dockerfile_args()
    used = {v for path, text in strings if "build.args." not in path for v in variables(text)}
    assert used - known <= NOT_THE_PROJECTS, f"invented: {used - known - NOT_THE_PROJECTS}"
    for path, text in walk_strings(raw_compose()):
        if "RABBITMQ_DEFAULT_PASS" in variables(text):
            assert path.startswith("services.rabbitmq."), path


@pytest.mark.parametrize("name", sorted(taskgate_services()))
def test_each_taskgate_environment_passes_the_settings_checks(name: str) -> None:
    settings = settings_of(name)
    assert settings.require_redis().startswith("redis://redis:")
    assert urlsplit(settings.redis_url).hostname in services()
    signs = name in by_command("taskgate", "gateway") + by_command(
        "celery", "-A", "worker", "worker"
    )
    if signs:  # tokens (gateway), completion webhooks (worker)
        assert settings.require_secret()
    else:  # beat and Flower sign nothing: they do not get the secret
        assert settings.secret is None, f"{name} holds TASKGATE_SECRET without using it"


def test_the_secret_is_required_and_long_enough() -> None:
    for name in by_command("taskgate", "gateway"):
        raw = raw_compose()["services"][name]
        with pytest.raises(MissingVariable, match="TASKGATE_SECRET"):
            resolved(raw, {"FLOWER_BASIC_AUTH": "a:b"})
        assert len(REQUIRED["TASKGATE_SECRET"]) >= MIN_SECRET_BYTES


@pytest.mark.parametrize("name", sorted(by_command("celery", "-A", "worker", "worker")))
def test_stop_grace_period_exceeds_the_soft_time_limit(name: str) -> None:
    grace = duration_s(services()[name]["stop_grace_period"])
    soft = settings_of(name).soft_time_limit
    assert soft == Settings().soft_time_limit, "the grace period was set for the default limit"
    assert grace > soft, f"{name}: {grace}s would SIGKILL a task before its soft limit ({soft}s)"


def test_rabbitmq_is_a_profile_and_its_url_is_accepted() -> None:
    rabbit = services()["rabbitmq"]
    assert rabbit.get("profiles") == ["rabbitmq"]
    url = compose()["x-rabbitmq-broker-url"]
    for name in taskgate_services():
        raw_env = raw_compose()["services"][name]["environment"]
        assert variables(str(raw_env.get("CELERY_BROKER_URL"))) == {"CELERY_BROKER_URL"}, name
        env = {**environment(services()[name]), "CELERY_BROKER_URL": url}
        settings = Settings.from_env(env)
        assert settings.broker_is_amqp and settings.effective_broker_url == url
        assert not settings_of(name).broker_is_amqp, "Redis is the broker without the profile"
    parts = urlsplit(url)
    assert parts.hostname == "rabbitmq" and parts.port == 5672
    assert parts.username == environment(rabbit)["RABBITMQ_DEFAULT_USER"]
    assert rabbit.get("hostname") == "rabbitmq", "RabbitMQ keeps its data per node name"


def test_redis_persists() -> None:
    redis = services()["redis"]
    argv = redis["command"]
    assert argv[0] == "redis-server" and argv[argv.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert healthcheck_argv("redis") == ["redis-cli", "ping"]
    assert not redis.get("ports"), "Redis is not published"


# ---------------------------------------------------------------------------------------------
# Gateways and nginx


@pytest.mark.parametrize("name", sorted(by_command("taskgate", "gateway")))
def test_gateways_healthcheck_readyz_on_their_port(name: str) -> None:
    url = urlsplit(python_url(name))
    settings = settings_of(name)
    assert url.path == "/readyz"
    assert ("GET", url.path) in app_routes(), f"no GET {url.path} in the app"
    assert url.hostname == "127.0.0.1" and url.port == settings.port
    assert settings.host == "0.0.0.0", "the gateway must listen beyond the container's loopback"
    assert not services()[name].get("ports"), f"{name}: reached through nginx only"


@cache
def nginx() -> Directive:
    (mount,) = [v for v in services()["nginx"]["volumes"] if "nginx.conf" in v]
    source, target = mount.split(":")[:2]
    assert target == "/etc/nginx/nginx.conf"
    return parse_nginx((ROOT / source).read_text())


def locations() -> dict[str, Directive]:
    return {d.args[-1]: d for d in nginx().find("location")}


def header(location: Directive, name: str) -> str | None:
    for d in location.own("proxy_set_header"):
        if d.args[0].lower() == name.lower():
            return " ".join(d.args[1:])
    return None


def test_nginx_balances_over_every_gateway() -> None:
    (upstream,) = nginx().find("upstream")
    servers = {d.args[0] for d in upstream.own("server")}
    want = {f"{n}:{settings_of(n).port}" for n in by_command("taskgate", "gateway")}
    assert servers == want
    assert not upstream.own("ip_hash") and not upstream.own("hash"), "no stickiness needed"
    for loc in locations().values():
        (target,) = loc.own("proxy_pass")
        assert target.args == [f"http://{upstream.args[0]}"]
    (listen,) = nginx().find("listen")
    assert any(str(p).endswith(f":{listen.args[0]}") for p in services()["nginx"]["ports"])
    assert set(services()["nginx"]["depends_on"]) == set(by_command("taskgate", "gateway"))


def test_nginx_upgrades_websockets_on_the_socket_path() -> None:
    sockets = {p for m, p in app_routes() if p.startswith("/socket.io")}
    assert sockets == {"/socket.io/"}
    loc = locations()["/socket.io/"]
    assert header(loc, "Upgrade") == "$http_upgrade"
    (upgrade_map,) = [
        m for m in nginx().find("map") if m.args == ["$http_upgrade", "$connection_upgrade"]
    ]
    assert {d.name: d.args for d in upgrade_map.children}["default"] == ["upgrade"]
    assert header(loc, "Connection") == "$connection_upgrade"
    versions = [d.args for d in nginx().find("proxy_http_version")]
    assert versions and all(v == ["1.1"] for v in versions)
    (timeout,) = loc.own("proxy_read_timeout")
    from gateway.app import PING_INTERVAL_S, PING_TIMEOUT_S

    assert duration_s(timeout.args[0]) >= 600 > PING_INTERVAL_S + PING_TIMEOUT_S


def test_nginx_passes_host_in_every_location() -> None:
    # The gateway compares Origin with Host; nginx inherits no proxy_set_header into a block
    # that sets any, so each location must set Host itself.
    for path, loc in locations().items():
        assert header(loc, "Host") == "$http_host", path


def test_nginx_waits_longer_than_the_longest_request() -> None:
    from gateway.http.manage import MAX_WAIT_S

    (timeout,) = locations()["/"].own("proxy_read_timeout")
    assert duration_s(timeout.args[0]) > MAX_WAIT_S
    (body,) = nginx().find("client_max_body_size")
    assert int(body.args[0].rstrip("m")) * 1024 * 1024 > Settings().max_body_bytes


def test_nginx_parser_rejects_broken_config() -> None:
    with pytest.raises(ValueError):
        parse_nginx("http { server { listen 80; }")


# ---------------------------------------------------------------------------------------------
# Dockerfile (hadolint-style rules) and .dockerignore


@cache
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def dockerfile_args() -> set[str]:
    """The names of the Dockerfile's build args (``ARG NAME[=default]``), every stage's."""
    return {i.args.split("=")[0] for st in stages() for i in st.all("ARG")}


def test_dockerfile_is_multi_stage_with_pinned_images() -> None:
    assert len(stages()) >= 2
    names = [s.name for s in stages()]
    for stage in stages():
        assert stage.name, f"FROM {stage.image}: name every stage"
        repo, _, tag = stage.image.rpartition(":")
        assert repo and tag and tag != "latest", f"FROM {stage.image}: pin a tag (DL3006/7)"
    assert len(set(names)) == len(names)
    assert stages()[-1].image.startswith("python:3.11-slim")


def test_dockerfile_runtime_is_non_root_with_exec_form_entrypoint() -> None:
    final = stages()[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER (DL3002)"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), user
    last_user_line = users[-1].line
    for kind in ("ENTRYPOINT", "CMD"):
        (ins,) = final.all(kind)
        assert ins.exec_form, f"{kind} must be a JSON array (DL3025): {ins.args}"
        assert ins.line > last_user_line
    entry = final.all("ENTRYPOINT")[0].exec_form or []
    cmd = final.all("CMD")[0].exec_form or []
    assert entry[0] not in SHELLS
    assert taskgate_accepts(cmd[1:]) and cmd[0] == "taskgate", cmd
    assert "8080" in final.all("EXPOSE")[0].args.split()


def test_dockerfile_healthcheck_probes_a_route_of_the_default_command() -> None:
    (check,) = stages()[-1].all("HEALTHCHECK")
    argv = check.exec_form
    assert argv and argv[:2] == ["python", "-c"], check.args
    m = re.search(r"/(healthz|readyz)'", argv[2])
    assert m and ("GET", f"/{m.group(1)}") in app_routes()
    assert {"interval", "timeout", "retries"} <= set(check.flags())


def run_lines() -> Iterator[tuple[Stage, str]]:
    for stage in stages():
        for ins in stage.all("RUN"):
            yield stage, ins.args


def test_dockerfile_pip_and_apt_rules() -> None:
    pips = [(s, r) for s, r in run_lines() if re.search(r"\bpip3? install\b", r)]
    assert pips
    for _, run in pips:
        for cmd in re.split(r"&&|;", run):
            if re.search(r"\bpip3? install\b", cmd):
                assert "--no-cache-dir" in cmd, f"DL3042: {cmd.strip()}"
                assert not re.search(r"\s(-e|--editable)\b", cmd), f"no editable install: {cmd}"
    for _, run in run_lines():
        if "apt-get install" in run:
            assert "--no-install-recommends" in run, f"DL3015: {run}"
            assert "apt-get update" in run and "rm -rf /var/lib/apt/lists/*" in run, run
            assert re.search(r"apt-get install (-\S+ )*-y|-y .*apt-get install|install -y", run)
    for stage in stages():
        for ins in stage.all("RUN"):
            assert not re.search(r"\bsudo\b", ins.args), "DL3004"
        assert not stage.all("ADD"), "COPY, not ADD (DL3020)"


def test_dockerfile_installs_the_wheel_built_in_a_build_stage() -> None:
    final = stages()[-1]
    by_name = {s.name: s for s in stages()}
    wheel_copies = [c for c in final.all("COPY") if "--from=" in c.args]
    assert wheel_copies, "the runtime stage copies the wheel from the build stage"
    source_stage = by_name[re.search(r"--from=(\S+)", wheel_copies[0].args).group(1)]  # type: ignore[union-attr]
    builds = [r for r in source_stage.all("RUN") if "python -m build" in r.args]
    assert builds and "--wheel" in builds[0].args
    out = re.search(r"--outdir (\S+)", builds[0].args)
    assert out and wheel_copies[0].args.split()[1].rstrip("/") == out.group(1).rstrip("/")
    installs = [r.args for r in final.all("RUN") if "pip install" in r.args]
    assert any(".whl" in r for r in installs), installs
    # The extras installed with it: a build arg whose default names extras the wheel has.
    (extras_arg,) = [a for a in final.all("ARG") if a.args.startswith("TASKGATE_EXTRAS=")]
    default = extras_arg.args.split("=", 1)[1].split(",")
    assert set(default) <= set(PYPROJECT["project"]["optional-dependencies"]), default
    assert any("[${TASKGATE_EXTRAS}]" in r for r in installs), installs
    # No source tree in the runtime stage: it copies only from other stages.
    assert all("--from=" in c.args for c in final.all("COPY"))


def test_dockerfile_build_stage_has_what_the_wheel_build_reads() -> None:
    by_name = {s.name: s for s in stages()}
    build = next(s for s in stages() if any("python -m build" in r.args for r in s.all("RUN")))
    copied = set()
    from_web = None
    for c in build.all("COPY"):
        parts = c.args.split()
        m = re.match(r"--from=(\S+)", parts[0])
        if m:
            from_web = by_name[m.group(1)]
            continue
        copied.update(p.rstrip("/") for p in parts[:-1])
    wanted = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    wanted |= {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    wanted |= {p for p in ("setup.py", "MANIFEST.in") if (ROOT / p).exists()}
    assert wanted <= copied, f"the build stage lacks {wanted - copied}"
    # The page and the socket.io-client bundle: web/ from a stage that ran `npm ci`.
    assert from_web is not None, "the build stage takes web/ from the npm stage"
    assert any(re.search(r"\bnpm ci\b", r.args) for r in from_web.all("RUN"))
    web_copies = " ".join(c.args for c in from_web.all("COPY"))
    assert "web/package-lock.json" in web_copies and "web/src" in web_copies
    ignored = dockerignore_patterns()
    for path in (*copied, "web/package.json", "web/package-lock.json", "web/src/index.html"):
        assert (ROOT / path).exists(), path
        assert not ignored_by(path, ignored), f".dockerignore drops {path}"


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored_by(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hit = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/").replace("**/", "*")
        if any(fnmatch.fnmatch(p, pat) for p in prefixes):
            hit = not negate
    return hit


def test_dockerignore_keeps_host_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "web/node_modules/x", ".taskgate/secret"):
        assert ignored_by(path, patterns), f"{path} would be sent to the build"
    assert not ignored_by("gateway/app.py", patterns)
