"""The SQLite database as a file: checked before it is opened, created private, watched while open.

- `check_path` says what is wrong with a path in one line (missing directory, a directory, not a
  database, unreadable, read-only, the -wal/-shm of a deleted one) and creates nothing:
  `check-config` can call it.
- `create_private` makes the file 0600, or 0640 with the group the config names, whatever the
  umask. SQLite creates the -wal and -shm files with the database's own mode (and owner, when
  root opens it), so they follow.
- `owner_for` keeps root (an admin command) from leaving files the service cannot write: run as
  root, the database is created owned by the store directory's owner, and files root left
  behind are given back to it. SQLite itself, run as root, gives -wal and -shm the database's
  owner, so they follow the database.
- `identity` lets SqliteStore notice the file deleted or replaced under a running process.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import stat

from mailflow.groups import group_problem
from mailflow.store.base import StoreError

log = logging.getLogger("mailflow.store")

HEADER = b"SQLite format 3\x00"
SIDE_FILES = ("-wal", "-shm")


def file_mode(group: str) -> int:
    return 0o640 if group else 0o600


def group_id(group: str, path: str) -> int | None:
    """The gid to give the database at `path`; StoreError (naming the file) if this process may not."""
    if not group:
        return None
    if problem := group_problem(group):
        raise StoreError(f"sqlite: cannot give {path} group {group} (store.group): {problem}")
    return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid


def check_path(path: str) -> None:
    """Raise StoreError, in one line, unless `path` can be a database this process reads and writes."""
    parent = os.path.dirname(os.path.abspath(path))
    who = f"uid {os.geteuid()}"
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist (mailflow does not create it)"
        raise StoreError(f"sqlite: {parent} {what}")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"sqlite: cannot create {path}: {parent} is not writable for {who}") from None
        _no_stale_side_files(path)
        return
    except OSError as exc:
        raise StoreError(f"sqlite: cannot open {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(f"sqlite: {path} is a directory, not a database file")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"sqlite: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise StoreError(f"sqlite: cannot read {path}: permission denied for {who}")
    if not os.access(path, os.W_OK):
        raise StoreError(f"sqlite: {path} is read-only for {who}")
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(HEADER))
    except OSError as exc:
        raise StoreError(f"sqlite: cannot read {path}: {exc.strerror}") from None
    if header and header != HEADER:  # an empty file is an empty database to SQLite
        raise StoreError(f"sqlite: {path} is not a SQLite database")
    for suffix in SIDE_FILES:
        side = path + suffix
        if os.path.exists(side) and not os.access(side, os.R_OK | os.W_OK):
            raise StoreError(f"sqlite: {side} is not readable and writable for {who}")
        if not os.path.exists(side) and not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"sqlite: {parent} is not writable for {who}: SQLite keeps {os.path.basename(side)} there")


def owner_for(path: str) -> tuple[int, int] | None:
    """(uid, gid) the database's files must have when root opens them, else None (not root, or
    root's own directory). The directory's owner is the service user: it is the one set-up step
    the README asks of the admin (the Debian package makes /var/lib/mailflow mailflow's)."""
    if os.geteuid() != 0:
        return None
    info = os.stat(os.path.dirname(os.path.abspath(path)))
    return (info.st_uid, info.st_gid) if info.st_uid != 0 else None


def _no_stale_side_files(path: str) -> None:
    """A -wal or -shm without its database: the database was deleted (under a running mailflow,
    whose connections keep those files), or lost. A database created beside them would open onto
    the old one's pages ("disk I/O error"), so none is created."""
    stale = [os.path.basename(path + suffix) for suffix in SIDE_FILES if os.path.lexists(path + suffix)]
    if stale:
        raise StoreError(f"sqlite: {path} does not exist but {' and '.join(stale)} of a deleted database "
                         "are still beside it: put the database back, or stop every mailflow using it and "
                         f"remove {' and '.join(stale)} to start afresh")


def create_private(path: str, group: str) -> None:
    """Create the database file with its mode set (not left to the umask) and, run as root, owned
    by the store directory's owner; keep an existing one, tightening a mode wider than ours (an
    older mailflow made them 0644) and giving back to that owner what root made."""
    mode, gid, owner = file_mode(group), group_id(group, path), owner_for(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    except FileExistsError:
        for name in (path, *(path + suffix for suffix in SIDE_FILES)):
            _tighten(name, mode, gid, owner)
        return
    except OSError as exc:
        raise StoreError(f"sqlite: cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner[0], owner[1] if gid is None else gid)
        elif gid is not None:
            os.fchown(fd, -1, gid)
    except OSError as exc:  # no empty file left behind for the next start to trip over
        os.unlink(path)
        raise StoreError(f"sqlite: cannot set the mode {mode:04o} and group of {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _tighten(name: str, mode: int, gid: int | None, owner: tuple[int, int] | None) -> None:
    # Through a descriptor opened without following links, and only a file with one link: root
    # must not chmod/chown whatever a link the service user planted points to (/etc/shadow).
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        why = "it is a symbolic link (left alone)" if exc.errno == errno.ELOOP else exc.strerror
        log.warning("sqlite: cannot set the mode of %s to %04o: %s", name, mode, why)
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return
        if info.st_mode & 0o777 & ~mode:
            os.fchmod(fd, mode)
            log.warning("sqlite: %s was mode %04o, now %04o", name, info.st_mode & 0o777, mode)
        if owner is not None and info.st_uid == 0:  # root made it: the service could not write it
            os.fchown(fd, owner[0], owner[1] if gid is None else gid)
            log.warning("sqlite: %s was owned by root, now by uid %d (the store directory's owner)", name, owner[0])
        elif gid is not None and info.st_gid != gid:
            os.fchown(fd, -1, gid)
    except OSError as exc:
        log.warning("sqlite: cannot set the mode or owner of %s: %s", name, exc.strerror)
    finally:
        os.close(fd)


def identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path` now, or None when there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


FULL_BELOW = 1 << 20  # bytes free: less is a full filesystem for SQLite (its -shm alone is 32 KiB)


def io_error_cause(text: str, path: str) -> str:
    """What SQLite's "disk I/O error" hides when the database's filesystem is full (opening the
    WAL's -shm file fails so): the cause an admin can act on, or ""."""
    if "disk I/O error" not in text:
        return ""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        usage = os.statvfs(directory)
    except OSError:
        return ""
    if usage.f_bavail * usage.f_frsize >= FULL_BELOW:
        return ""
    return f" (no space left on the filesystem of {directory})"
