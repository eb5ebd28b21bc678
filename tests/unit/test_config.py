import os
import re
import tomllib
from pathlib import Path

import pytest

from mailflow.cli import main
from mailflow.config import ConfigError, config_path, config_warnings, load_config, parse_config
from mailflow.ratelimit.limits import parse_limit

REPO = Path(__file__).resolve().parents[2]

ISSUE_SAMPLE = """
[milter]
socket = "inet:8890@127.0.0.1"
mode = "enforce"
on_error = "tempfail"

[store]
url = "sqlite:///var/lib/mailflow/state.db"
timeout_ms = 250

[accounts]
identify = ["sasl", "local", "trusted_ip"]
trusted_networks = ["10.0.0.0/8"]

[ratelimit]
unit = "recipient"
limits = ["600/hour"]

[ratelimit.accounts."bigshop.example"]
limits = ["2000/hour", "20000/day"]
"""


def test_the_documented_sample_is_accepted_as_it_stands() -> None:
    config = parse_config(tomllib.loads(ISSUE_SAMPLE))
    assert config.milter.socket == "inet:8890@127.0.0.1"
    assert config.ratelimit.policy_for("anyone.example").limits == (parse_limit("600/hour"),)
    big = config.ratelimit.policy_for("bigshop.example")
    assert big.limits == (parse_limit("2000/hour"), parse_limit("20000/day"))
    assert big.unit == "recipient"


# The two lines debian/rules replaces in conf/mailflow.toml to make the package's conffile.
PACKAGE_LINES = ('socket = "inet:8890@127.0.0.1"', 'hash_key_env = "MAILFLOW_SUPPRESSION_KEY"')


def installed_config(tmp_path: Path) -> Path:
    """conf/mailflow.toml as the Debian package installs it (a unix socket in its runtime
    directory, the key file made at first install, the state directory), with those host paths
    moved under tmp_path."""
    key = tmp_path / "suppression.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    (tmp_path / "lib").mkdir()
    (tmp_path / "run").mkdir()
    lines = (REPO / "conf" / "mailflow.toml").read_text().splitlines()
    assert all(line in lines for line in PACKAGE_LINES) and 'url = "sqlite:///var/lib/mailflow/state.db"' in lines
    package = {PACKAGE_LINES[0]: f'socket = "unix:{tmp_path}/run/milter.sock"',
               PACKAGE_LINES[1]: f'hash_key_file = "{key}"'}
    text = "\n".join(package.get(line, line) for line in lines).replace("/var/lib/mailflow/", f"{tmp_path}/lib/")
    path = tmp_path / "mailflow.toml"
    path.write_text(text + "\n")
    return path


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    load_config(str(installed_config(tmp_path)))
    load_config(str(REPO / "conf" / "dev.toml"))


