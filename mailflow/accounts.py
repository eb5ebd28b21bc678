"""Tie a message to the account that pays for it. Pure: facts in, Identity out.

Nothing an unauthenticated client writes (headers, envelope, HELO) chooses its account: see
README, "Whose mail is it", for what each source trusts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import NamedTuple

import idna

from mailflow.settings import AccountSettings
from mailflow.model import Client, Identity

NULL_SENDER_ACCOUNT = "local"  # locally generated bounces (<>) share one bucket

# The header Sendmail's MSP (submit.cf, confRECEIVED_HEADER) puts on top of what it sends:
#   [from HELO ](USER@localhost | from USER@localhost)\n\tby HOST (8.17.x/8.17.x/Submit)[ with PROTO] id QID[\n\tfor RCPT]; DATE
# `from HELO (…)` when the user named a client host (`sendmail -bs` + HELO, `-p PROTO:HOST`),
# `with PROTO` after `-bs`, `-p` or `-oMr`. The MSP's own delivery reports (DSNs) carry
# `from localhost (localhost)`: no user. Bounded pieces, no nested repetition, each optional piece
# starting with a fixed word the next piece cannot: linear in the header's length. USER is a Unix
# login's characters only, so it names an account every store can hold.
_MSP_BY = (r"\r?\n[ \t]+by [A-Za-z0-9.-]{1,253} "
           r"\(8\.\d{1,3}\.\d{1,3}(?:\.\d{1,3})?/8\.\d{1,3}\.\d{1,3}(?:\.\d{1,3})?/Submit\)"
           r"(?: with [A-Za-z0-9]{1,20})? id [A-Za-z0-9]{1,40}(?:\r?\n[ \t]+for [^;\r\n]{1,1000})?;\s")
_MSP_RECEIVED = re.compile(
    r"(?:from [^\s()]{1,253} \(|\(from )(?P<user>[A-Za-z0-9._$-]{1,64})@localhost\)" + _MSP_BY)
_MSP_DSN_RECEIVED = re.compile(r"from localhost \(localhost\)" + _MSP_BY)

LOCAL_SMTP_TEXT = ("Unauthenticated SMTP from this host is refused by the mail policy; "
                   "authenticate (SMTP AUTH) or submit with sendmail")
UNMAPPED_TEXT = ("Client {address} is trusted but has no [accounts.ip_map] entry and the sender domain "
                 "is not hosted here; the administrator must add an ip_map entry for it")


class Refusal(NamedTuple):
    """A client that may not send as anyone: who it would have been, and why not."""

    identity: Identity  # the attribution by sender domain (logged; what monitor mode goes on with)
    reason: str  # local_smtp | trusted_unmapped
    text: str


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address.strip()


def canonical_domain(domain: str) -> str:
    """Lower-case, IDN domains as A-labels, so both spellings name one account."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


def domain_of(address: str) -> str:
    _, at, domain = strip_brackets(address).rpartition("@")
    return canonical_domain(domain) if at else ""


def resolve_account(settings: AccountSettings, identity: str) -> str:
    """Map an identity (login, address, Unix user) to its account.

    Lookup order: the exact identity, then `@domain`; without an entry, a `user@domain`
    belongs to account `domain` and a bare login is its own account.
    """
    key = strip_brackets(identity).lower()
    if key in settings.identity_map:
        return settings.identity_map[key]
    domain = domain_of(key)
    if domain:
        return settings.identity_map.get(f"@{domain}", domain)
    return key


def _mapped(settings: AccountSettings, sender: str) -> bool:
    key = strip_brackets(sender).lower()
    return key in settings.identity_map or f"@{domain_of(key)}" in settings.identity_map


def by_sender(settings: AccountSettings, source: str, identity: str, sender: str) -> Identity:
    bare = strip_brackets(sender)
    return Identity(source, identity or bare or "<>", resolve_account(settings, bare) if bare else NULL_SENDER_ACCOUNT)


def on_msp_listener(settings: AccountSettings, client: Client) -> bool:
    return bool(client.daemon_name) and client.daemon_name in settings.msp_daemons and client.on_this_host


