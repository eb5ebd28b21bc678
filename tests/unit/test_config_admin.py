"""Config mistakes a new admin makes, each named with its fix (review P3.15)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailflow.config import ConfigError, load_config
from tests.helpers.servers import REPO


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbf[store]\nurl = "sqlite:///tmp/x.db"\n')
    with pytest.raises(ConfigError, match="remove the byte-order mark"):
        load_config(str(path))


def test_an_empty_identify_list_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[accounts]\nidentify = []\n")
    with pytest.raises(ConfigError, match="accounts.identify: is empty, which would police no mail"):
        load_config(str(cfg))


def test_make_check_config_makes_the_dev_store_directory_like_make_run() -> None:
    """A fresh checkout has no var/: conf/dev.toml's SQLite directory (never created by mailflow)."""
    for target in ("run", "check-config"):
        steps = subprocess.run(["make", "-n", target], capture_output=True, text=True, timeout=30, cwd=REPO,
                               check=True).stdout.splitlines()
        assert "mkdir -p var" in steps and steps.index("mkdir -p var") < next(
            i for i, step in enumerate(steps) if "bin/mailflow" in step), (target, steps)


def test_the_postfix_example_keeps_root_and_postfix_free_to_send() -> None:
    """Postfix's own local_login_sender_maps example starts with root and postfix = *."""
    text = (REPO / "conf" / "postfix-main.cf").read_text()
    assert "#   local_login_sender_maps = inline:{ { root = * }, { postfix = * } },\n#       hash:" in text
