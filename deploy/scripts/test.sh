#!/usr/bin/env bash
# Runs every test: unit and property tests of each crate, the sled store
# against the in-memory reference, and the cross-service tests, which start
# their own nats-server on a free 127.0.0.1 port and the real projector and
# kpictl binaries. Installs nats-server first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/setup.sh
cargo test --workspace --locked "$@"