def identify(settings: AccountSettings, client: Client, auth_login: str | None, sender: str,
             owner: Callable[[str], str | None] = lambda domain: None) -> Identity | Refusal | None:
    """The first configured source that matches; a Refusal for a client of ours that no source
    may attribute; None for mail that is not ours to police. `owner(domain)`: the account that
    owns the domain, hosted here (any ownership source), or None."""
    refusal: Refusal | None = None
    for source in settings.identify:
        if source == "sasl" and auth_login:
            return Identity("sasl", auth_login, resolve_account(settings, auth_login))
        if source == "local":
            # The MTA binds these to a Unix user (Postfix pickup, sendmail -bs), or Sendmail's MSP
            # names it in a header read at end of message (engine.header).
            if client.is_postfix_pickup or client.is_sendmail_bs or on_msp_listener(settings, client):
                return by_sender(settings, "local", "", sender)
            if client.on_this_host:
                if settings.local_smtp == "sender_domain":  # opted in: any local process may choose
                    return by_sender(settings, "local", "", sender)
                refusal = refusal or Refusal(by_sender(settings, "local", "", sender), "local_smtp", LOCAL_SMTP_TEXT)
        if source == "trusted_ip" and _in_trusted_networks(settings, client):
            address = client.address or ""
            account = _account_for_ip(settings, client)
            if account is not None:
                return Identity("trusted_ip", address, account)
            attributed = by_sender(settings, "trusted_ip", address, sender)
            if _mapped(settings, sender):
                return attributed
            if (owning := owner(domain_of(sender))) is not None:  # its owner pays, not the domain
                return Identity("trusted_ip", attributed.identity, owning)
            refusal = refusal or Refusal(attributed, "trusted_unmapped", UNMAPPED_TEXT.format(address=address))
    return refusal


def _in_trusted_networks(settings: AccountSettings, client: Client) -> bool:
    """A client on this host is never trusted_ip, whatever trusted_networks lists (127.0.0.0/8,
    ::1): any local process could send as anyone. `local` and local_smtp decide for it."""
    ip = client.ip
    return ip is not None and not client.on_this_host and any(ip in network for network in settings.trusted_networks)


def trusted_network_warnings(settings: AccountSettings) -> list[str]:
    """For check-config: trusted_networks and ip_map entries that can never match."""
    warnings = []
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("::ffff:127.0.0.0/104"))
    for i, network in enumerate(settings.trusted_networks):
        if any(network.version == lo.version and network.overlaps(lo) for lo in loopback):
            warnings.append(f"accounts.trusted_networks[{i}]: {network} holds loopback addresses; a client on this host "
                            "is never trusted_ip (any local process could send as anyone): local_smtp decides for it")
    for network, account in settings.ip_map:
        if not any(network.version == t.version and network.subnet_of(t)  # type: ignore[arg-type]
                   for t in settings.trusted_networks):
            warnings.append(f"accounts.ip_map.\"{network}\" ({account}): not inside trusted_networks, so never "
                            "used; add it to trusted_networks or remove it")
    return warnings


def _account_for_ip(settings: AccountSettings, client: Client) -> str | None:
    ip = client.ip
    for network, account in settings.ip_map:  # longest prefix first
        if ip is not None and ip in network:
            return account
    return None


def msp_user(received_value: str) -> str | None:
    """The local user in the header Sendmail's MSP adds, `(from alice@localhost) by …/Submit) id …`
    (or `from HOST (alice@localhost) by …`), or None when the value is not exactly that."""
    match = _MSP_RECEIVED.match(received_value)
    return match.group("user") if match else None


def is_msp_dsn(received_value: str) -> bool:
    """Is it the header on the MSP's own delivery reports, `from localhost (localhost) by …/Submit) id …`?"""
    return _MSP_DSN_RECEIVED.match(received_value) is not None


def refine_local_identity(settings: AccountSettings, unix_user: str) -> Identity:
    """Sendmail's MSP names the submitting Unix user; the identity map decides its account. A user
    the map does not know is its own account (as a bare login is), owning no domain: never the
    account of the sender domain it chose with -f."""
    return Identity("local", unix_user, settings.identity_map.get(unix_user.lower(), unix_user.lower()))


def is_users_host_address(settings: AccountSettings, unix_user: str, sender: str) -> bool:
    """Is the envelope sender the Unix user's own address on this host (`www-data@HOST`)? What the
    MSP writes when a program (PHP's mail() without -f) names no sender: no forgery of anyone."""
    local, at, domain = strip_brackets(sender).rpartition("@")
    return bool(at) and local.lower() == unix_user.lower() and canonical_domain(domain) in settings.local_names


def is_own_bounce(settings: AccountSettings, sender: str, author_local: str, author_domain: str) -> bool:
    """A null-sender message signed by this host's MSP (MAILER-DAEMON@ or postmaster@ one of its
    own names)."""
    return (not strip_brackets(sender) and author_local.lower() in ("mailer-daemon", "postmaster")
            and canonical_domain(author_domain) in settings.local_names)
