"""Reference minimal policy milter: the floor for any pymilter policy milter doing this job.

Account from {auth_authen} (else the envelope sender's domain); recipients and From collected
with no-reply callbacks; one Redis EVALSHA of a token-bucket script at end of message; body,
HELO, DATA, EOH and unknown negotiated away. Run: python -m bench.reference_milter PORT REDIS_URL
"""

from __future__ import annotations

import sys

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


class Reference(Milter.Base):
    script = None

    def __init__(self) -> None:
        self.account = ""
        self.recipients = 0
        self.author = ""

    def envfrom(self, sender: str, *args: str) -> int:
        login = self.getsymval("{auth_authen}")
        self.account = login or sender.strip("<>").rpartition("@")[2].lower()
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
        allowed = Reference.script(keys=[f"ref:{{{self.account}}}"], args=[10_000_000, 10_000_000 / 3600, self.recipients])
        if allowed:
            return Milter.CONTINUE
        self.setreply("451", "4.7.1", "rate limit")
        return Milter.TEMPFAIL


def main() -> None:
    port, url = sys.argv[1], sys.argv[2]
    Reference.script = redis.Redis.from_url(url).register_script(BUCKET)
    Milter.factory = Reference
    Milter.set_flags(0)
    Milter.runmilter("reference", f"inet:{port}@127.0.0.1", timeout=30)


if __name__ == "__main__":
    main()
