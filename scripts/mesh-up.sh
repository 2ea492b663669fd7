#!/usr/bin/env bash
# Brings the whole protomesh dev mesh up on a Debian 12 machine: installs what is missing
# (scripts/setup.sh), builds the release binaries, then runs `mesh up` (Consul dev agent if none
# answers at CONSUL_HTTP_ADDR, every service, wait until passing, print what to try; Ctrl-C stops all).
# Extra arguments go to `mesh up` (for example: --service priority=5).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

tools_bin=$("$root/scripts/setup.sh" | tail -n1)
export PATH="$tools_bin:$PATH"
export CONSUL_BIN="$tools_bin/consul"

cargo build --release --workspace --bins
exec "$root/target/release/mesh" up "$@"
