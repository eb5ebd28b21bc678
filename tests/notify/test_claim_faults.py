"""The once-per-fleet claim meets a real Redis that stops answering (SIGSTOP past timeout_ms).
At least once, never at most once: a notifier whose claim call fails sends anyway (dedup=
store_down) under the event's fleet-wide id, so a receiver can drop the duplicate. A claim sent
on an open connection before the timeout is run when Redis resumes, and keeps milters that ask
later from sending it; one whose connection was still being opened is never made (a later milter
sends a third copy, same id)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from mailflow.notify.notifier import Notifier
from mailflow.store.redis import RedisStore
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver
from tests.notify.test_delivery import REFUSED, notify_config


def test_a_stopped_store_sends_each_milters_notice_under_one_id_and_a_later_one_none(
        tmp_path: Path, secret_file: Path, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisProcess(tmp_path).start()
    stores = [RedisStore(server.url, timeout_ms=200) for _ in range(3)]
    config = notify_config(secret_file, receiver.url)
    notifiers = [Notifier(config, store, host=f"mx{i}") for i, store in enumerate(stores)]
    try:
        for store in stores:  # connected before the stop: each claim is sent, its reply lost
            store.ping()
        server.pause()
        with caplog.at_level(logging.INFO, logger="mailflow"):
            for notifier in notifiers[:2]:
                notifier.submit(REFUSED)
                notifier.start()
            receiver.wait(2, timeout=10)
            server.resume()
            time.sleep(0.2)  # Redis runs the claims it was sent while stopped
            notifiers[2].submit(REFUSED)
            notifiers[2].start()
            deadline = time.monotonic() + 5
            while "sent by another milter" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.resume()
        for notifier in notifiers:
            notifier.close(timeout=2)
        for store in stores:
            store.close()
        server.kill()
    bodies = receiver.events(SECRET)
    assert len(bodies) == 2 and bodies[0]["id"] == bodies[1]["id"]  # a duplicate, the receiver can tell
    assert caplog.text.count("dedup=store_down") == 2
    assert "sent by another milter" in caplog.text and notifiers[2].sent == 0
