"""What stops libmilter from listening on a unix socket path, checked without binding: shared by
`check-config` (before anything starts) and the supervisor (just before it binds)."""

from __future__ import annotations

import os
import stat


def unix_socket_problem(spec: str) -> str | None:
    """Why a `unix:`/`local:` milter socket cannot be made at its path, or None (inet: always None)."""
    kind, _, path = spec.partition(":")
    if kind not in ("unix", "local"):
        return None
    directory = os.path.dirname(path) or "/"
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist; create it for the milter socket"
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        return f"{path} exists and is not a socket; libmilter will not replace it"
    return None