def test_the_installed_config_passes_check_config_without_a_warning(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = installed_config(tmp_path)
    main(["check-config", "-c", str(path)])  # returns: exit 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: OK") and err == ""


def test_defaults_without_a_file_body() -> None:
    config = parse_config({})
    assert config.ratelimit.default.limits == (parse_limit("600/hour"),)
    assert config.ratelimit.default.unit == "recipient"
    assert config.milter.on_error == "tempfail" and config.store.timeout_ms == 250


@pytest.mark.parametrize(
    "text, key",
    [
        ('[milter]\nmode = "loud"', "milter.mode"),
        ('[milter]\nsocket = "8890"', "milter.socket"),
        ('[milter]\nsoket = "inet:1@h"', "milter.soket"),
        ('[store]\nurl = "mysql://x"', "store.url"),
        ("[store]\ntimeout_ms = 0", "store.timeout_ms"),
        ("[store]\ntimeout_ms = true", "store.timeout_ms"),
        ('[accounts]\nidentify = ["sasl", "pop"]', "accounts.identify[1]"),
        ('[accounts]\ntrusted_networks = ["10.0.0.0/33"]', "accounts.trusted_networks[0]"),
        ('[accounts.ip_map]\n"not-an-ip" = "x"', 'accounts.ip_map.not-an-ip'),
        ('[ratelimit]\nlimits = ["600/fortnight"]', "ratelimit.limits[0]"),
        ('[ratelimit]\nlimits = ["600/hour", "700/hour"]', "ratelimit.limits[1]"),
        ("[ratelimit]\nlimits = []", "ratelimit.limits"),
        ('[ratelimit]\nunit = "byte"', "ratelimit.unit"),
        ('[ratelimit.accounts."big.example"]\nlimits = ["1/hour", "20000/fortnight"]', 'ratelimit.accounts."big.example".limits[1]'),
        ('[ratelimit.accounts."big.example"]\nlimts = ["1/hour"]', 'ratelimit.accounts."big.example".limts'),
        ('[ratelimit]\nlimits = [{ limit = "600/hour", burst = 0 }]', "ratelimit.limits[0].burst"),
        ('[log]\ntarget = "file"', "log.target"),
        ("[nonsense]\na = 1", "nonsense"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_burst_table_and_exemptions() -> None:
    config = parse_config(tomllib.loads(
        '[ratelimit]\nlimits = [{ limit = "600/hour", burst = 100 }, "5000/day"]\nexempt = ["Post.Example"]\n'
        '[ratelimit.accounts."m.example"]\nunit = "message"\n'
    ))
    assert config.ratelimit.default.limits[0].capacity == 100
    assert config.ratelimit.policy_for("post.example").exempt
    m = config.ratelimit.policy_for("m.example")
    assert m.unit == "message" and m.limits == config.ratelimit.default.limits


def test_map_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "accounts.map").write_text("# comment\nAlice@Shop.example  shop.example\n@news.example shop.example\n")
    (tmp_path / "m.toml").write_text('[accounts]\nmap_file = "accounts.map"\n')
    config = load_config(str(tmp_path / "m.toml"))
    assert config.accounts.identity_map == {"alice@shop.example": "shop.example", "@news.example": "shop.example"}


def test_bad_map_file_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "accounts.map").write_text("ok@x.example x.example\nthree words here\n")
    (tmp_path / "m.toml").write_text('[accounts]\nmap_file = "accounts.map"\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_config(str(tmp_path / "m.toml"))


def test_unreadable_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "bad.toml").write_text("[milter\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(tmp_path / "bad.toml"))


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILFLOW_CONFIG", raising=False)
    assert config_path(None) == "/etc/mailflow/mailflow.toml"
    monkeypatch.setenv("MAILFLOW_CONFIG", "/tmp/env.toml")
    assert config_path(None) == "/tmp/env.toml"
    assert config_path("/tmp/cli.toml") == "/tmp/cli.toml"


FORGERY_SAMPLE = """
[forgery]
sender_login_maps = "conf/sender_login_maps"
protected_brands = ["paypal.com", "microsoft.com"]

[forgery.rules]
envelope_domain = "reject"
from_header = "reject"
from_domain = "reject"
sender_header = "reject"
display_name = "reject"
lookalike = "hold"
duplicate_headers = "reject"
soft_signals = "tag"

[forgery.accounts."shop.example"]
domains = ["shop-news.example"]
"""


def test_the_forgery_sample_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "sender_login_maps").write_text("@shop-news.example  bob@shop.example\nceo@partner.example alice@shop.example\n")
    (tmp_path / "mailflow.toml").write_text(FORGERY_SAMPLE)
    config = load_config(str(tmp_path / "mailflow.toml"))
    assert config.forgery.actions["lookalike"] == "hold"
    from mailflow.forgery.policy import static_ownership

    domains, addresses = static_ownership(config)
    assert {"shop.example", "shop-news.example"} <= domains["shop.example"]
    assert addresses["shop.example"] == {"ceo@partner.example"}


@pytest.mark.parametrize("text, key", [
    ('[forgery.rules]\nfrom_domain = "bounce"', "forgery.rules.from_domain"),
    ('[forgery.rules]\nfrom_dommain = "reject"', "forgery.rules.from_dommain"),
    ('[forgery.accounts."x.example".rules]\nlookalike = "maybe"', 'forgery.accounts."x.example".rules.lookalike'),
    ('[forgery]\nsender_login_maps = "/nonexistent/map"', "forgery.sender_login_maps"),
])
def test_forgery_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert str(err.value).startswith(f"{key}:"), str(err.value)


SUPPRESSION_SAMPLE = """
[suppression]
hash_key_env = "MAILFLOW_SUPPRESSION_KEY"   # or hash_key_file; a missing key is a clear start-up error
case_sensitive_local_part = false
strip_subaddress = true
trap_hits_before_hold = 3

[bulk]
min_recipients = 25
missing_unsubscribe = "reject"
"""

RBL_SAMPLE = """
[rbl]
ips = ["192.0.2.10", "198.51.100.0/30", "2001:db8::25"]
nameservers = ["127.0.0.1:5353"]   # host:port; omit for the system resolver
interval = "5m"
timeout_ms = 2000
concurrency = 64
clean_polls_to_delist = 3
use_default_zones = true           # false: only the zones below

[[rbl.zones]]                      # adds to (or, with the same name, replaces) a default zone
name = "bl.example.test"
codes = { "127.0.0.2" = "spam source", "127.0.0.3" = "botnet" }
delist_url = "https://bl.example.test/remove"

[rbl.alerts]
webhook = "http://127.0.0.1:8080/hook"
email_to = ["postmaster@provider.example"]
smtp_relay = "127.0.0.1:25"
"""


def test_the_suppression_sample_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(tomllib.loads(SUPPRESSION_SAMPLE))
    assert config.suppression.enabled and config.suppression.trap_hits_before_hold == 3
    assert config.bulk.default.min_recipients == 25
    monkeypatch.delenv("MAILFLOW_SUPPRESSION_KEY")
    with pytest.raises(ConfigError, match="suppression.hash_key_env: environment variable MAILFLOW_SUPPRESSION_KEY is not set"):
        parse_config(tomllib.loads(SUPPRESSION_SAMPLE))


def test_the_rbl_sample_is_accepted() -> None:
    rbl = parse_config(tomllib.loads(RBL_SAMPLE)).rbl
    assert rbl.ips == ("192.0.2.10", "198.51.100.0", "198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::25")
    assert rbl.nameservers == (("127.0.0.1", 5353),) and rbl.interval == 300
    names = [zone.name for zone in rbl.zones]
    assert names[0] == "zen.spamhaus.org" and "bl.example.test" in names
    assert not any(dead in n for n in names for dead in ("sorbs", "ahbl", "njabl"))
    assert rbl.smtp_relay == ("127.0.0.1", 25) and rbl.webhook == "http://127.0.0.1:8080/hook"


@pytest.mark.parametrize("text, key", [
    ('[rbl]\nips = ["10.0.0.0/8"]', "rbl.ips"),
    ('[rbl]\ninterval = "5 fortnights"', "rbl.interval"),
    ('[rbl]\nnameservers = ["[::1:53"]', "rbl.nameservers[0]"),
    ('[[rbl.zones]]\nname = "x.test"\ncodes = { "10.0.0.2" = "x" }', 'rbl.zones[0].codes."10.0.0.2"'),
    ('[rbl.alerts]\nemail_to = ["a@b.example"]', "rbl.alerts.email_to"),
])
def test_rbl_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(text))
    assert str(err.value).startswith(f"{key}:"), str(err.value)


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://127.0.0.1:abc/0", "the port is not a number from 1 to 65535"),
    ("redis://127.0.0.1:0/0", "the port is not a number from 1 to 65535"),
    ("redis://:pa/ss@127.0.0.1/0", "must be percent-encoded"),
    ("redis://127.0.0.1/x", "the path must be a database number"),
    ("redis://127.0.0.1/0?db=x", "db must be a database number"),
    ("redis://127.0.0.1/0?colour=red", "unknown option 'colour'"),
    ("unix://", "names no socket"),
    ("sqlite://", "names no database file"),
    ("sqlite:///var/lib/mailflow/", "names no database file"),
    ("sqlite:////var/lib/mailflow/state.db", "one slash too many"),  # run said "invalid uri authority: var"
    ("postgres://h/db", "expected sqlite:///PATH"),
])
def test_store_url_syntax_is_checked_at_load(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"store.url: .*{re.escape(problem)}"):
        parse_config({"store": {"url": url}})


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:p%2Fw@cache.example:6380/2",
                                 "unix:///run/redis/redis.sock?db=1", "redis://[::1]:6379", "sqlite://rel/state.db"])
