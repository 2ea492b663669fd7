#!/usr/bin/env bash
# Runs the whole protomesh test suite on a Debian 12 machine: installs what is missing
# (scripts/setup.sh), checks formatting and lints, builds every binary, runs every test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

tools_bin=$("$root/scripts/setup.sh" | tail -n1)
export PATH="$tools_bin:$PATH"
export CONSUL_BIN="$tools_bin/consul"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy: the runtime without its optional parts (no TLS, no OTLP export)"
cargo clippy -p protomesh --no-default-features --lib --locked -- -D warnings
echo "== import circles: no file imports one that imports it back"
for src in src build/src consul/src data/src gateway/src hosts/src memory/src mesh/src services/*/src; do
  python3 scripts/import-cycles.py "$src"
done
echo "== cargo build (binaries the integration tests start)"
cargo build --workspace --bins --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every test binary runs even when one fails, so one run shows every failure.
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads 4 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo's last line is the doc tests' own, often 0 of 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
