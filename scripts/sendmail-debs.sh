#!/usr/bin/env bash
# Debian 12's Sendmail for the end-to-end tests, WITHOUT installing it (sendmail-bin conflicts
# with the postfix package): fetch the .debs into var/debs with `apt-get download` and unpack
# them into var/sendmail-root with `dpkg-deb -x`. Idempotent: does nothing when already unpacked.
# Called by bootstrap.sh and by tests/helpers/sendmail.py; exits 1 with one line on stderr when
# the packages cannot be fetched (the Sendmail tests are then skipped, saying so).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(sendmail-bin sendmail-cf sendmail-base libmilter1.0.1 m4 libwrap0)
CACHE=var/debs
ROOT=var/sendmail-root

newest() { compgen -G "$CACHE/${1}_*.deb" | sort -V | tail -n 1; }
all_cached() {
  local pkg
  for pkg in "${PKGS[@]}"; do [[ -n $(newest "$pkg") ]] || return 1; done
}
download() {
  # As root, apt's _apt sandbox user could not write here: download as root, quietly.
  (cd "$CACHE" && apt-get download -qq -o APT::Sandbox::User=root "${PKGS[@]}") >/dev/null 2>&1
}

mkdir -p "$CACHE"
if ! all_cached; then
  # A fresh machine may have no package lists yet: refresh them once (root only) and retry.
  if ! download && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq >/dev/null 2>&1 || true
    download || true
  fi
  if ! all_cached; then
    echo "sendmail-debs: apt-get download ${PKGS[*]} failed (no network or no package lists?)" >&2
    exit 1
  fi
fi

debs=()
for pkg in "${PKGS[@]}"; do debs+=("$(newest "$pkg")"); done
stamp=$ROOT/.unpacked-$(printf '%s\n' "${debs[@]}" | sha256sum | cut -c1-16)
[[ -e $stamp ]] && exit 0

rm -rf "$ROOT" "$ROOT.new"
mkdir -p "$ROOT.new"
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$ROOT.new"; done
# The packaged binary is setgid: the dynamic loader would ignore LD_LIBRARY_PATH and LD_PRELOAD.
find "$ROOT.new" -type f -perm /6000 -exec chmod ug-s {} +
mv "$ROOT.new" "$ROOT"
touch "$stamp"
