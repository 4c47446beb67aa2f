"""The import graph of gateway/, worker/ and shared/ has no circles and no forbidden edges.

``scripts/layers.py`` reads the sources with ``ast``; these tests run it on the project, and on
small packages written to ``tmp_path`` to show that it does see a circle or a forbidden edge.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("taskgate_layers", ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


layers = _load_layers()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_packages_have_no_import_circles() -> None:
    report = layers.check()
    assert len(report.modules) > 20
    assert report.module_circles == [], layers.render(report)
    assert report.unit_circles == [], layers.render(report)


def test_the_packages_have_no_forbidden_edges() -> None:
    report = layers.check()
    assert report.forbidden == [], layers.render(report)


def test_shared_is_the_bottom_layer() -> None:
    report = layers.check()
    rows = layers.layers(report.unit_edges())
    assert "shared" in rows[-1]


def test_a_circle_is_found_whatever_its_kind(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            # Hidden from the interpreter by a lazy import; a circle all the same.
            "pkg/b.py": "def f():\n    from pkg.a import x\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from ..other import d\n",
            "pkg/other/__init__.py": "",
            "pkg/other/d.py": "import pkg.sub.c\n",
            "pkg/clean.py": "import pkg.b\n",
        },
    )
    report = layers.check(tmp_path, ["pkg"])
    assert report.module_circles == [["pkg.a", "pkg.b"], ["pkg.other.d", "pkg.sub.c"]]
    assert report.unit_circles == [["pkg.a", "pkg.b"], ["pkg.other", "pkg.sub"]]
    kinds = {(e.src, e.dst): e.kind for e in report.edges}
    assert kinds[("pkg.b", "pkg.a")] == "lazy"
    assert kinds[("pkg.sub.c", "pkg.other.d")] == "typing"
    assert kinds[("pkg.a", "pkg.b")] == "module"
    assert not report.ok
    assert layers.main(["--root", str(tmp_path), "--packages", "pkg"]) == 1


def test_forbidden_edges_are_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/control.py": "def f():\n    from worker.app import make\n",
            "worker/__init__.py": "",
            "worker/app.py": "import celery\nimport shared.config\n",
            "shared/__init__.py": "",
            # Module level: forbidden. In a function or under TYPE_CHECKING: allowed.
            "shared/config.py": "import kombu.messaging\nfrom aiohttp import web\n"
            "def g():\n    import celery\n"
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from celery import Celery\n",
            "shared/back.py": "from worker import app\n",
        },
    )
    report = layers.check(tmp_path, ["gateway", "worker", "shared"])
    found = sorted((e.src, e.dst, why) for e, why in report.forbidden)
    assert found == [
        ("gateway.control", "worker.app", "gateway must not import worker"),
        ("shared.back", "worker.app", "shared must not import worker"),
        ("shared.config", "aiohttp", "shared must not import aiohttp at module level"),
        ("shared.config", "kombu.messaging", "shared must not import kombu at module level"),
    ]
    # The upward import closes a circle between the packages, though not between modules.
    assert report.module_circles == []
    assert report.unit_circles == [["shared", "worker"]]
    assert layers.main(["--root", str(tmp_path)]) == 1


def test_a_clean_package_passes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.top import run\n",
            "pkg/top.py": "from . import low\n",
            "pkg/low.py": "import os\n",
        },
    )
    assert layers.main(["--root", str(tmp_path), "--packages", "pkg"]) == 0
    assert layers.layers(layers.check(tmp_path, ["pkg"]).unit_edges()) == [["pkg"]]
