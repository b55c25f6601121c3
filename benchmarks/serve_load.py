"""Load test of `ctxlm serve`'s /embed: micro-batching against one request at a time, on 127.0.0.1 only.

    .venv/bin/python benchmarks/serve_load.py                         # 1,000 requests, 32 clients, MiniLM
    .venv/bin/python benchmarks/serve_load.py --requests 300 --concurrency 8 --modes 64,1

For each --max-batch in --modes, starts `ctxlm serve MODEL --max-batch N` as its own process on a free loopback
port, warms it up, then sends --requests /embed requests (one sentence each, 8 to 30 words) from --concurrency
clients at once (httpx, asyncio) and measures throughput and latency. Every request must be answered 200 with
one vector; then bad requests (malformed JSON, oversize, wrong types, an endpoint the model lacks) must each get
a 4xx, and the server must still give the same vectors as before the load. Bounded: a fixed number of requests,
each with a timeout, then the server is stopped. The clients share the machine's cores with the server: on a
small machine the figures are the server's and the client's together (the table says so).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROSE = ("the model reads every sentence and returns a vector that places similar meanings close together while "
         "different topics such as music markets weather football cooking and travel fall far apart in the space "
         "of its last layer")
WORDS = PROSE.split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize() + "." for _ in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "ctxlm", "serve", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}): {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.terminate()
    sys.exit("the server did not answer /health within 180 s")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def load(url: str, texts: list[str], concurrency: int, timeout: float) -> dict:
    """Every text as its own /embed request, `concurrency` in flight at a time."""
    latencies: list[float] = []
    failures: list[str] = []
    pending = iter(range(len(texts)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def one_client() -> None:
            for i in pending:
                began = time.perf_counter()
                try:
                    response = await client.post("/embed", json={"texts": [texts[i]]})
                    ok = response.status_code == 200 and len(response.json()["vectors"]) == 1
                    if not ok:
                        failures.append(f"{i}: HTTP {response.status_code} {response.text[:200]}")
                except httpx.HTTPError as err:
                    failures.append(f"{i}: {type(err).__name__}: {err}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    latencies.sort()
    return {"requests": len(texts), "answered": len(texts) - len(failures), "failures": failures[:5],
            "wall_s": wall, "throughput": len(texts) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


BAD_REQUESTS = [
    ("/embed", b"{not json"), ("/embed", b"[1, 2, 3]"), ("/embed", b'{"texts": "not a list"}'),
    ("/embed", b'{"texts": [1, 2]}'), ("/embed", b'{"texts": ["x"], "layers": "sum-last-99"}'),
    ("/embed", ('{"texts": ["' + "x" * 6000 + '"]}').encode()), ("/embed", b'{"texts": [' + b'"a",' * 100 + b'"a"]}'),
    ("/embed", b"\xff\xfe\x00"), ("/generate", b'{"prompt": "an encoder cannot"}'),
    ("/attention", b'{"text": "x", "layer": 99}'), ("/layers", b'{"sentences": ["a b"], "word": "a"}'),
]


def check_alive(url: str, reference: list[str], before: list[list[float]]) -> dict:
    """Bad requests each get a 4xx; afterwards the server gives the same vectors as before."""
    statuses = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, body in BAD_REQUESTS:
            statuses.append(client.post(path, content=body, headers={"Content-Type": "application/json"}).status_code)
        after = client.post("/embed", json={"texts": reference}).json()["vectors"]
        health = client.get("/health").json()["status"]
        stats = client.get("/info").json()["batching"]["embed"]
    same = all(max(abs(a - b) for a, b in zip(x, y, strict=True)) < 1e-5 for x, y in zip(before, after, strict=True))
    return {"bad_requests": len(statuses), "all_4xx": all(400 <= s < 500 for s in statuses), "statuses": statuses,
            "alive": health == "ok", "same_vectors": same, "batching": stats}


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--modes", default="64,1", help="--max-batch of each run, comma-separated")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 512:
        sys.exit("--requests 1 to 100,000 and --concurrency 1 to 512")

    texts = sentences(args.requests)
    reference = texts[:3]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.2f} (1 min)")
    rows = []
    for max_batch in (int(m) for m in args.modes.split(",")):
        server, url = start_server(args.model, max_batch, args.max_wait_ms)
        try:
            before = httpx.post(url + "/embed", json={"texts": reference}, timeout=60).json()["vectors"]
            asyncio.run(load(url, sentences(64, seed=1), args.concurrency, args.timeout))  # warm-up
            counted = httpx.get(url + "/info", timeout=60).json()["batching"]["embed"]
            result = asyncio.run(load(url, texts, args.concurrency, args.timeout))
            after = httpx.get(url + "/info", timeout=60).json()["batching"]["embed"]
            batches = after["batches"] - counted["batches"]
            result["texts_per_forward"] = (after["items"] - counted["items"]) / batches if batches else 0.0
            alive = check_alive(url, reference, before)
        finally:
            stop_server(server)
        rows.append((max_batch, result, alive))
        print(f"--max-batch {max_batch}: {result['answered']}/{result['requests']} answered in {result['wall_s']:.1f} s"
              f"; bad requests {alive['statuses']} → all 4xx: {alive['all_4xx']}; alive: {alive['alive']}; same "
              f"vectors after: {alive['same_vectors']}; texts per forward: {result['texts_per_forward']:.1f}",
              flush=True)
        if result["failures"]:
            print("  failures:", *result["failures"], sep="\n    ")

    print(f"\nload after: {os.getloadavg()[0]:.2f} (1 min)\n")
    print(f"| /embed, {args.model}, {args.requests:,} requests of one sentence, {args.concurrency} clients "
          "| requests/s | p50 ms | p99 ms | texts per forward | answered | 4xx for bad input, alive, same vectors |")
    print("|---|---|---|---|---|---|---|")
    for max_batch, result, alive in rows:
        name = ("one request at a time (--max-batch 1)" if max_batch == 1
                else f"micro-batching (--max-batch {max_batch})")
        print(f"| {name} | {result['throughput']:.0f} | {result['p50_ms']:.0f} | {result['p99_ms']:.0f} | "
              f"{result['texts_per_forward']:.1f} | {result['answered']}/{result['requests']} | "
              f"{'yes' if alive['all_4xx'] and alive['alive'] and alive['same_vectors'] else 'NO'} |")
    if len(rows) >= 2:
        batched = next((r for m, r, _ in rows if m > 1), None)
        single = next((r for m, r, _ in rows if m == 1), None)
        if batched and single:
            print(f"\nmicro-batching: {batched['throughput'] / single['throughput']:.1f}x the throughput of one "
                  "request at a time")
    if any(r["answered"] < r["requests"] or not (a["all_4xx"] and a["alive"] and a["same_vectors"])
           for _, r, a in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
