"""`mailflow feedback …`: the delivery feedback commands (`follow`: the MTA's log)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import click

from mailflow.config import Config
from mailflow.store.base import Store, StoreError


def register(cli: click.Group, load: Callable[[str | None], Config],
             store_of: Callable[[Config], AbstractContextManager[Store]],
             config_option: Callable[[Callable[..., None]], Callable[..., None]]) -> click.Group:
    """Attach the `feedback` group to the main CLI; returns it (more subcommands join it)."""

    @cli.group()
    def feedback() -> None:
        """Delivery feedback: what the MTA's log and recipients' complaints say of each account."""

    @feedback.command("follow")
    @config_option
    @click.option("--log", "log_file", metavar="FILE", help="The MTA's log (default: [feedback] log).")
    @click.option("--once", is_flag=True,
                  help="Read to the end, apply, run the ladder, exit (cron, tests); a store fault exits 1.")
    @click.option("--from-start", is_flag=True,
                  help="With no stored position: read the file from its start (default: its end).")
    def follow(config_file: str | None, log_file: str | None, once: bool, from_start: bool) -> None:
        """Follow the MTA's log (rotation by rename or copytruncate) into per-account delivery
        counts. The position is kept in the store: a restart neither skips nor counts twice.
        SIGTERM applies the batch read so far and exits 0."""
        from mailflow.feedback.apply import off_the_hot_path
        from mailflow.feedback.follow import Follower, FollowError
        from mailflow.feedback.logfile import LogFile
        from mailflow.feedback.receivers import ReceiverWatch
        from mailflow.log import setup_logging
        from mailflow.metrics.feedback import served_feedback_metrics
        from mailflow.metrics.receivers import ReceiverCollector

        config = load(config_file)
        path = os.path.abspath(log_file or config.feedback.log)
        try:
            LogFile.open(path).close()
        except OSError as exc:
            raise click.UsageError(f"{'--log' if log_file else 'feedback.log'}: {path}: {exc.strerror}") from None
        setup_logging(config.log)
        stop = threading.Event()
        with store_of(off_the_hot_path(config)) as store:
            watch = ReceiverWatch(config, store)  # receivers refusing the provider's IPs: alerts
            follower = Follower(config, store, path, from_start=from_start, stop=stop,
                                observers=[watch.observe], after_batch=watch.after_batch)
            try:
                if once:
                    follower.run_once()
                else:
                    with served_feedback_metrics(config.metrics.feedback_listen, follower,
                                                 [ReceiverCollector(watch)]), _stopped_by_signals(stop):
                        follower.run()
            except StoreError as exc:  # --once only: `follow` keeps its batch and retries
                raise click.ClickException(f"store: {exc} (nothing applied twice: the next run reads "
                                           "this batch again)") from None
            except FollowError as exc:
                raise click.ClickException(str(exc)) from None
            finally:
                follower.close()

    return feedback


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop`: the follower applies what it read, then returns."""
    signals = (signal.SIGTERM, signal.SIGINT)
    before = [signal.signal(s, lambda signum, frame: stop.set()) for s in signals]
    try:
        yield
    finally:
        for s, handler in zip(signals, before):
            signal.signal(s, handler)
