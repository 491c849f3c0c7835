#!/usr/bin/env bash
# Run the whole test suite: fetch the real models (a no-op when present), then
# every crate's unit, integration, property and doc tests. Tests that need a
# model fail, not skip, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo test --workspace --all-targets
cargo test --workspace --doc
