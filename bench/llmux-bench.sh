#!/usr/bin/env bash
# LLMUX_CMD for ../shared/bench/bench.sh, which sets PORT, MOCK_BASE_URL, MOCK_STREAM_BASE_URL.
#   cargo build --release
#   LLMUX_CMD=bench/llmux-bench.sh ../shared/bench/bench.sh
# Run from the repository root (bench.sh runs LLMUX_CMD in the directory it was started from).
set -euo pipefail
cfg="${TMPDIR:-/tmp}/llmux-bench-$PORT.toml"
rm -f "${TMPDIR:-/tmp}/llmux-bench-$PORT.db"*
cat > "$cfg" <<EOF
listen = "127.0.0.1:$PORT"

[store]
kind = "sqlite"
path = "${TMPDIR:-/tmp}/llmux-bench-$PORT.db"

[providers.mock]
kind = "openai-compatible"
base_url = "$MOCK_BASE_URL"
[[providers.mock.keys]]
id = "k1"
secret = "sk-mock-upstream"
# limits far above the load, so every request takes the real path: reserve, then reconcile
resources = [{ name = "rpm", value = 1000000000, period = "minutely" },
             { name = "tpm", value = 1000000000000, period = "minutely" }]

[providers.mock-stream]
kind = "openai-compatible"
base_url = "$MOCK_STREAM_BASE_URL"
[[providers.mock-stream.keys]]
id = "k1"
secret = "sk-mock-upstream"
resources = [{ name = "rpm", value = 1000000000, period = "minutely" },
             { name = "tpm", value = 1000000000000, period = "minutely" }]

[models.bench]
targets = [{ provider = "mock", model = "gpt-4o-mini" }]

# Governance on the bench path: the key bench.sh sends (looked up by hash), with a hard USD
# budget (gpt-4o-mini's built-in price) reserved and reconciled on every request.
[[gateway_keys]]
id = "bench"
secret = "sk-bench"
resources = [{ name = "budget_usd", value = 1000000000, period = "monthly" }]

[models.bench-stream]
targets = [{ provider = "mock-stream", model = "gpt-4o-mini" }]
EOF
export LLMUX_LOG=warn
exec target/release/llmux serve --config "$cfg"
