#!/usr/bin/env python3
"""What teams write without llmux: N threads send every line of a batch straight to the
upstream; on a 429 they sleep for its retry-after and try again. Prints the 429s collected
and the time taken.

usage: naive_client.py BASE_URL INPUT.jsonl CONCURRENCY
"""
import json
import sys
import threading
import time
import urllib.error
import urllib.request

BASE, INPUT, CONC = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = [json.loads(l) for l in open(INPUT) if l.strip()]
lock = threading.Lock()
stats = {"ok": 0, "rate_limited": 0}


def worker():
    while True:
        with lock:
            if not items:
                return
            item = items.pop()
        while True:
            req = urllib.request.Request(
                BASE + item["url"].removeprefix("/v1"), data=json.dumps(item["body"]).encode(),
                headers={"content-type": "application/json", "authorization": "Bearer sk"})
            try:
                urllib.request.urlopen(req, timeout=60).read()
                with lock:
                    stats["ok"] += 1
                break
            except urllib.error.HTTPError as e:
                if e.code != 429:
                    raise
                with lock:
                    stats["rate_limited"] += 1
                time.sleep(float(e.headers.get("retry-after", "1")))
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)


started = time.time()
threads = [threading.Thread(target=worker) for _ in range(CONC)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": stats["ok"], "rate_limited_seen": stats["rate_limited"],
                  "seconds": round(time.time() - started, 1)}))
