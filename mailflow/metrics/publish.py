"""This worker's counts, copied into its own file of the shared directory once a second (and
before each scrape it answers, and when it stops), for whichever worker answers a scrape.

The hot path counts in plain in-process prometheus-client values (a lock and an add: a fraction
of a microsecond). prometheus-client's own multiprocess mode would write an mmap file on every
count instead (about 2 µs each, some 15 µs per message here); copying the totals in a batch
keeps that off the hot path. The files are prometheus-client's own format (MmapedDict, one
`counter_PID.db` and one `histogram_PID.db` per worker), read by its MultiProcessCollector, which
sums the workers (histogram buckets are stored per bucket, not cumulated, as it expects).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key

PUBLISH_SECONDS = 1.0


class Publisher:
    def __init__(self, registry: CollectorRegistry, directory: str) -> None:
        self.registry = registry
        pid = os.getpid()
        self._files = {kind: MmapedDict(os.path.join(directory, f"{kind}_{pid}.db"))  # type: ignore[no-untyped-call]
                       for kind in ("counter", "histogram")}
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
            if self._stop.is_set() and not self._files:
                return
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
