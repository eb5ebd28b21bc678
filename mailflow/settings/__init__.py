"""The typed, frozen settings mailflow.toml is read into: pure data, no policy imported.

Each package reads its own settings from here (accounts, rate limits, forgery...), so no package
has to import the loader (mailflow.config), which imports the checks to validate their files.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from mailflow.forgery.names import DEFAULT_ACTIONS
from mailflow.ratelimit.limits import Limit, parse_limit
from mailflow.rbl.zones import Zone
from mailflow.settings.feedback import FeedbackSettings
from mailflow.settings.notify import NotifySettings
from mailflow.settings.reputation import ReputationSettings

IDENTITY_SOURCES = ("sasl", "local", "trusted_ip")
LOCAL_SMTP = ("refuse", "sender_domain")  # unauthenticated SMTP from loopback: refused, or by sender domain
SUPPRESSION_ACTIONS = ("reject", "tempfail", "off")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MilterSettings:
    socket: str = "inet:8890@127.0.0.1"
    mode: str = "enforce"  # enforce | monitor
    on_error: str = "tempfail"  # tempfail | accept | local (README, "Local fallback")
    timeout: int = 30  # seconds libmilter waits on the MTA
    socket_mode: int = 0o660  # unix socket only: set right after libmilter creates it
    socket_group: str = ""  # unix socket only: "" = the process's group


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:///var/lib/mailflow/state.db"
    timeout_ms: int = 250
    refresh_ms: int = 1000  # how often the milter's in-memory replica (Redis) and grants (both) refresh
    group: str = ""  # SQLite: files 0640 with this group, else 0600
    wait_replicas: int = 0  # Redis: a debit waits for this many replicas (WAIT); 0: off
    wait_timeout_ms: int = 50  # for at most this long (at most half of timeout_ms)
    fleet_size: int = 0  # on_error = "local": milter hosts sharing the store; 0 = learned while it is up
    fallback_path: str = "/var/lib/mailflow/fallback.db"  # on_error = "local": this host's buckets and spend


def host_names() -> frozenset[str]:
    """This host's own names, as its MTA signs its bounces (MAILER-DAEMON@name); `localhost` is everyone's."""
    names = (name.lower().rstrip(".") for name in (socket.gethostname(), socket.getfqdn()))
    return frozenset(name for name in names if name and not name.startswith("localhost"))


@dataclass(frozen=True)
class AccountSettings:
    identify: tuple[str, ...] = IDENTITY_SOURCES
    trusted_networks: tuple[IPNetwork, ...] = ()
    identity_map: Mapping[str, str] = field(default_factory=dict)
    ip_map: tuple[tuple[IPNetwork, str], ...] = ()  # longest prefix first
    local_smtp: str = "refuse"  # refuse | sender_domain (spoofable by any local process)
    msp_daemons: frozenset[str] = frozenset()  # Sendmail {daemon_name}s of the MSP's own listener
    local_names: frozenset[str] = field(default_factory=host_names)  # lower-case
    # `mailflow account release`: Postfix's postsuper, and the instance's config dir ("": its default)
    postsuper: str = "/usr/sbin/postsuper"
    postfix_config_dir: str = ""


@dataclass(frozen=True)
class RatePolicy:
    """The rate limit that applies to one account."""

    limits: tuple[Limit, ...]
    unit: str = "recipient"  # recipient | message
    exempt: bool = False


@dataclass(frozen=True)
class RateLimitSettings:
    default: RatePolicy = RatePolicy(limits=(parse_limit("600/hour"),))
    accounts: Mapping[str, RatePolicy] = field(default_factory=dict)
    local_over_limit: str = "defer"  # defer | hold

    def policy_for(self, account: str) -> RatePolicy:
        return self.accounts.get(account, self.default)


@dataclass(frozen=True)
class ForgeryAccount:
    domains: tuple[str, ...] = ()
    actions: Mapping[str, str] = field(default_factory=dict)  # overrides only
    # Runs mailing lists or forwarders: list, resent and SRS mail may carry others' From:.
    relays_others: bool = False


@dataclass(frozen=True)
class ForgerySettings:
    sender_login_maps: str = ""  # resolved path, or "" for none
    protected_brands: tuple[str, ...] = ()
    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    accounts: Mapping[str, ForgeryAccount] = field(default_factory=dict)
    max_date_skew_hours: int = 24
    domains_refresh_seconds: int = 30

    def actions_for(self, account: str) -> Mapping[str, str]:
        override = self.accounts.get(account)
        return {**self.actions, **override.actions} if override and override.actions else self.actions


@dataclass(frozen=True)
class SuppressionSettings:
    enabled: bool = False  # on when the config has a [suppression] table
    secret: bytes = field(default=b"", repr=False)
    case_sensitive_local_part: bool = False
    strip_subaddress: bool = True
    trap_hits_before_hold: int = 3
    action: str = "reject"  # reject | tempfail | off
    accounts: Mapping[str, str] = field(default_factory=dict)  # per-account action

    def action_for(self, account: str) -> str:
        return self.accounts.get(account, self.action) if self.enabled else "off"


@dataclass(frozen=True)
class BulkPolicy:
    min_recipients: int = 25
    missing_unsubscribe: str = "reject"  # reject | tempfail | hold | tag | off


@dataclass(frozen=True)
class BulkSettings:
    default: BulkPolicy = BulkPolicy()
    accounts: Mapping[str, BulkPolicy] = field(default_factory=dict)

    def policy_for(self, account: str) -> BulkPolicy:
        return self.accounts.get(account, self.default)


@dataclass(frozen=True)
class RblSettings:
    ips: tuple[str, ...] = ()  # every address to watch (CIDRs expanded)
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver
    interval: int = 300
    timeout_ms: int = 2000
    concurrency: int = 64
    clean_polls_to_delist: int = 3
    zones: tuple[Zone, ...] = ()
    webhook: str = ""
    email_to: tuple[str, ...] = ()
    email_from: str = ""
    smtp_relay: tuple[str, int] | None = None
    smtp_user: str = ""  # SMTP AUTH for alerts through smtp_relay (mailflow refuses loopback SMTP without it)
    smtp_password: str = field(default="", repr=False)  # read from smtp_password_file
    sendmail: str = ""  # or hand alerts to this program: local mail (Postfix pickup, Sendmail's MSP)
    suspects: int = 10


@dataclass(frozen=True)
class LogSettings:
    target: str = "stderr"  # stderr | syslog
    syslog_socket: str = "/dev/log"  # target = "syslog": the local syslog daemon's socket
    facility: str = "mail"
    format: str = "kv"  # kv | json
    level: str = "info"


@dataclass(frozen=True)
class MetricsSettings:
    listen: tuple[str, int] | None = None  # the milter's /metrics and /health; None: off
    rbl_listen: tuple[str, int] | None = None  # `mailflow rbl watch`'s own /metrics
    feedback_listen: tuple[str, int] | None = None  # `mailflow feedback follow`'s own /metrics
    allow_remote: bool = False  # a listen address that is not loopback


@dataclass(frozen=True)
class Config:
    milter: MilterSettings = MilterSettings()
    store: StoreSettings = StoreSettings()
    accounts: AccountSettings = AccountSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    forgery: ForgerySettings = ForgerySettings()
    suppression: SuppressionSettings = SuppressionSettings()
    bulk: BulkSettings = BulkSettings()
    rbl: RblSettings = RblSettings()
    log: LogSettings = LogSettings()
    notify: NotifySettings = NotifySettings()
    feedback: FeedbackSettings = FeedbackSettings()
    reputation: ReputationSettings = ReputationSettings()
    metrics: MetricsSettings = MetricsSettings()
    path: str | None = None
