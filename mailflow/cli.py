"""`mailflow` admin command. Bad arguments, configs, URLs, stores and files get one line on
stderr and exit 2, never a traceback: `main` maps every such error in one place."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from mailflow import __version__, audit
from mailflow.audit import why_option
from mailflow.config import Config, ConfigError, config_path, config_warnings, load_config
from mailflow.groups import group_problem
from mailflow.milter.socket_path import unix_socket_problem
from mailflow.notify.notifier import notifying
from mailflow.fallback.setup import check_fallback_path
from mailflow.store import DomainTaken, Store, StoreError, check_store_group, check_store_path, open_store
from mailflow.suppression.keys import KeyFileError, KeyMismatch
from mailflow.urls import redact_text, redact_url

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug, not a bad input (Nagios reads it as UNKNOWN)
MAX_MESSAGE = 1000
# Errors that mean "fix the config, the store or a file" (exit 2), wherever they are raised.
_BAD_INPUT: tuple[type[BaseException], ...] = (ConfigError, StoreError, KeyFileError, KeyMismatch, OSError,
                                               UnicodeError, RecursionError, MemoryError)
_BAD_INPUT_MODULES = ("redis", "sqlite3", "yaml", "milter")

config_option = click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="Config file (default: $MAILFLOW_CONFIG, else /etc/mailflow/mailflow.toml).",
)


def _load(config_file: str | None) -> Config:
    try:
        return load_config(config_path(config_file))
    except ConfigError as exc:  # every error in the file, one line each, then exit 2
        for error in exc.errors[:-1]:
            _say(f"bad config: {error}")
        raise click.UsageError(f"bad config: {exc.errors[-1]}") from None


def _preflight(config: Config, socket: bool = True) -> None:
    """What would stop `run` beyond the config's syntax: files and directories."""
    problems: list[tuple[str, str | None]] = []
    checks: tuple[tuple[str, Callable[[], None]], ...] = (
        ("store.url", lambda: check_store_path(config.store.url)),
        ("store.group", lambda: check_store_group(config.store.url, config.store.group)),
        ("store.fallback_path", lambda: check_fallback_path(config)))
    for key, check in checks:
        try:
            check()
        except StoreError as exc:
            problems.append((key, str(exc)))
    if socket:
        problems.append(("milter.socket", unix_socket_problem(config.milter.socket)))
        if config.milter.socket_group:
            problems.append(("milter.socket_group", group_problem(config.milter.socket_group)))
    for key, problem in problems:
        if problem:
            raise click.UsageError(f"bad config: {config.path}: {key}: {problem}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailflow")
def cli() -> None:
    """mailflow: outbound mail-flow policy milter."""


@cli.command()
@config_option
@click.option("--drain-timeout", type=click.FloatRange(0, 3600), default=30.0, show_default=True, metavar="SECONDS",
              help="On stop or reload, how long sessions in progress may take to finish.")
def run(config_file: str | None, drain_timeout: float) -> None:
    """Start the milter (validates the config before binding the socket). SIGHUP reloads the
    config; SIGTERM stops accepting and lets sessions in progress finish."""
    config = _load(config_file)
    _preflight(config)
    from mailflow.log import log, setup_logging
    from mailflow.milter.supervisor import Supervisor, WorkerFailed

    def warn(loaded: Config) -> None:
        for warning in config_warnings(loaded, syslog=False):  # setup_logging said it of syslog
            log.warning("config: %s", warning)

    def reload() -> Config:
        try:
            new = load_config(config_path(config_file))
        except ConfigError as exc:  # every error into the log, each with its key; the last is the refusal's
            for error in exc.errors[:-1]:
                log.error("reload: bad config: %s", error)
            raise click.UsageError(f"bad config: {exc.errors[-1]}") from None
        _preflight(new)
        return new

    def reloaded(new: Config) -> None:
        setup_logging(new.log)
        warn(new)

    setup_logging(config.log)
    warn(config)
    try:
        Supervisor(config, reload, _failure, drain_timeout, on_reload=reloaded).run()
    except WorkerFailed as exc:
        _fail(str(exc), exc.code)


@cli.command("check-config")
@config_option
def check_config(config_file: str | None) -> None:
    """Validate a config file; name the bad key and exit 2 on error."""
    config = _load(config_file)
    _preflight(config)
    key_line = ""
    if config.suppression.enabled:  # read only: a key run would refuse is refused here too
        from mailflow.suppression.key_peek import compare_key_with_store

        key_line = compare_key_with_store(config.store.url, config.suppression.secret, config.store.timeout_ms)
    click.echo(f"{config.path}: OK (store {redact_url(config.store.url)}, socket {config.milter.socket}, mode {config.milter.mode})")
    from mailflow.rbl.zones import unwatched_summary

    warnings = config_warnings(config)  # the config still works: exit 0
    if gap := unwatched_summary(config.rbl.ips, config.rbl.zones):
        warnings.append(f"rbl: {gap}")
    for warning in warnings:
        _say(f"warning: {warning}")
    if key_line:
        click.echo(key_line)


