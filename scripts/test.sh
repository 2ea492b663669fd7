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
echo "== cargo build (binaries the integration tests start)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked -- --test-threads 4
