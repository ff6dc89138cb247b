#!/usr/bin/env bash
# Batch pacing benchmark: N items (default 2,000) against an upstream that enforces 600 rpm
# itself (sliding 60 s window, 429 past it, limits announced in x-ratelimit-* headers as
# OpenAI does). llmux's `batch run`, paced by its own limits (600/min and 10/s) and what the
# upstream announces, against a naive client at the same concurrency that retries on 429.
# Ideal time: N / 10 per second (200 s for 2,000). Run from the repository root after
# `cargo build --release`:   bash bench/batch/run.sh [N] [CONCURRENCY]
set -euo pipefail
N=${1:-2000}
CONC=${2:-32}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

python3 - "$N" > "$dir/in.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "max_tokens": 16,
                               "messages": [{"role": "user", "content": f"question {i}"}]}}))
PY

p1=$(port)
python3 bench/batch/mock_upstream.py "$p1" 600 "$dir/llmux-upstream.json" &
cat > "$dir/llmux.toml" <<TOML
[store]
kind = "sqlite"
path = "$dir/llmux.db"
[providers.up]
kind = "openai-compatible"
base_url = "http://127.0.0.1:$p1/v1"
[[providers.up.keys]]
id = "k1"
secret = "sk-bench"
resources = [{ name = "rpm", value = 600, period = "minutely" },
             { name = "rps", value = 10, period = "secondly" }]
[models.m]
targets = [{ provider = "up", model = "gpt-4o-mini" }]
TOML
sleep 0.5
start=$(date +%s.%N)
target/release/llmux batch run "$dir/in.jsonl" -o "$dir/out.jsonl" --concurrency "$CONC" --config "$dir/llmux.toml"
end=$(date +%s.%N)
lines=$(wc -l < "$dir/out.jsonl")
echo "llmux batch: $lines lines in $(python3 -c "print(round($end - $start, 1))") s (ideal $((N / 10)) s); upstream saw: $(cat "$dir/llmux-upstream.json")"

p2=$(port)
python3 bench/batch/mock_upstream.py "$p2" 600 "$dir/naive-upstream.json" &
sleep 0.5
echo "naive client: $(python3 bench/batch/naive_client.py "http://127.0.0.1:$p2/v1" "$dir/in.jsonl" "$CONC"); upstream saw: $(cat "$dir/naive-upstream.json")"
