#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the broker tests need (Mosquitto,
# kcat, Java 17 + the Apache Kafka jars, rdkafka's build tools; a no-op when present), then
# runs every test. The tests start their own Kafka and Mosquitto brokers on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec cargo test --workspace --all-targets "$@"
