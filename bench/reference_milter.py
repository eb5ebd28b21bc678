"""Reference minimal policy milters: the floor for any pymilter policy milter doing this job.

Both take the account from {auth_authen} (else the envelope sender's domain), count recipients,
collect From:, and make one Redis EVALSHA of a token-bucket script at end of message.

* `lean` (the reference every ratio is reported against; the default): the true floor. It
  answers nothing before end of message: MAIL, RCPT and headers are no-reply (P_NR_* flags via
  @Milter.noreply), CONNECT, HELO, DATA, EOH, body and unknown are negotiated away, its own
  negotiate skips pymilter's per-connection macro-list lookups, and it takes the envelope and
  header values as bytes (as mailflow's adapter does).
* `mail` (results: "reference-mail"): the earlier reference. It answers MAIL, and goes through
  pymilter's default negotiate and decoding.

Run: python -m bench.reference_milter PORT REDIS_URL [lean|mail]
"""

from __future__ import annotations

import sys
from typing import Any

import Milter
import redis

BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'l', 't')
local level = 0
if v[1] then level = math.max(0, tonumber(v[1]) - (now - tonumber(v[2])) * rate) end
if level + cost > cap then return 0 end
redis.call('HSET', KEYS[1], 'l', level + cost, 't', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((level + cost) / rate * 1000))
return 1
"""

script: Any = None  # the registered BUCKET script, set by main()


def account_of(login: str | None, sender: str) -> str:
    return login or sender.strip("<>").rpartition("@")[2].lower()


def charge(milter: Any, account: str, recipients: int) -> int:
    """End of message, the one answer of either variant: one EVALSHA."""
    if script(keys=[f"ref:{{{account}}}"], args=[10_000_000, 10_000_000 / 3600, recipients]):
        return Milter.CONTINUE
    milter.setreply("451", "4.7.1", "rate limit")
    return Milter.TEMPFAIL


class Reference(Milter.Base):
    """The lean floor."""

    def __init__(self) -> None:
        self.account = ""
        self.recipients = 0
        self.author = ""

    def negotiate(self, opts: list[int]) -> int:
        # Milter.Base.negotiate looks up @symlist macro lists on every callback, per connection.
        self._actions = opts[0]
        opts[1] = self._protocol = opts[1] & ~self.protocol_mask()
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    # The bytes callbacks: pymilter's defaults look up a decoding strategy on every call.
    def envfrom_bytes(self, sender: bytes, *esmtp: bytes) -> int:
        return self.envfrom(sender.decode("utf-8", "surrogateescape"))

    def envrcpt_bytes(self, recipient: bytes, *esmtp: bytes) -> int:
        return self.envrcpt(recipient.decode("utf-8", "surrogateescape"))

    def header_bytes(self, name: str, value: bytes) -> int:
        return self.header(name, value.decode("utf-8", "surrogateescape"))

    @Milter.noreply
    def envfrom(self, sender: str, *esmtp: str) -> int:
        self.account = account_of(self._ctx.getsymval("{auth_authen}"), sender)
        self.recipients = 0
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *esmtp: str) -> int:
        self.recipients += 1
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        if name.lower() == "from":
            self.author = value
        return Milter.CONTINUE

    def eom(self) -> int:
        return charge(self, self.account, self.recipients)


class ReferenceMail(Milter.Base):
    """The earlier reference: MAIL answered, pymilter's default negotiate and decoding."""

    def __init__(self) -> None:
        self.account = ""
        self.recipients = 0
        self.author = ""

    def envfrom(self, sender: str, *args: str) -> int:
        self.account = account_of(self.getsymval("{auth_authen}"), sender)
        self.recipients = 0
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, recipient: str, *args: str) -> int:
        self.recipients += 1
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        if name.lower() == "from":
            self.author = value
        return Milter.CONTINUE

    def eom(self) -> int:
        return charge(self, self.account, self.recipients)


VARIANTS: dict[str, type[Milter.Base]] = {"lean": Reference, "mail": ReferenceMail}


def main() -> None:
    global script
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] not in VARIANTS):
        sys.exit(f"usage: python -m bench.reference_milter PORT REDIS_URL [{'|'.join(VARIANTS)}]")
    port, url = sys.argv[1], sys.argv[2]
    script = redis.Redis.from_url(url).register_script(BUCKET)
    Milter.factory = VARIANTS[sys.argv[3] if len(sys.argv) == 4 else "lean"]
    Milter.set_flags(0)
    Milter.runmilter("reference", f"inet:{port}@127.0.0.1", timeout=30)


if __name__ == "__main__":
    main()
