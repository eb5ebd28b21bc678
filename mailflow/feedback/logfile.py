"""A log file followed the way syslog writes it: bytes read at explicit offsets, lines split here,
rotation by rename and by copytruncate recognised.

A position names content, not a path: (inode, the file's first bytes, a byte offset at a line
boundary). The first bytes tell a file truncated and written again (copytruncate; an inode reused
after a rename and a delete) from the one the position was taken in, and find the copy of a
truncated file (mail.log.1) among the path's siblings.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_LINE = 64 * 1024  # a longer line is skipped to its newline (and counted): no syslog line is this long
CHUNK = 64 * 1024
HEAD = 64  # bytes that identify a file's content: a syslog line's stamp and host, at least


@dataclass(frozen=True)
class Mark:
    """Where a stretch of log is: the file (inode, first bytes) and a line boundary in it."""

    inode: int
    head: bytes
    offset: int


class LogFile:
    """One open file read from `offset`: complete lines only, a partial last line kept until its
    newline arrives, a line over MAX_LINE skipped to its newline."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.inode = os.fstat(fd).st_ino
        self.skipped = 0  # overlong lines skipped
        self.seek(offset)

    @classmethod
    def open(cls, path: str | Path, offset: int = 0) -> LogFile:
        """A regular file only: a FIFO or a device would block or never end (O_NONBLOCK: a FIFO
        does not hang the open)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return cls(fd, offset)

    def seek(self, offset: int) -> None:
        self.offset = offset  # end of the last line handed out (or skipped): always a line boundary
        self.buf = bytearray()  # the bytes read past offset + dropped
        self.dropped = 0  # bytes of an overlong line already thrown away
        # The file's first bytes as read (or, from a position, as found): what tells this content
        # from what a copytruncate or a reused inode puts at the same path.
        self.ident = os.pread(self.fd, HEAD, 0) if offset else b""

    def close(self) -> None:
        os.close(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def mark(self) -> Mark:
        return Mark(self.inode, self.ident[:self.offset], self.offset)

    def holds(self, head: bytes | None = None) -> bool:
        """Still the content whose first bytes were `head` (default: those read): False once
        truncated or written again from the start."""
        head = self.ident if head is None else head
        return os.pread(self.fd, len(head), 0) == head

    def shrunk(self) -> bool:
        """Truncated (copytruncate) since it was read: shorter than what was read, or other bytes
        at its start."""
        return self.size() < self.offset + self.dropped + len(self.buf) or not self.holds()

    def read_lines(self, limit: int, stop: int | None = None, final: bool = False) -> list[str]:
        """Up to `limit` complete lines from the offset (not past `stop`). `final`: the file will
        not grow (rotated away): a last line without its newline is a line too."""
        lines: list[str] = []
        while len(lines) < limit:
            newline = self.buf.find(b"\n")
            if newline >= 0:
                end = self.offset + self.dropped + newline + 1
                if stop is not None and end > stop:
                    break
                if self.dropped:  # the newline that ends an overlong line
                    self.dropped = 0
                else:
                    lines.append(self.buf[:newline].decode("utf-8", errors="replace"))
                del self.buf[:newline + 1]
                self.offset = end
                continue
            if len(self.buf) > MAX_LINE:  # no newline in sight: drop what there is, keep dropping
                self.skipped += 0 if self.dropped else 1
                self.dropped += len(self.buf)
                self.buf.clear()
            at = self.offset + self.dropped + len(self.buf)
            want = CHUNK if stop is None else min(CHUNK, stop - at)
            chunk = os.pread(self.fd, want, at) if want > 0 else b""
            if not chunk:
                if final and self.buf and not self.dropped and (stop is None or at <= stop):
                    lines.append(self.buf.decode("utf-8", errors="replace"))
                    self.offset = at
                    self.buf.clear()
                elif final and self.dropped:
                    self.offset, self.dropped = at, 0
                    self.buf.clear()
                break
            if at <= len(self.ident) < HEAD:
                self.ident += chunk[len(self.ident) - at:HEAD - at]
            self.buf += chunk
        return lines

    def lines_before(self, budget: int) -> list[str]:
        """The complete lines in the `budget` bytes before the offset (the first, likely cut, not
        among them): what came just before, to learn queue ids from without counting them."""
        start = max(0, self.offset - budget)
        earlier = LogFile(os.dup(self.fd), start)
        try:
            if start > 0:
                earlier.read_lines(1, stop=self.offset)  # the cut line
            return earlier.read_lines(1 << 30, stop=self.offset)
        finally:
            earlier.close()


def line_start(fd: int, end: int) -> int:
    """The last line boundary at or before `end` (a file may end in a line being written)."""
    at = end
    while at > 0 and end - at < MAX_LINE:
        start = max(0, at - CHUNK, end - MAX_LINE)
        chunk = os.pread(fd, at - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        at = start
    return 0 if at == 0 else end  # no newline in the last MAX_LINE bytes: an overlong line, skipped from the end


def find(path: str, mark: Mark) -> tuple[LogFile, bool] | None:
    """The file that holds `mark`'s content up to its offset: the path itself (same inode, same
    first bytes), else a sibling that rotation made of it (mail.log.1 after a rename or a
    copytruncate, mail.log-20260101: same first bytes), the same inode first. None when it is
    gone (deleted, compressed). With the file: whether it is the path (still written to)."""
    base = os.path.basename(path)
    candidates = [path]
    if mark.head:  # an empty head (offset 0) names no content: no sibling can be told to hold it
        try:
            with os.scandir(os.path.dirname(path) or ".") as entries:
                siblings = [e for e in entries if e.name != base and e.name.startswith(base) and e.is_file()]
        except OSError:
            siblings = []
        siblings.sort(key=lambda e: (_inode(e) != mark.inode, e.name))
        candidates += [e.path for e in siblings[:64]]  # bounded: a directory of rotated logs
    for candidate in candidates:
        try:
            opened = LogFile.open(candidate, mark.offset)
        except OSError:
            continue
        try:
            if (candidate != path or opened.inode == mark.inode) and opened.size() >= mark.offset \
                    and opened.holds(mark.head):
                return opened, candidate == path
        except OSError:
            pass
        opened.close()
    return None


def _inode(entry: os.DirEntry[str]) -> int:
    try:
        return entry.inode()
    except OSError:
        return -1
