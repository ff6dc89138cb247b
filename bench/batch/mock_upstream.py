#!/usr/bin/env python3
"""A chat-completions upstream that enforces its own rate limit, as real APIs do: at most
RPM requests in any sliding 60 s window; past it, 429 with retry-after. Like OpenAI, every
answer announces the limit (`x-ratelimit-limit-requests`, `-remaining-requests`,
`-reset-requests`: until a slot frees). It counts what it answered and writes the counts to
STATS (JSON) on every request.

usage: mock_upstream.py PORT RPM STATS
"""
import json
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, RPM, STATS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
window = deque()  # arrival times of admitted requests in the last 60 s
counts = {"ok": 0, "rate_limited": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        now = time.monotonic()
        with lock:
            while window and now - window[0] >= 60.0:
                window.popleft()
            admitted = len(window) < RPM
            if admitted:
                window.append(now)
                counts["ok"] += 1
            else:
                counts["rate_limited"] += 1
            retry = 60.0 - (now - window[0]) if window else 1.0
            remaining = RPM - len(window)
            with open(STATS, "w") as f:
                json.dump(counts, f)
        limits = {
            "x-ratelimit-limit-requests": str(RPM),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{max(retry, 0.001):.3f}s",
        }
        if admitted:
            payload = {
                "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "mock"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            }
            self.reply(200, payload, limits)
        else:
            err = {"error": {"message": "Rate limit reached", "type": "requests",
                             "code": "rate_limit_exceeded"}}
            self.reply(429, err, {**limits, "retry-after": str(max(1, int(retry + 0.999)))})

    def reply(self, status, payload, headers):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 256
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
