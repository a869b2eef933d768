#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
export AGM_TOOLS="$root/.tools"
cargo test --locked --all-targets -- --test-threads=4