@cli.group()
def ratelimit() -> None:
    """Inspect or reset an account's buckets (`status`: mailflow/views/cli.py)."""


@ratelimit.command("reset")
@config_option
@why_option()
@click.argument("account")
def ratelimit_reset(config_file: str | None, why: str | None, account: str) -> None:
    """Refill every bucket of ACCOUNT."""
    config = _load(config_file)
    with _store(config) as store:
        store.reset(account.lower())
        click.echo(f"account {account.lower()}: buckets refilled")
        audit.record(store, "ratelimit reset", account.lower(), why=why)


@cli.group()
def domains() -> None:
    """Manage the domains an account owns (From:/envelope ownership checks)."""


def _domain_argument(domain: str) -> str:
    from mailflow.accounts import canonical_domain
    from mailflow.forgery.ownership import organisational_domain

    canonical = canonical_domain(domain)
    if organisational_domain(canonical) is None:
        raise click.BadParameter(f"{domain!r} is a public suffix or not a domain; it cannot be owned", param_hint="DOMAIN")
    return canonical


@domains.command("add")
@config_option
@why_option()
@click.argument("account")
@click.argument("domain")
def domains_add(config_file: str | None, why: str | None, account: str, domain: str) -> None:
    """Give DOMAIN (and its subdomains) to ACCOUNT."""
    config, domain = _load(config_file), _domain_argument(domain)
    with _store(config) as store:
        store.add_domain(account.lower(), domain)
        click.echo(f"{domain}: owned by {account.lower()} (milters see it within {config.forgery.domains_refresh_seconds}s)")
        audit.record(store, "domains add", account.lower(), domain, why)


@domains.command("remove")
@config_option
@why_option()
@click.argument("account")
@click.argument("domain")
def domains_remove(config_file: str | None, why: str | None, account: str, domain: str) -> None:
    """Take DOMAIN away from ACCOUNT."""
    config, domain = _load(config_file), _domain_argument(domain)
    with _store(config) as store:
        if not store.remove_domain(account.lower(), domain):
            raise click.ClickException(f"{domain} is not in the store for account {account.lower()}")
        click.echo(f"{domain}: removed from {account.lower()}")
        audit.record(store, "domains remove", account.lower(), domain, why)


@domains.command("list")
@config_option
@click.argument("account")
def domains_list(config_file: str | None, account: str) -> None:
    """Every domain ACCOUNT owns, and where the ownership comes from."""
    from mailflow.forgery.ownership import organisational_domain
    from mailflow.forgery.policy import static_ownership

    config, account = _load(config_file), account.lower()
    static_domains, static_addresses = static_ownership(config)
    with _store(config) as store:
        stored = sorted(d for d, owner in store.domains().items() if owner == account)
    rows = [(account, "account name")] if organisational_domain(account) else []
    rows += [(d, "config / sender_login_maps") for d in sorted(static_domains.get(account, set()) - {account})]
    rows += [(a, "sender_login_maps (address)") for a in sorted(static_addresses.get(account, set()))]
    rows += [(d, "store") for d in stored]
    for name, source in rows:
        click.echo(f"{name:<40} {source}")
    if not rows:
        click.echo(f"account {account} owns no domains")


@contextmanager
def _store(config: Config) -> Iterator[Store]:
    _preflight(config, socket=False)
    store = open_store(config.store.url, config.store.timeout_ms, group=config.store.group)
    try:
        with notifying(config, store):  # what the command publishes (holds, grants) is sent before it exits
            yield store
    except DomainTaken as exc:  # a refusal, not a fault: exit 1 (faults exit 2 in main)
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@cli.group()
def rbl() -> None:
    """DNSBL watcher for the outbound IPs in [rbl]."""


def _rbl_settings(config_file: str | None) -> Config:
    config = _load(config_file)
    if not config.rbl.ips:
        raise click.UsageError("no outbound IPs to check: set rbl.ips in the config")
    return config


@rbl.command("check")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One record per IP and zone, for machines.")
def rbl_check(config_file: str | None, as_json: bool) -> None:
    """One poll. Nagios exit codes: 0 OK, 1 WARNING (error answers), 2 CRITICAL (listed),
    3 UNKNOWN (blind zones, unanswered queries, IPs no zone can check)."""
    from mailflow.rbl import watch

    config = _rbl_settings(config_file)
    result = watch.run_poll(config.rbl)
    if as_json:
        click.echo(watch.as_json(result))
    else:
        click.echo(watch.status_line(result))
        click.echo(watch.table(result))
    sys.exit(watch.nagios_state(result))


