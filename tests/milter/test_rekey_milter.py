"""What running milters see while the lists are re-keyed (issue 14, Keys), on both stores: a milter
on the old key keeps refusing suppressed recipients through the copy and the switch; one started
on the new key refuses them too; a milter starting on the old key after the switch is refused with
a line that says why; after --finish only the new key finds the lists (hence: restart first)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailflow.suppression.keygen import new_key, write_key_file
from tests.helpers.servers import REPO, MilterProcess, free_port
from tests.milter.test_milter_protocol import AUTH, config, send

RECIPIENTS = ["optout@dest.example", "Optout+news@Dest.example", "someone@mx.blocked.example", "free@dest.example"]
SUPPRESSED = ["550", "550", "550", "continue"]


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args[:2], "-c", str(config_path), *args[2:]],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def replies(milter: MilterProcess) -> list[str]:
    time.sleep(0.35)  # the Redis replica refreshes every refresh_ms (100 ms here)
    rcpt, _ = send(milter, "bob@shop.example", RECIPIENTS, AUTH)
    return [reply.split(" ")[0] for reply in rcpt]


def test_milters_through_a_rekey(tmp_path: Path, store_url: str, start_milter: Callable[..., MilterProcess]) -> None:
    for name in ("old", "new"):
        write_key_file(str(tmp_path / f"{name}.key"), new_key())
    settings = {"store": {"refresh_ms": 100}, "ratelimit": {"limits": ["1000/hour"]}}
    old = start_milter(config(store_url, **settings, suppression={"hash_key_file": "old.key"}), name="old")
    assert cli(old.config_path, "suppress", "add", "optout@dest.example", "@blocked.example").returncode == 0
    assert replies(old) == SUPPRESSED

    rekeyed = cli(old.config_path, "suppress", "rekey", "--new-key-file", str(tmp_path / "new.key"))
    assert rekeyed.returncode == 0 and "2 entries re-keyed" in rekeyed.stdout, rekeyed.stderr
    assert replies(old) == SUPPRESSED  # the old key's entries stay until --finish

    new = start_milter(config(store_url, **settings, suppression={"hash_key_file": "new.key"}), name="new")
    assert replies(new) == SUPPRESSED
    # The old milter started again (on a port of its own: the first still holds its port).
    again = tmp_path / "old-again.toml"
    again.write_text(old.config_path.read_text().replace(old.socket, f"inet:{free_port()}@127.0.0.1"))
    restarted = subprocess.run([sys.executable, "-m", "mailflow", "run", "-c", str(again)], cwd=REPO,
                               capture_output=True, text=True, timeout=60)
    assert restarted.returncode == 2
    assert restarted.stderr.splitlines()[-1].startswith("mailflow: the suppression lists were re-keyed")

    finished = cli(new.config_path, "suppress", "rekey", "--finish")
    assert finished.returncode == 0 and "2 entries of the old key removed" in finished.stdout, finished.stderr
    assert replies(new) == SUPPRESSED
    assert replies(old) == ["continue"] * 4  # a milter left on the old key now finds nothing
