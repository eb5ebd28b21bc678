"""One signed POST of a notice to the webhook, and when to try it again.

Retried: network errors, timeouts, 5xx, 408 and 429 (after Retry-After when it says seconds).
Not retried: other 4xx (the receiver refuses this notice; sending it again changes nothing) and
redirects (never followed: the signed body goes only where the config says).

The timeout bounds the whole attempt, not each socket call: a receiver that trickles its answer
a byte at a time would otherwise hold the notifier's one thread (and every notice behind it)
for as long as it likes. At the deadline its socket is shut down (mailflow/deadline.py).
"""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import IO

from mailflow import __version__
from mailflow.deadline import Deadline
from mailflow.notify.payload import SIGNATURE_HEADER, signature

RETRIED_4XX = (408, 429)
MAX_REASON = 200


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool  # worth another attempt
    why: str  # for the log: "HTTP 500", "timed out", ...
    retry_after: float = 0.0  # what the receiver asked for (429/503 Retry-After), seconds


def backoff(attempt: int, base: float) -> float:
    """The wait after failed attempt `attempt` (1, 2, ...): base, 2 base, 4 base, ..."""
    return base * float(1 << min(attempt - 1, 30))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message,
                         newurl: str) -> None:
        return None  # urllib then raises HTTPError with the 3xx


class Webhook:
    def __init__(self, url: str, secret: bytes, timeout: float) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout

    def post(self, raw_body: bytes, event_id: str, kind: str) -> Outcome:
        with Deadline(self.timeout, "mailflow-webhook-deadline") as deadline:
            outcome = self._post(deadline.opener(_NoRedirect),
                                 raw_body, event_id, kind)
        if deadline.cut_off and not outcome.delivered:
            return Outcome(False, True, f"no whole answer within {self.timeout:g}s (a receiver too slow, or trickling)")
        return outcome

    def _post(self, opener: urllib.request.OpenerDirector, raw_body: bytes, event_id: str, kind: str) -> Outcome:
        request = urllib.request.Request(self.url, data=raw_body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": f"mailflow/{__version__}",
            SIGNATURE_HEADER: signature(self.secret, raw_body),
            "X-Mailflow-Event": kind,
            "X-Mailflow-Delivery": event_id,
        })
        try:
            with opener.open(request, timeout=self.timeout) as response:
                response.read(65536)  # bounded: a receiver's answer is not ours to keep
                return Outcome(True, False, f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if 300 <= code < 400:
                return Outcome(False, False, f"HTTP {code}: redirects are not followed; fix notify.webhook")
            retry = code >= 500 or code in RETRIED_4XX
            return Outcome(False, retry, f"HTTP {code}", _retry_after(exc.headers.get("Retry-After")))
        except (TimeoutError, socket.timeout):
            return Outcome(False, True, f"timed out after {self.timeout:g}s")
        except urllib.error.URLError as exc:
            return Outcome(False, True, str(exc.reason)[:MAX_REASON])
        except (OSError, ValueError, http.client.HTTPException) as exc:  # reset mid-answer, a broken status line
            return Outcome(False, True, f"{type(exc).__name__}: {exc}"[:MAX_REASON])


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (an HTTP date is ignored: backoff applies)."""
    if value and value.strip().isdigit() and len(value.strip()) < 8:
        return float(value.strip())
    return 0.0