def test_good_store_urls_pass(url: str) -> None:
    assert parse_config({"store": {"url": url}}).store.url == url


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[milter]\nmode = "enforce"\ntimeout = = 3\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3"):
        load_config(str(cfg))


# -- every error at once, warnings -----------------------------------------------------------

MANY_ERRORS = """
[milter]
mode = "loud"
timeout = 0
[store]
url = "mysql://x"
[accounts]
trusted_networks = ["10.0.0.0/33", "10.0.0.0/8"]
[ratelimit]
limits = ["600/fortnight", "5/hour", "6/hour"]
[ratelimit.accounts."big.example"]
limts = ["1/hour"]
[forgery.rules]
from_domain = "explode"
no_such_rule = "tag"
[rbl]
interval = "often"
[[rbl.zones]]
name = "x.example"
codes = { "10.0.0.1" = "bad" }
[log]
target = "file"
[nonsense]
a = 1
"""


def test_every_error_in_the_file_is_reported_each_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MANY_ERRORS)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    keys = [error.removeprefix(f"{path}: ").split(": ", 1)[0] for error in err.value.errors]
    assert keys == ["milter.mode", "milter.timeout", "store.url", "accounts.trusted_networks[0]",
                    "ratelimit.limits[0]", "ratelimit.limits[2]", 'ratelimit.accounts."big.example".limts',
                    "forgery.rules.from_domain", "forgery.rules.no_such_rule",
                    'rbl.zones[0].codes."10.0.0.1"', "rbl.interval", "log.target", "nonsense"]
    assert str(err.value).count("\n") == len(keys) - 1


