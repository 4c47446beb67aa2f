"""The build step pyproject.toml cannot say: put the web page in the package.

The page's modules (``web/src``) and the socket.io-client ESM bundle (from the npm package in
``web/node_modules``, with its licence and version) are copied into ``gateway/http/page_assets``
before the package is built, so the sdist and the wheel carry them (package data). A build from
an sdist finds them already there; a build from a checkout without ``npm ci`` in web/ stops with
a message saying so. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
NPM_CLIENT = WEB / "node_modules" / "socket.io-client"
ASSETS = ROOT / "gateway" / "http" / "page_assets"
BUNDLE = ("socket.io.esm.min.js", "socket.io.esm.min.js.map")


def collect_page_assets() -> None:
    """Copy the page and the bundle into ASSETS (from a checkout); keep them (from an sdist)."""
    if not (WEB / "src" / "index.html").is_file() or not NPM_CLIENT.is_dir():
        if (ASSETS / "src" / "index.html").is_file() and (ASSETS / "vendor").is_dir():
            return  # an sdist: they came with it
        raise SystemExit(
            "taskgate build: the web page's assets are missing: run `npm ci` in web/ first "
            "(it installs socket.io-client, whose bundle the package carries)"
        )
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    shutil.copytree(WEB / "src", ASSETS / "src")
    vendor = ASSETS / "vendor" / "socket.io-client"
    vendor.mkdir(parents=True)
    for name in BUNDLE:
        shutil.copy2(NPM_CLIENT / "dist" / name, vendor / name)
    shutil.copy2(NPM_CLIENT / "LICENSE", vendor / "LICENSE")
    package = json.loads((NPM_CLIENT / "package.json").read_text())
    (vendor / "VERSION.json").write_text(
        json.dumps({"name": package["name"], "version": package["version"]}) + "\n"
    )


class BuildPy(build_py):
    def run(self) -> None:
        # An editable install (make setup) serves the page from the checkout's web/ instead.
        if not getattr(self, "editable_mode", False):
            collect_page_assets()
        super().run()


class Sdist(sdist):
    def run(self) -> None:
        collect_page_assets()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
