"""The dependencies whose internals the fast paths touch are bounded to the tested minor series,
and CI installs exactly the versions of constraints.txt (make setup), which those bounds admit."""

from __future__ import annotations

import importlib.metadata
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.support import ROOT

TOUCHED = ("aiohttp", "python-socketio", "python-engineio", "redis")


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def constraints() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = Version(version.strip())
    return out


def test_touched_dependencies_have_an_upper_bound_at_the_tested_minor() -> None:
    reqs, pinned = requirements(), constraints()
    for name in TOUCHED:
        spec = reqs[name].specifier
        uppers = [s for s in spec if s.operator == "<"]
        assert uppers, f"{name} has no upper bound in pyproject.toml"
        tested = pinned[name]
        assert tested in spec, f"{name} {tested} (constraints.txt) is outside {spec}"
        bound = Version(uppers[0].version)
        # The bound is the next minor of the tested one: no untested minor is admitted.
        assert (bound.major, bound.minor) == (tested.major, tested.minor + 1), (name, bound)


def test_every_dependency_is_constrained_and_installed_as_constrained() -> None:
    pinned = constraints()
    for name, req in requirements().items():
        assert name in pinned, f"{name} missing from constraints.txt"
        assert pinned[name] in req.specifier, f"{name} {pinned[name]} outside {req.specifier}"
    for name in TOUCHED:
        installed = Version(importlib.metadata.version(name))
        assert installed == pinned[name], f"{name}: {installed} installed, {pinned[name]} pinned"
