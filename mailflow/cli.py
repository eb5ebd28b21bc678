"""`mailflow` admin command. Bad arguments and bad configs get one line on stderr and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from mailflow import __version__
from mailflow.config import Config, ConfigError, config_path, load_config
from mailflow.store import Store, StoreError, open_store
from mailflow.urls import redact_url

EXIT_USAGE = 2

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
    except ConfigError as exc:
        raise click.UsageError(f"bad config: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailflow")
def cli() -> None:
    """mailflow: outbound mail-flow policy milter."""


@cli.command()
@config_option
def run(config_file: str | None) -> None:
    """Start the milter (validates the config before binding the socket)."""
    config = _load(config_file)
    from mailflow.log import setup_logging
    from mailflow.milter.server import serve

    setup_logging(config.log)
    serve(config)


@cli.command("check-config")
@config_option
def check_config(config_file: str | None) -> None:
    """Validate a config file; name the bad key and exit 2 on error."""
    config = _load(config_file)
    click.echo(f"{config.path}: OK (store {redact_url(config.store.url)}, socket {config.milter.socket}, mode {config.milter.mode})")
    from mailflow.rbl.zones import unwatched_summary

    if gap := unwatched_summary(config.rbl.ips, config.rbl.zones):  # a warning: the config still works
        click.echo(f"mailflow: warning: rbl: {gap}", err=True)


@cli.group()
def ratelimit() -> None:
    """Inspect or reset an account's buckets."""


@ratelimit.command("status")
@config_option
@click.argument("account")
def ratelimit_status(config_file: str | None, account: str) -> None:
    """Show how much of each limit ACCOUNT has spent."""
    from mailflow.ratelimit.bucket import seconds_until_fits

    config = _load(config_file)
    account = account.lower()
    policy = config.ratelimit.policy_for(account)
    with _store(config) as store:
        levels = store.levels(account, policy.limits)
    click.echo(f"account {account}: unit={policy.unit}{' (exempt)' if policy.exempt else ''}")
    for level, limit in zip(levels, policy.limits):
        left = max(0.0, limit.capacity - level)
        wait = seconds_until_fits(level, 1, limit)
        note = f", next in {wait}s" if wait else ""
        click.echo(f"  {str(limit):<24} spent {level:9.1f}  left {left:9.1f}{note}")


@ratelimit.command("reset")
@config_option
@click.argument("account")
def ratelimit_reset(config_file: str | None, account: str) -> None:
    """Refill every bucket of ACCOUNT."""
    config = _load(config_file)
    with _store(config) as store:
        store.reset(account.lower())
    click.echo(f"account {account.lower()}: buckets refilled")


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
@click.argument("account")
@click.argument("domain")
def domains_add(config_file: str | None, account: str, domain: str) -> None:
    """Give DOMAIN (and its subdomains) to ACCOUNT."""
    config, domain = _load(config_file), _domain_argument(domain)
    with _store(config) as store:
        store.add_domain(account.lower(), domain)
    click.echo(f"{domain}: owned by {account.lower()} (milters see it within {config.forgery.domains_refresh_seconds}s)")


@domains.command("remove")
@config_option
@click.argument("account")
@click.argument("domain")
def domains_remove(config_file: str | None, account: str, domain: str) -> None:
    """Take DOMAIN away from ACCOUNT."""
    config, domain = _load(config_file), _domain_argument(domain)
    with _store(config) as store:
        if not store.remove_domain(account.lower(), domain):
            raise click.ClickException(f"{domain} is not in the store for account {account.lower()}")
    click.echo(f"{domain}: removed from {account.lower()}")


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
    store = open_store(config.store.url, config.store.timeout_ms)
    try:
        yield store
    except StoreError as exc:
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
    from mailflow.rbl.alerts import Alerter
    from mailflow.rbl.watch import watch

    config = _rbl_settings(config_file)
    setup_logging(config.log)
    with _store(config) as store:
        watch(config.rbl, store, Alerter(config.rbl), cycles)


@cli.command()
@click.argument("files", nargs=-1, metavar="FILE...")
@click.option("--milter", "milter_socket", metavar="SOCKET", help="Drive a running milter (inet:PORT@HOST, unix:/PATH).")
@click.option("--smtp", "smtp_target", metavar="HOST:PORT", help="Send the sessions as SMTP to an MTA that runs the milter.")
@click.option("--from-log", "logs", multiple=True, metavar="MAILLOG",
              help="Sessions from Postfix mail.log; with neither --milter nor --smtp, a what-if run of -c's policy.")
@click.option("--year", type=int, default=None, help="Year of classic syslog stamps in --from-log (default: this year).")
@config_option
def replay(files: tuple[str, ...], milter_socket: str | None, smtp_target: str | None, logs: tuple[str, ...],
           year: int | None, config_file: str | None) -> None:
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
                        _load(config_file) if logs and not (milter_socket or smtp_target) else None))


def _register_admin_groups() -> None:
    from mailflow.suppression import admin

    admin.register(cli, _load, _store, config_option)


_register_admin_groups()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mailflow", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"mailflow: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"mailflow: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
