#!/usr/bin/env bash
# Runs everything CI runs: formatting, clippy, the build, and every test
# (unit tests and the integration tests that start real storaged processes).
set -euo pipefail
cd "$(dirname "$0")/.."
# The reference deployment test (t190) needs HAProxy, nftables and b3sum;
# the benchmark test (t160) runs dbench; t185 checks the example
# Prometheus configuration and alert rules with promtool (prometheus).
scripts/install-deps.sh haproxy nftables b3sum curl dbench prometheus
cargo fmt --all -- --check
cargo clippy --all-targets --workspace -- -D warnings
# The integration tests run the binaries: build them first, once, in the
# same target directory as the tests.
cargo build --workspace --bins --tests
# The mount tests use mount(8) with -t quizfs: install the helper.
scripts/install-helper.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci
else
  cargo test --workspace -- --test-threads=2
fi
