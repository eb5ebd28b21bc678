"""Can this process give a file a group? The socket and the SQLite files are given the group the
config names, and only root, or a member of that group, may (chown to any other group is EPERM)."""

from __future__ import annotations

import grp
import os
import pwd


def group_problem(group: str) -> str | None:
    """Why this process cannot give files `group` (a name or a number), or None."""
    try:
        gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        return f"no group named {group!r} on this host"
    if os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups():
        return None
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    # os.getgroups() is what this process has: a usermod takes effect at the next start.
    return (f"{user} is neither root nor a member of group {group}, so it cannot give files that group: "
            f"add {user} to group {group} (usermod -aG {group} {user}, then restart it), "
            f"or SupplementaryGroups={group} in the systemd unit")
