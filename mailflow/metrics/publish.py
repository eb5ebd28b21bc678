"""This worker's counts, copied into its own file of the shared directory once a second (and
before each scrape it answers, and when it stops), for whichever worker answers a scrape.

The hot path counts in plain in-process prometheus-client values (a lock and an add: a fraction
of a microsecond). prometheus-client's own multiprocess mode would write an mmap file on every
count instead (about 2 µs each, some 15 µs per message here); copying the totals in a batch
keeps that off the hot path. The files are prometheus-client's own format (MmapedDict, one
`counter_PID.db` and one `histogram_PID.db` per worker), read by its MultiProcessCollector, which
sums the workers (histogram buckets are stored per bucket, not cumulated, as it expects).

The files' blocks are allocated before their mmap is written (_Allocated): a write to an mmap
page the filesystem has no block for (a full /tmp) is SIGBUS, which would kill the milter worker.
A full filesystem is an OSError instead, said in one line; the worker's counts go on in memory
and are published again once there is room.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict, mmap_key

log = logging.getLogger("mailflow")

PUBLISH_SECONDS = 1.0
_ENTRY_OVERHEAD = 40  # an entry beyond its key: its length, padding to 8 bytes, two doubles


def _allocate(fd: int, size: int) -> None:
    """Blocks for the file's first `size` bytes (ENOSPC when there is no room); a filesystem that
    cannot allocate ahead is left as it is."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


class _Allocated(MmapedDict):
    """prometheus-client's MmapedDict, its file's blocks allocated before the mmap is written
    there: at creation, and before a new key makes it grow (it doubles its capacity)."""

    def __init__(self, filename: str) -> None:
        with open(filename, "a+b") as file:
            _allocate(file.fileno(), os.fstat(file.fileno()).st_size or _INITIAL_MMAP_SIZE)
        super().__init__(filename)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> None:
        capacity = self._capacity
        while self._used + len(key.encode()) + _ENTRY_OVERHEAD > capacity:
            capacity *= 2
        if capacity > self._capacity:
            _allocate(self._f.fileno(), capacity)
        super()._init_value(key)  # type: ignore[no-untyped-call]


class Publisher:
    def __init__(self, registry: CollectorRegistry, directory: str) -> None:
        self.registry = registry
        pid = os.getpid()
        self._files: dict[str, _Allocated] = {}
        self._failing = False  # the last publish failed: said once, and once when one succeeds again
        try:
            for kind in ("counter", "histogram"):
                self._files[kind] = _Allocated(os.path.join(directory, f"{kind}_{pid}.db"))
        except OSError as exc:
            self._failing = True
            log.error("metrics: cannot create this worker's files in %s (%s): /metrics will not show its counts until a reload or restart",
                      directory, exc.strerror or exc)
        self._keys: dict[tuple[str, str, tuple[tuple[str, str], ...], str], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailflow-metrics-publish", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            self.publish()

    def _key(self, family: str, sample: str, labels: Iterable[tuple[str, str]], help_text: str) -> str:
        ident = (family, sample, tuple(labels), help_text)
        key = self._keys.get(ident)
        if key is None:
            names, values = zip(*ident[2]) if ident[2] else ((), ())
            key = self._keys[ident] = mmap_key(family, sample, list(names), list(values), help_text)
        return key

    def publish(self) -> None:
        """Write every value as it is now (a few dozen; nothing on the hot path waits for this)."""
        with self._lock:
            if not self._files:
                return
            try:
                self._write()
            except OSError as exc:  # a full filesystem: the next publish tries again
                if not self._failing:
                    log.error("metrics: cannot write this worker's counts (%s): /metrics shows them as last "
                              "written until there is room", exc.strerror or exc)
                self._failing = True
                return
            if self._failing:
                log.warning("metrics: this worker's counts written again")
                self._failing = False

    def _write(self) -> None:
        """Under the lock."""
        for family in self.registry.collect():
            out = self._files.get(family.type)
            if out is None:
                continue
            below: dict[tuple[tuple[str, str], ...], float] = {}  # a histogram's last cumulative bucket
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                if sample.name.endswith("_created") or sample.name.endswith("_count"):
                    continue  # the reader derives _count from the buckets
                value = sample.value
                if sample.name.endswith("_bucket"):
                    rest = tuple(item for item in labels if item[0] != "le")
                    value, below[rest] = value - below.get(rest, 0.0), value
                key = self._key(family.name, sample.name, labels, family.documentation)
                out.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """A last publish, then no more (the worker is about to exit)."""
        self._stop.set()
        self.publish()
        with self._lock:
            for out in self._files.values():
                out.close()  # type: ignore[no-untyped-call]
            self._files = {}