@rbl.command("watch")
@config_option
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Stop after N polls (default: run until stopped).")
def rbl_watch(config_file: str | None, cycles: int | None) -> None:
    """Poll every [rbl] interval; alert on listed, delisted, blind and recovered."""
    from mailflow.log import setup_logging
    from mailflow.metrics.rbl import served_rbl_metrics
    from mailflow.rbl.alerts import Alerter
    from mailflow.rbl.watch import watch

    config = _rbl_settings(config_file)
    setup_logging(config.log)
    with _store(config) as store, served_rbl_metrics(config.metrics.rbl_listen) as polled:
        watch(config.rbl, store, Alerter(config.rbl), cycles, polled)


@cli.command()
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("--milter", "milter_socket", metavar="SOCKET", help="Drive a running milter (inet:PORT@HOST, unix:/PATH).")
@click.option("--smtp", "smtp_target", metavar="HOST:PORT", help="Send the sessions as SMTP to an MTA that runs the milter.")
@click.option("--from-log", "logs", multiple=True, metavar="MAILLOG",
              help="Sessions from Postfix mail.log; with neither --milter nor --smtp, a what-if run of -c's policy.")
@click.option("--year", type=int, default=None, help="Year of classic syslog stamps in --from-log (default: this year).")
@click.option("--details", is_flag=True, help="What-if: one line per logged message (queue id, account, verdict, reason).")
@config_option
def replay(files: tuple[str, ...], milter_socket: str | None, smtp_target: str | None, logs: tuple[str, ...],
           year: int | None, details: bool, config_file: str | None) -> None:
    """Replay recorded SMTP sessions and compare the replies with the expected ones.

    Exit 0 when every session got what it expected, 1 on any mismatch, 2 on a bad file.
    """
    from mailflow.replay.cli import run_replay

    if milter_socket and smtp_target:
        raise click.UsageError("give --milter or --smtp, not both")
    if not files and not logs:
        raise click.UsageError("nothing to replay: give session FILEs or --from-log MAILLOG")
    if files and not (milter_socket or smtp_target):
        raise click.UsageError("session files need --milter SOCKET or --smtp HOST:PORT")
    sys.exit(run_replay(files, logs, milter_socket, smtp_target, year,
                        _load(config_file) if logs and not (milter_socket or smtp_target) else None, details))


def _register_admin_groups() -> None:
    from mailflow import grants_admin
    from mailflow import holdqueue
    from mailflow.feedback import cli as feedback
    from mailflow.feedback.arf_cli import register_arf
    from mailflow.metrics import check
    from mailflow.reputation import cli as reputation
    from mailflow.suppression import admin, keygen
    from mailflow.views import cli as views

    admin.register(cli, _load, _store, config_option)
    grants_admin.register(cli, _load, _store, config_option)
    holdqueue.register(cli, _load, _store, config_option)
    keygen.register(cli)
    views.register(cli, ratelimit, _load, _store, config_option)
    check.register(cli, config_option)
    register_arf(feedback.register(cli, _load, _store, config_option), _load, _store)
    reputation.register(cli, _load, _store, config_option)


_register_admin_groups()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mailflow", standalone_mode=False)
    except click.UsageError as exc:
        _fail(exc.format_message(), EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `mailflow suppress export | head`: the reader is gone; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:
        message, code = _failure(exc)
        # A bug: still one line (the cause, not hidden), the traceback on demand.
        if code == EXIT_INTERNAL and os.environ.get("MAILFLOW_TRACEBACK"):
            raise
        _fail(message, code)


def _failure(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code for an error (also what a milter worker reports)."""
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, _BAD_INPUT) or type(exc).__module__.split(".")[0] in _BAD_INPUT_MODULES:
        return _describe(exc), EXIT_USAGE
    return f"internal error: {_describe(exc)} (MAILFLOW_TRACEBACK=1 shows where)", EXIT_INTERNAL


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = " ".join(f"{name}" for name in (exc.filename, exc.filename2) if name)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    if isinstance(exc, RecursionError):
        return "input nested too deeply"
    if isinstance(exc, MemoryError):
        return "out of memory (an input too large?)"
    text = str(exc) or type(exc).__name__
    ours = (ConfigError, StoreError, KeyFileError, KeyMismatch, OSError)  # messages written to be read as they are
    return text if isinstance(exc, ours) else f"{type(exc).__name__}: {text}"


def _fail(message: str, code: int) -> None:
    """One line, whatever the message held: no newline, no password, bounded."""
    _say(message)
    sys.exit(code)


def _say(message: str) -> None:
    line = " ".join(redact_text(message).split())
    if len(line) > MAX_MESSAGE:
        line = line[:MAX_MESSAGE] + "…"
    click.echo(f"mailflow: {line}", err=True)
