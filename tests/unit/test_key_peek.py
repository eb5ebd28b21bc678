"""check-config compares the suppression key with the store's fingerprint without creating or
changing anything, and says whether it compared (review P2.4)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis

from mailflow.store import open_store
from mailflow.suppression.keys import FINGERPRINT_STATE, check_store_key, fingerprint
from tests.unit.test_secrets import KEY_A, KEY_B, _cli, _store_config


def _files(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_check_config_refuses_a_key_the_store_was_not_made_with(
        tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, store_url)
    store = open_store(store_url)
    check_store_key(store, KEY_A.encode(), ())
    store.close()
    before = _files(tmp_path)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_B)
    code, out, err = _cli(capsys, "check-config", "-c", cfg)
    assert code == 2 and "OK" not in out and err.count("\n") == 1, (out, err)
    assert (f"the suppression key differs from the one this store's lists were made with (fingerprint "
            f"{fingerprint(KEY_B.encode())[:12]} vs {fingerprint(KEY_A.encode())[:12]})") in err
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    code, out, err = _cli(capsys, "check-config", "-c", cfg)
    assert code == 0 and f"suppression key {fingerprint(KEY_A.encode())[:12]} matches the store's fingerprint" in out
    assert _files(tmp_path) == before  # nothing created, nothing written


def test_a_store_that_does_not_exist_yet_is_not_created(tmp_path: Path, store_url: str,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _store_config(tmp_path, store_url)
    before = _files(tmp_path)
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    code, out, _ = _cli(capsys, "check-config", "-c", cfg)
    assert code == 0 and ("not compared with the store: the database does not exist yet" in out
                          or "the store has no fingerprint yet" in out), out
    assert _files(tmp_path) == before
    if store_url.startswith("redis"):
        assert redis.Redis.from_url(store_url).exists(f"mailflow:{FINGERPRINT_STATE}") == 0


def test_a_database_a_milter_has_open_is_read_through_its_wal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite://{tmp_path}/state.db"
    store = open_store(url)  # kept open: -wal and -shm exist, the fingerprint may be only in the WAL
    check_store_key(store, KEY_A.encode(), ())
    try:
        assert (tmp_path / "state.db-wal").exists()
        monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_B)
        code, _, err = _cli(capsys, "check-config", "-c", _store_config(tmp_path, url))
        assert code == 2 and "the suppression key differs" in err
    finally:
        store.close()


def test_a_redis_that_does_not_answer_is_said_not_compared(tmp_path: Path, redis_url: str,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    monkeypatch.setenv("MAILFLOW_SUPPRESSION_KEY", KEY_A)
    os.kill(pid, signal.SIGSTOP)
    try:
        code, out, _ = _cli(capsys, "check-config", "-c", _store_config(tmp_path, redis_url))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert code == 0 and "not compared with the store: Redis did not answer" in out, out