def test_check_config_and_run_print_every_error_one_line_each_exit_2(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MANY_ERRORS)
    for command in ("check-config", "run"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "-c", str(path)])
        assert exit_.value.code == 2
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert out == "" and len(lines) == 13, err
        assert all(line.startswith(f"mailflow: bad config: {path}: ") for line in lines)
        assert "Traceback" not in err


DANGEROUS = """
[milter]
on_error = "accept"
[accounts]
trusted_networks = ["10.0.0.0/8", "0.0.0.0/0", "64.0.0.0/7", "2001:db8::/48", "2000::/16"]
local_smtp = "sender_domain"
[rbl]
ips = ["192.0.2.1"]
interval = "30s"
"""


def test_dangerous_values_are_warnings_with_their_key() -> None:
    warnings = config_warnings(parse_config(tomllib.loads(DANGEROUS)))
    keys = [warning.split(": ", 1)[0] for warning in warnings]
    assert keys == ["accounts.trusted_networks[1]", "accounts.trusted_networks[2]", "accounts.trusted_networks[4]",
                    "accounts.trusted_networks[1]",  # 0.0.0.0/0 also holds loopback, which is never trusted_ip
                    "accounts.local_smtp", "rbl.interval", "milter.on_error"]
    assert "no [rbl.alerts] webhook or email_to" in warnings[-1] and "no metrics" in warnings[-1]
    alerted = DANGEROUS + '[rbl.alerts]\nwebhook = "https://alerts.example/hook"\n'
    assert not any(w.startswith("milter.on_error") for w in config_warnings(parse_config(tomllib.loads(alerted))))
    assert config_warnings(parse_config({})) == []


def test_check_config_prints_warnings_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "warn.toml"
    path.write_text(DANGEROUS + f'[store]\nurl = "sqlite://{tmp_path}/state.db"\n')
    main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: OK")
    lines = err.splitlines()
    assert len(lines) == 7 and all(line.startswith("mailflow: warning: ") for line in lines), err
