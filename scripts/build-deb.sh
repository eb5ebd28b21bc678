#!/usr/bin/env bash
# `make deb`: build dist/mailflow_VERSION_ARCH.deb from the checkout with debhelper, in a copy
# under var/deb/ (dpkg-buildpackage writes next to its source tree). Rebuilds only when the
# packaged files changed: dist/mailflow.deb.source holds the hash of the sources it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build tools, idempotently (bootstrap.sh installs missing Debian packages with policy-rc.d care).
EXTRA_DEBS="debhelper lintian fakeroot dpkg-dev" scripts/bootstrap.sh

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' mailflow/__init__.py)
changelog=$(dpkg-parsechangelog -S Version)
if [[ ${changelog%%-*} != "$version" ]]; then
  echo "deb: debian/changelog says $changelog, mailflow/__init__.py says $version; add a changelog entry (dch -v $version)" >&2
  exit 2
fi

# Tracked and new (not ignored) files of what goes into the package, as they are on disk now.
mapfile -t files < <(git ls-files -co --exclude-standard -- mailflow conf debian setup.cfg pyproject.toml README.md requirements.lock | sort)
source_hash=$( (printf '%s\n' "${files[@]}"; cat "${files[@]}") | sha256sum | cut -c1-32)
arch=$(dpkg --print-architecture)
deb=dist/mailflow_${version}_${arch}.deb
if [[ -f $deb && -f dist/mailflow.deb.source && $(cat dist/mailflow.deb.source) == "$source_hash" ]]; then
  echo "deb: $deb is up to date"
  exit 0
fi

build=var/deb
rm -rf "$build" && mkdir -p "$build/mailflow-$version" dist
cp --parents -a "${files[@]}" "$build/mailflow-$version/"
start=$SECONDS
# Its own pip cache: wheels built on Debian's python3 only (never the pyenv python's).
export PIP_CACHE_DIR=$PWD/var/deb-pip-cache
# PATH: Debian's python3 first, so nothing in the build can pick up a pyenv or /usr/local one.
(cd "$build/mailflow-$version" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc >../build.log 2>&1) || {
  tail -40 "$build/build.log" >&2
  echo "deb: dpkg-buildpackage failed; whole log in $build/build.log" >&2
  exit 1
}
mv "$build/mailflow_${version}_${arch}.deb" "$deb"
echo "deb: built $deb in $((SECONDS - start)) s"
# Tags left are explained in debian/mailflow.lintian-overrides. Root is how this machine builds.
lintian_rc=0
lintian_out=$(lintian --fail-on error,warning "$deb" 2>&1) || lintian_rc=$?
grep -v '^running with root privileges' <<<"$lintian_out" || true
if ((lintian_rc)); then
  echo "deb: lintian failed on $deb" >&2
  exit 1
fi
echo "$source_hash" > dist/mailflow.deb.source
