#!/usr/bin/env bash
# Run the kernel tests of `attend` and the quantized-product tests of
# `attend-models` for aarch64 under qemu user emulation, so the NEON paths run on
# an x86-64 machine. Not part of .ci/run: it needs the aarch64 Rust target, a cross
# linker and qemu, for example on Debian:
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# Under emulation the tests take a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
target=aarch64-unknown-linux-gnu
cargo clippy --workspace --all-targets --target "$target" -- -D warnings
cargo test --release -p attend --target "$target" --lib --tests
cargo test --release -p attend-models --target "$target" --lib --test quant_matmul
