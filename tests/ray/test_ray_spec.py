"""``engine`` and ``ray_options`` are checked when a task registers (at import), and the gateway
imports a module of Ray tasks without Ray installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.registry import get_task, task
from tests.support import ROOT, offline_env


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"engine": "spark"}, "engine must be one of celery, ray"),
        ({"engine": "ray", "ray_options": {"num_cpu": 1}}, "unknown ray_options key 'num_cpu'"),
        ({"engine": "ray", "ray_options": {"max_retries": 3}}, "unknown ray_options key"),
        ({"engine": "ray", "ray_options": {"num_cpus": -1}}, "ray_options['num_cpus']"),
        ({"engine": "ray", "ray_options": {"num_cpus": True}}, "ray_options['num_cpus']"),
        ({"engine": "ray", "ray_options": {"memory": 1.5}}, "ray_options['memory']"),
        ({"engine": "ray", "ray_options": {"resources": {"gpu": -2}}}, "ray_options['resources']"),
        ({"engine": "ray", "ray_options": [("num_cpus", 1)]}, "must be a mapping"),
        ({"ray_options": {"num_cpus": 1}}, "ray_options need engine='ray'"),
    ],
)
def test_a_bad_engine_or_ray_option_is_refused_at_registration(
    kwargs: dict[str, object], says: str
) -> None:
    with pytest.raises(ValueError, match=r"task 'bad\.ray'") as err:
        task("bad.ray", **kwargs)  # type: ignore[arg-type]
    assert says in str(err.value)
    with pytest.raises(Exception, match="unknown task"):
        get_task("bad.ray")


def test_a_ray_task_keeps_its_engine_and_options() -> None:
    import worker.demo  # noqa: F401

    spec = get_task("demo.ray_primes")
    assert spec.engine == "ray" and spec.ray_options == {"num_cpus": 1}
    assert get_task("demo.primes").engine == "celery"


# The gateway's process with ``ray`` made unimportable: it still imports the demo tasks (Ray
# ones included), serves their forms, and never loads ray.
NO_RAY = """
import importlib.abc, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoRay())
from shared.settings import Settings
from gateway.app import create_app
from shared.registry import all_tasks
from gateway.http.task_types import describe_task_type

app = create_app(Settings.from_env())
spec = all_tasks()["demo.ray_primes"]
assert describe_task_type(spec)["input_schema"]["properties"]["parts"], spec
assert spec.engine == "ray", spec
assert "ray" not in sys.modules and not any(m.startswith("ray.") for m in sys.modules)
print("ok")
"""


def test_the_gateway_imports_ray_tasks_without_ray() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_RAY],
        env=offline_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
