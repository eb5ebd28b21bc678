"""A null pymilter that overrides every callback and does nothing: the framework's own cost.

Run: python -m bench.null_milter PORT
"""

from __future__ import annotations

import sys

import Milter


class Null(Milter.Base):
    def connect(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def hello(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def envfrom(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def envrcpt(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def data(self) -> int: return Milter.CONTINUE  # noqa: E704
    def header(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def eoh(self) -> int: return Milter.CONTINUE  # noqa: E704
    def body(self, *args: object) -> int: return Milter.CONTINUE  # noqa: E704
    def eom(self) -> int: return Milter.CONTINUE  # noqa: E704
    def abort(self) -> int: return Milter.CONTINUE  # noqa: E704
    def close(self) -> int: return Milter.CONTINUE  # noqa: E704


def main() -> None:
    Milter.factory = Null
    Milter.set_flags(0)
    Milter.runmilter("null", f"inet:{sys.argv[1]}@127.0.0.1", timeout=30)


if __name__ == "__main__":
    main()
