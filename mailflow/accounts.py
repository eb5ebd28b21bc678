"""Tie a message to the account that pays for it. Pure: facts in, Identity out."""

from __future__ import annotations

import re

import idna

from mailflow.config import AccountSettings
from mailflow.model import Client, Identity

NULL_SENDER_ACCOUNT = "local"  # locally submitted bounces (<>) share one bucket

_MSP_RECEIVED = re.compile(r"^\s*\(from\s+([^\s@()]+)@localhost\)", re.IGNORECASE)


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


def identify(settings: AccountSettings, client: Client, auth_login: str | None, sender: str) -> Identity | None:
    """The first configured source that matches, or None for mail that is not ours to police."""
    for source in settings.identify:
        if source == "sasl" and auth_login:
            return Identity("sasl", auth_login, resolve_account(settings, auth_login))
        if source == "local" and client.on_this_host:
            bare = strip_brackets(sender)
            account = resolve_account(settings, bare) if bare else NULL_SENDER_ACCOUNT
            return Identity("local", bare or "<>", account)
        if source == "trusted_ip" and _in_trusted_networks(settings, client):
            return Identity("trusted_ip", client.address or "", _account_for_ip(settings, client, sender))
    return None


def _in_trusted_networks(settings: AccountSettings, client: Client) -> bool:
    ip = client.ip
    return ip is not None and any(ip in network for network in settings.trusted_networks)


def _account_for_ip(settings: AccountSettings, client: Client, sender: str) -> str:
    ip = client.ip
    for network, account in settings.ip_map:  # longest prefix first
        if ip is not None and ip in network:
            return account
    return domain_of(sender) or client.address or ""


def msp_user(received_value: str) -> str | None:
    """The local user in Sendmail's submission header `Received: (from alice@localhost) by …`."""
    match = _MSP_RECEIVED.match(received_value)
    return match.group(1) if match else None


def refine_local_identity(settings: AccountSettings, identity: Identity, unix_user: str) -> Identity:
    """Sendmail names the submitting Unix user; the identity map decides its account.
    A user the map does not know keeps the sender's account (the user is still logged)."""
    account = settings.identity_map.get(unix_user.lower(), identity.account)
    return Identity("local", unix_user, account)
