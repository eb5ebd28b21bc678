"""Store URLs: the schemes mailflow knows, and hiding the password they may carry."""

from urllib.parse import urlsplit, urlunsplit

STORE_SCHEMES = ("sqlite", "redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """Logs and screens must not show a store password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
