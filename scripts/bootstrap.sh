#!/usr/bin/env bash
# Install what mailflow needs on Debian 12, idempotently: Debian packages, then a venv with
# the pinned Python dependencies. Safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# libicu-dev, pkg-config and g++ build PyICU (UTS #39 confusable skeletons for the lookalike rule).
# prometheus: tests/e2e/test_prometheus.py scrapes the milter with a private one; promtool checks the rules.
# rbldnsd: the DNSBL tests also ask the server most DNSBLs run, on loopback (never its system service).
# libdb5.3, libldap-2.5-0, libnsl2: what the unpacked Sendmail (scripts/sendmail-debs.sh) links to.
# EXTRA_DEBS: more packages for one caller (make bench ANCHORS=rspamd adds rspamd).
DEBS=(gcc g++ pkg-config libicu-dev python3-dev python3-venv libmilter-dev redis-server redis-tools postfix sasl2-bin libsasl2-modules
      rbldnsd libdb5.3 libldap-2.5-0 libnsl2 prometheus
      ${EXTRA_DEBS:-})
PYTHON=${PYTHON:-python3}
VENV=.venv

missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  # No system Postfix configuration: the system instance must never bind port 25 for us.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  # Tests and benchmarks start their own redis-server, Postfix and rspamd: installing one must
  # not start the system's instance (policy-rc.d exit 101 = "do not start", only while we install).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Sendmail for tests/e2e/test_sendmail.py, unpacked, not installed (it conflicts with postfix).
scripts/sendmail-debs.sh || echo "bootstrap: without Sendmail's packages, tests/e2e/test_sendmail.py is skipped" >&2

stamp=$VENV/.installed-$(sha256sum requirements.lock setup.cfg | sha256sum | cut -c1-16)
if [[ ! -e $stamp ]]; then
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.lock
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
