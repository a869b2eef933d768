#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
export AGM_TOOLS="$root/.tools"
cargo test --locked --lib --bins --tests -- --test-threads=4
# Criterion benches take no libtest flags; in test mode each runs once, so they stay working.
cargo test --locked --bench '*'
