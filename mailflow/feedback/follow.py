"""`mailflow feedback follow`: the MTA's log, line by line, into batches for apply_batch, exactly
once across restarts.

The position lives in the store (state_get/state_swap) under `feedback:position:HOST:PATH`, and
every batch is written ahead: (a) "pending: file, start, end, seq", (b) apply_batch with that seq
(an account that already took it from this source skips it), (c) "done: file, end, seq". A start
that finds a pending record reads exactly start..end again as that seq, so a kill -9 at any
moment neither skips nor counts twice. A first start (no position) begins at the end of the file:
a reinstall must not count history again (`from_start` reads it all).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from mailflow.config import Config
from mailflow.feedback.apply import apply_batch
from mailflow.feedback.logfile import LogFile, Mark, find, line_start
from mailflow.feedback.model import EVIDENCE_MAX, FeedbackBatch
from mailflow.feedback.tally import Observer, Tally
from mailflow.log import log, log_decision
from mailflow.model import shown
from mailflow.reputation.evaluate import evaluate
from mailflow.store.base import Store, StoreError

POLL_SECONDS = 0.25  # how often a caught-up follower looks for new lines
FLUSH_SECONDS = 1.0  # a batch is applied at least this often while lines come...
BATCH_LINES = 20_000  # ...and at this many lines (one batch: one script per account it names; a busy log
#                      fills a batch in under a second, and fewer, bigger batches name each account once)
EVALUATE_SECONDS = 60  # the ladder for every account with a standing: moves down need no mail
JUDGE_SECONDS = 10  # the ladder for the accounts batches touched since (not per batch: it reads the store)
SUMMARY_SECONDS = 60
WARM_BYTES = 4 << 20  # read again (counting nothing) at start: which account each queue id is
BACKOFF = (1.0, 30.0)  # store down: retry the kept batch after 1 s, doubling up to 30 s

# Hooks for what else learns from the log (receivers' blocks per outbound IP). An observer
# (tally.Observer) sees each delivery attempt and the account charged, never the lines read only
# to warm the tally up; the after-batch step runs once the batch's counts are applied, before it
# is marked done. A batch read again after a restart is observed again and comes with the same
# (source, seq): whatever the after-batch step stores must be keyed by them, as add_feedback is.
AfterBatch = Callable[[FeedbackBatch, str, int], None]  # (batch, source, seq)


class FollowError(Exception):
    """The follower cannot go on: another one moved the position of the same file."""


@dataclass(frozen=True)
class Position:
    """What the store holds of one followed file: "pending" (a batch being applied) or "done"."""

    state: str
    inode: int
    head: bytes  # the file's first bytes (logfile.Mark): which content the offsets are in
    start: int
    end: int
    seq: int

    def value(self) -> str:
        return json.dumps({"v": 1, "state": self.state, "inode": self.inode, "head": self.head.hex(),
                           "start": self.start, "end": self.end, "seq": self.seq}, separators=(",", ":"))

    @classmethod
    def from_value(cls, text: str) -> Position:
        """ValueError unless `text` is a position this version wrote."""
        try:
            d = json.loads(text)
            position = cls(str(d["state"]), int(d["inode"]), bytes.fromhex(d["head"]), int(d["start"]),
                           int(d["end"]), int(d["seq"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a follower position: {shown(text, 80)}") from exc
        if d.get("v") != 1 or position.state not in ("pending", "done") or not 0 <= position.start <= position.end:
            raise ValueError(f"not a follower position: {shown(text, 80)}")
        return position

    def mark(self) -> Mark:
        return Mark(self.inode, self.head, self.end)


def position_key(path: str, host: str | None = None) -> str:
    return f"feedback:position:{host or socket.gethostname()}:{os.path.abspath(path)}"


@dataclass
class _Held:
    """A batch taken from the tally and not yet done: kept (store down) until it is."""

    batch: FeedbackBatch
    pending: Position
    applied: bool = False


class Follower:
    """One log file followed into the store. `run_once` (read to the end) and `run` (until `stop`
    is set) drive `poll`; tests may drive `start`, `poll` and `flush` themselves."""

    def __init__(self, config: Config, store: Store, path: str, *, observers: Sequence[Observer] = (),
                 after_batch: AfterBatch | None = None, from_start: bool = False, host: str | None = None,
                 clock: Callable[[], float] = time.time, ticks: Callable[[], float] = time.monotonic,
                 stop: threading.Event | None = None) -> None:
        self.config, self.store, self.path = config, store, os.path.abspath(path)
        self.key = position_key(path, host)
        self.observers, self.after_batch, self.from_start = tuple(observers), after_batch, from_start
        self.clock, self.ticks = clock, ticks
        self.stop = stop or threading.Event()
        self.tally = self._new_tally()
        self.file: LogFile | None = None
        self.final = False  # the file is rotated away: read it to its end, then the path from 0
        self.stored: str | None = None  # the position value last written (what a swap expects)
        self.seq = 0
        self.batch_start = 0  # offset in `file` where the batch being gathered began
        self.batch_lines = 0
        self.batch_began = 0.0
        self.held: _Held | None = None
        self.batches = self.overlong = 0  # since start (overlong lines: of the files closed)
        self.warm_stats: dict[str, int] = {}  # the tally's stats of lines read only to warm it
        # For /metrics (metrics/feedback.py), since this object was made: a start afresh keeps them.
        self.earlier: dict[str, int] = {}  # counted() of the tallies a start afresh replaced
        self.seen: dict[str, int] = {}  # counted() as of the last poll: read by the metrics thread
        self.applied: dict[str, int] = {}  # count field -> outcomes applied to the store
        self.store_errors = 0
        self.started_at, self.last_batch = clock(), 0.0
        self.dirty: set[str] = set()  # accounts applied batches touched, not judged yet
        self.evidence: dict[str, list[str]] = {}  # their newest evidence lines

    # -- start: the position in the store, the pending batch ---------------------------------

    def start(self) -> None:
        """Find where to read from; a pending batch is read again and kept for the first poll to
        apply. StoreError passes (start again: it begins afresh); OSError: the path cannot be read."""
        self._close()
        self.earlier = self.counted()
        self.tally, self.held, self.warm_stats = self._new_tally(), None, {}
        self.stored = self.store.state_get(self.key)
        position: Position | None = None
        if self.stored is not None:
            try:
                position = Position.from_value(self.stored)
            except ValueError as exc:
                log.warning("feedback: %s holds %s; starting as if it held nothing", self.key, exc)
        if position is None:
            self._first_start()
            return
        self.seq = position.seq
        if self.from_start:  # an admin's retry after a first start at the end: say why nothing is re-read
            log.warning("feedback: --from-start ignored: %s holds a position (offset %d, batch %d); it applies "
                        "only to a first start", self.key, position.end, position.seq)
        found = find(self.path, position.mark())
        if found is None:
            if position.end:  # at offset 0 of a file rotated away unread, nothing was there to lose
                self._lost(f"{position.state} position (inode {position.inode}, offset {position.end}, batch "
                           f"{position.seq}) is in a file no longer there")
            self._open_path(0)
            if position.state == "pending":  # nothing to read again: the first poll marks it done
                self.held = _Held(FeedbackBatch(), position)
            return
        self.file, live = found
        self.final = not live
        if position.state == "pending":  # read start..end again as the same seq; takers skip it
            self.file.seek(position.start)
            self._warm()
            lines = self.file.read_lines(1 << 30, stop=position.end, final=True)
            self._feed(lines)
            self.held = _Held(self.tally.take(), position)
            log.info("feedback: batch %d (%s bytes %d-%d) read again after a stop", position.seq, self.path,
                     position.start, position.end)
        else:
            self._warm()
        self._begin_batch()

    def _new_tally(self) -> Tally:
        tally = Tally(self.config)
        tally.observers = list(self.observers)
        return tally

    def _first_start(self) -> None:
        # The accounts still hold the last seq they took from this source (their guards outlive a
        # position deleted by hand, evicted or unreadable): a seq restarted at 1 would be "taken
        # already" for days. Milliseconds of the wall clock are above any seq used before (one
        # per batch, far fewer than 1,000 batches a second).
        self.seq = max(self.seq, int(time.time() * 1000))
        self.file = LogFile.open(self.path)
        if not self.from_start:  # history already counted (a reinstall) or not ours to judge
            self.file.seek(line_start(self.file.fd, self.file.size()))
            self._warm()
        mark = self.file.mark()
        self._swap(Position("done", mark.inode, mark.head, mark.offset, mark.offset, self.seq).value())
        log.info("feedback: first start on %s: reading from offset %d%s", self.path, mark.offset,
                 "" if self.from_start else " (its end: earlier lines are not counted; --from-start reads them)")
        self._begin_batch()

    def _open_path(self, offset: int) -> None:
        self._close()
        self.file, self.final = LogFile.open(self.path, offset), False
        self._begin_batch()

    def _close(self) -> None:
        if self.file is not None:
            self.overlong += self.file.skipped
            self.file.close()
            self.file = None

    def _lost(self, what: str) -> None:
        log.warning("feedback: %s: %s; reading %s from its start (lines in between are not counted)",
                    self.key, what, self.path)

    def _warm(self) -> None:
        """The lines before the offset through the tally, counting nothing: a delivery after the
        position is charged to the account its submission line (before it) named."""
        assert self.file is not None
        self.tally.observers = []
        before = asdict(self.tally.stats)
        for line in self.file.lines_before(WARM_BYTES):
            self.tally.add_line(line)
        self.tally.take()
        for key, n in asdict(self.tally.stats).items():  # the summary counts what was read to count
            if key != "waiting":  # a level, not a total
                self.warm_stats[key] = self.warm_stats.get(key, 0) + n - before.get(key, 0)
        self.tally.observers = list(self.observers)

    # -- reading ---------------------------------------------------------------------------

    def poll(self) -> bool:
        """Read what there is (at most a batch), apply a batch that is due; True if it read lines
        or moved to another file (more may be there now). A kept batch (store down) is retried
        first and nothing is read until it is done."""
        assert self.file is not None
        if self.held is not None:
            self._commit()
        if not self.final and self.file.shrunk():  # before reading: what is past the offset is not ours
            return self._truncated()
        room = BATCH_LINES - self.batch_lines
        lines = self.file.read_lines(room, final=self.final)
        self._feed(lines)
        if self.batch_lines >= BATCH_LINES or (self._gathered() and self.ticks() - self.batch_began >= FLUSH_SECONDS):
            self.flush()
        if len(lines) < room:  # at the end of the file: has it been rotated?
            return self._rotation() or bool(lines)
        return True

    def _feed(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.tally.add_line(line)  # which calls the observers
            self.batch_lines += 1

    def _gathered(self) -> bool:
        return self.file is not None and self.file.offset > self.batch_start

    def _begin_batch(self) -> None:
        assert self.file is not None
        self.batch_start, self.batch_lines, self.batch_began = self.file.offset, 0, self.ticks()

    def _truncated(self) -> bool:
        """Rotated by copytruncate: the file lost what was read. Its copy, found by its first
        bytes, is read to its end first, then the path from 0."""
        assert self.file is not None
        mark = self.file.mark()
        self.flush()
        if self.held is not None:
            return False
        found = find(self.path, mark)
        if found is None or found[1]:
            log.info("feedback: %s was truncated (copytruncate), no copy of it found: lines written "
                     "after offset %d before the truncation are not counted", self.path, mark.offset)
            self._open_path(0)
        else:
            self._close()
            self.file, self.final = found[0], True
            self._begin_batch()
        return True

    def _rotation(self) -> bool:
        """Rotated by rename: the path is another file, with lines in it (the writer moved on; the
        old one is read to its end first, then the new one from 0). True when it moved on."""
        assert self.file is not None
        if self.final:  # the rotated-away file is read to its end
            self.flush()
            if self.held is None:
                self._open_path(0)
            return self.held is None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed and not created yet: the old one may still grow
        if now.st_ino != self.file.inode and now.st_size > 0:
            self.final = True  # read what the writer added before moving on; then the new file
        return self.final

    # -- applying: write-ahead ---------------------------------------------------------------

    def flush(self) -> None:
        """Apply the batch gathered so far (StoreError passes; the batch is kept)."""
        if self.held is None and self._gathered():
            assert self.file is not None
            mark = self.file.mark()
            self.seq += 1
            self.held = _Held(self.tally.take(), Position("pending", mark.inode, mark.head, self.batch_start,
                                                          mark.offset, self.seq))
            self._begin_batch()
        if self.held is not None:
            self._commit()

    def _commit(self) -> None:
        held = self.held
        assert held is not None
        pending = held.pending
        if not held.applied:
            self._swap(pending.value())
            apply_batch(self.config, self.store, held.batch, self.key, pending.seq, self.clock(), judge=False)
            self.dirty.update(held.batch.accounts())
            for account, lines in held.batch.evidence.items():  # the newest few, as a batch keeps them
                self.evidence[account] = (self.evidence.get(account, []) + lines)[-EVIDENCE_MAX:]
            if self.after_batch is not None:
                self.after_batch(held.batch, self.key, pending.seq)
            held.applied = True
            for (_, _, name), n in held.batch.counts.items():
                self.applied[name] = self.applied.get(name, 0) + n
        self._swap(Position("done", pending.inode, pending.head, pending.end, pending.end, pending.seq).value())
        self.held = None
        self.batches += 1
        self.last_batch = self.clock()

    def _swap(self, new: str) -> None:
        if self.stored == new or self.store.state_swap(self.key, self.stored, new):
            self.stored = new
            return
        current = self.store.state_get(self.key)
        if current == new:  # an earlier try wrote it; its reply was lost
            self.stored = new
            return
        raise FollowError(f"another follower moved the position of {self.path} on this host "
                          f"({self.key}): run one follower per log file")

    # -- the loops -------------------------------------------------------------------------

    def run_once(self) -> None:
        """Read to the end (rotated-away files first), apply, run the ladder, return."""
        self.start()
        while self.poll():
            pass
        self.flush()
        self.evaluate()
        self.summary()

    def run(self) -> None:
        """Follow until `stop` is set; then apply what was read and return. A store fault keeps
        the batch and retries it (1 s doubling to 30 s): no line is lost."""
        delay = BACKOFF[0]
        due = {"evaluate": self.ticks() + EVALUATE_SECONDS, "judge": self.ticks() + JUDGE_SECONDS,
               "summary": self.ticks() + SUMMARY_SECONDS}
        started = False
        while not self.stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                    if self.file is not None:  # the unit's journal says it runs before the first summary
                        log.info("feedback: following %s from offset %d (batch %d; a summary every %d s)",
                                 self.path, self.file.offset, self.seq, SUMMARY_SECONDS)
                read = self.poll()
                delay = BACKOFF[0]
            except StoreError as exc:
                self.store_errors += 1
                log.warning("feedback: store: %s; %s kept, retried in %.0f s", shown(str(exc), 300),
                            f"batch {self.held.pending.seq}" if self.held else "the position", delay)
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            for what, every in (("evaluate", EVALUATE_SECONDS), ("judge", JUDGE_SECONDS)):
                if self.ticks() >= due[what]:
                    due[what] = self.ticks() + every
                    try:
                        self.evaluate(sweep=what == "evaluate")
                    except StoreError as exc:  # the next round will do it
                        self.store_errors += 1
                        log.warning("feedback: store: %s; the ladder runs again in %d s", shown(str(exc), 300), every)
            if self.ticks() >= due["summary"]:
                due["summary"] = self.ticks() + SUMMARY_SECONDS
                self.summary()
            self.seen = self.counted()
            if not read:
                self.stop.wait(POLL_SECONDS)
        if started:
            try:
                self.flush()
                self.evaluate(sweep=False)  # the accounts touched since the last round: judged before we go
            except StoreError as exc:  # the position still says where this batch began
                self.store_errors += 1
                log.warning("feedback: store: %s; stopping with a batch not applied (the next start reads it "
                            "again) or not judged (its accounts are, when next touched)", shown(str(exc), 300))
        self.summary()

    def evaluate(self, sweep: bool = True) -> None:
        """The ladder for the accounts batches touched since it last ran and, with `sweep`, every
        account with a standing (moves down come with time alone). StoreError passes: they wait."""
        accounts = self.dirty | (set(self.store.reputation_states()) if sweep else set())
        if accounts:
            evaluate(self.config, self.store, sorted(accounts), self.clock(), self.evidence)
        self.dirty, self.evidence = set(), {}

    def close(self) -> None:
        self._close()

    def summary(self) -> None:
        """One line: totals since start (the parser's own among them)."""
        overlong = self.overlong + (self.file.skipped if self.file is not None else 0)
        log_decision(logging.INFO, event="feedback_summary", file=self.path, seq=self.seq,
                     offset=self.file.offset if self.file is not None else None, **self.counted(),
                     batches=self.batches, overlong=overlong)

    def counted(self) -> dict[str, int]:
        """The tally's stats since this object was made, lines read only to warm it left out
        (`waiting` is a level: the current tally's)."""
        now = asdict(self.tally.stats)
        return {k: n if k == "waiting" else self.earlier.get(k, 0) + n - self.warm_stats.get(k, 0)
                for k, n in now.items()}
