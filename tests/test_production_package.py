"""What production gets: the installed package and the Docker image hold the apps, and not the
development tools (devtools/: the run command, the local Bedrock server, the embedded Redis),
the tests or the benchmarks. That no production module imports devtools is import-linter's
`production-without-devtools` contract (pyproject.toml, `make lint`)."""

from __future__ import annotations

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_PACKAGES = {
    "config",
    "conversations",
    "billing",
    "models_catalog",
    "idempotency",
    "openai_api",
}
DEVELOPMENT_ONLY = {"devtools", "tests", "benchmarks"}


def installed_packages() -> list[str]:
    """The packages `pip install .` puts in the wheel, found as setuptools finds them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # [tool.setuptools] in pyproject.toml is "beta"
        configuration = read_configuration(REPO_ROOT / "pyproject.toml")
    return configuration["tool"]["setuptools"]["packages"]


def dockerfile_copy_sources() -> set[str]:
    sources: set[str] = set()
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            sources.update(word.rstrip("/") for word in words[1:-1] if not word.startswith("--"))
    return sources


def test_the_installed_package_holds_the_apps_and_no_development_tools() -> None:
    packages = installed_packages()

    assert {package.split(".")[0] for package in packages} == PRODUCTION_PACKAGES
    assert "models_catalog.bedrock" in packages  # the real Bedrock client stays


def test_the_docker_image_copies_the_installed_packages_and_no_development_tools() -> None:
    sources = dockerfile_copy_sources()

    assert sources == PRODUCTION_PACKAGES | {"pyproject.toml", "manage.py"}
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # Out of the build context too, so a later `COPY . .` cannot bring them in.
    assert ignored >= DEVELOPMENT_ONLY


def test_make_run_starts_the_run_command_from_the_repository() -> None:
    assert "$(VENV)/bin/python -m devtools.stack" in (REPO_ROOT / "Makefile").read_text()
