"""`mailflow keygen [FILE]`: a new suppression key, written so that `read_key_file` accepts it.

The key is 32 random bytes from `secrets`, as 64 lowercase hex characters and a newline (text, so
it survives a secret store, an environment variable and a copy-paste alike). A file is written
under a temporary name in the same directory, made 0600 (0640 with `--group`) by fchmod whatever
the umask, synced, then linked (or, with --force, renamed) into place: a reader never sees a
partial key, and without --force an existing key is never replaced, even by a racing writer.
"""

from __future__ import annotations

import errno
import grp
import os
import secrets
import sys

import click

from mailflow.suppression.keys import read_key_file

KEY_BYTES = 32


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


class Refused(click.ClickException):
    """A refusal an admin fixes (a file, a group, the store's state): one line and exit 2."""

    exit_code = 2


def write_key_file(path: str, key: str, group: str | None = None, force: bool = False) -> None:
    """Write `key` to `path` atomically: 0600, or 0640 root:GROUP. Refused says why not."""
    gid = -1
    if group is not None:
        if os.geteuid() != 0:
            raise Refused(f"--group {group}: a key its group may read must be owned by root (mailflow refuses "
                              "group read on a key another user owns); run as root, or leave out --group (0600)")
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise Refused(f"--group {group}: no such group") from None
    if os.path.isdir(path):
        raise Refused(f"{path} is a directory; name the key file, like {os.path.join(path, 'suppression.key')}")
    if os.path.lexists(path) and not force:
        raise Refused(f"{path} exists; keeping it (a new key makes every list read \"not suppressed\": see "
                          "`mailflow suppress rekey`); --force replaces it")
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise Refused(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask; widened to 0640 only after the chown
            if gid != -1:
                os.fchown(fd, 0, gid)
                os.fchmod(fd, 0o640)
            os.write(fd, f"{key}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        _put_in_place(temporary, path, force)
    except OSError as exc:
        raise Refused(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    _sync_directory(directory)
    read_key_file(path)  # the file must be one `run` accepts; a KeyFileError here is a bug, reported as such


def _put_in_place(temporary: str, path: str, force: bool) -> None:
    if force:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails if path exists: no check-then-rename race
    except FileExistsError:
        raise Refused(f"{path} exists (created meanwhile); keeping it; --force replaces it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(path):  # a file system without hard links: check, then rename
            raise Refused(f"{path} exists; keeping it; --force replaces it") from None
        os.replace(temporary, path)


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--group", metavar="NAME", default=None,
                  help="Make the file 0640 root:NAME, for a service user in that group (needs root).")
    @click.option("--force", is_flag=True, help="Replace an existing key file (its lists then read \"not suppressed\").")
    @click.argument("path", metavar="[FILE]", required=False)
    def keygen(group: str | None, force: bool, path: str | None) -> None:
        """Make a new key (the suppression key, the X-Mailflow-ID key): to FILE (0600, or 0640
        root:GROUP), else to stdout."""
        key = new_key()
        if path is None:
            if group or force:
                raise click.UsageError("--group and --force apply to a FILE")
            sys.stdout.write(f"{key}\n")
            return
        write_key_file(path, key, group, force)
        click.echo(f"{path}: new key written (mode {'0640 root:' + group if group else '0600'}); back it up "
                   "with the config (a suppression key is the only way to read the lists)", err=True)
