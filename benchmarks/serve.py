"""Serving under load: 32 concurrent streaming chat clients x 4 requests each against `acik serve`
(started as a subprocess, the real CLI path), on a small random model with acik's byte tokenizer.

Reports errors, p50/p99 time to first token (TTFT) and time per output token (TPOT), output
throughput, and the server's resident memory before and after. The peer is the same engine driven
in-process with the same requests and concurrency (no HTTP, no JSON): the gap is the server's cost.

    python benchmarks/serve.py [--clients 32] [--requests 4] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import torch

from acik.config import preset
from acik.llm import LLM
from acik.model import Transformer
from acik.tokenizer import save_byte_tokenizer

PROMPTS = ["Tell me about the sea.", "Write a short poem about bread.", "What is a transformer?",
           "List three colours.", "Explain continuous batching in one paragraph."]


def make_model(root: Path) -> Path:
    cfg = preset("small", vocab_size=260)
    model = Transformer(cfg)
    model.init_weights(0)
    return LLM(model, cfg, tokenizer_dir=save_byte_tokenizer(root / "tok")).save(root / "small-byte", command="bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def one_client(client: httpx.AsyncClient, cid: int, n: int, max_tokens: int, out: dict) -> None:
    for i in range(n):
        body = {"model": "small-byte", "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": max_tokens, "temperature": 0.8, "seed": cid * 100 + i,
                "messages": [{"role": "user", "content": PROMPTS[(cid + i) % len(PROMPTS)]}]}
        start = time.perf_counter()
        first = last = None
        usage = None
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    out["errors"].append(f"HTTP {r.status_code}")
                    await r.aread()
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk["choices"] and chunk["choices"][0].get("logprobs") is None:
                        delta = chunk["choices"][0]["delta"]
                        if "role" not in delta:  # the role chunk comes before any token
                            now = time.perf_counter()
                            first = first or now
                            last = now
        except httpx.HTTPError as e:
            out["errors"].append(type(e).__name__)
            continue
        if first is None or usage is None:
            out["errors"].append("no tokens or no usage")
            continue
        n_out = usage["completion_tokens"]
        out["ttft"].append(first - start)
        if n_out > 1:
            out["tpot"].append((last - first) / (n_out - 1))
        out["tokens"] += n_out


async def load_round(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    out = {"ttft": [], "tpot": [], "tokens": 0, "errors": []}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, c, requests, max_tokens, out) for c in range(clients)))
        out["wall"] = time.perf_counter() - start
    return out


def engine_round(model_dir: Path, clients: int, requests: int, max_tokens: int, batch: int) -> dict:
    """The peer: the same requests through acik.engine directly, from `clients` threads."""
    import acik
    from acik.engine import Engine, Request

    llm = acik.load(model_dir, optimize=True)  # as `acik serve` loads it
    tok = llm.tokenizer
    engine = Engine(llm, max_batch_size=batch)
    out = {"ttft": [], "tpot": [], "tokens": 0, "errors": []}
    lock = threading.Lock()

    def client(cid: int) -> None:
        for i in range(requests):
            text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[(cid + i) % len(PROMPTS)]}])
            ids = tok.encode(text, add_special_tokens=False)
            start = time.perf_counter()
            first = last = None
            n = 0
            for ev in engine.submit(Request(prompt_ids=ids, max_new_tokens=max_tokens, temperature=0.8,
                                            seed=cid * 100 + i)):
                if ev.token_id is not None:
                    n += 1
                    last = time.perf_counter()
                    first = first or last
            with lock:
                out["ttft"].append(first - start)
                if n > 1:
                    out["tpot"].append((last - first) / (n - 1))
                out["tokens"] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["wall"] = time.perf_counter() - start
    engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="engine max batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the server and the peer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(tempfile.mkdtemp(prefix="acik-bench-serve-"))
    model_dir = make_model(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    server = subprocess.Popen([sys.executable, "-m", "acik", "serve", str(model_dir), "--port", str(port),
                               "--max-batch-size", str(args.batch), "--max-concurrency", "256"], env=env)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        proc = psutil.Process(server.pid)
        asyncio.run(load_round(url, 4, 1, 8))  # warm-up: first allocations, lazy imports
        rss_before = proc.memory_info().rss
        load_before = os.getloadavg()[0]
        # Server and peer rounds alternate, so both see the same background load.
        runs, peers = [], []
        for _ in range(args.repeats):
            runs.append(asyncio.run(load_round(url, args.clients, args.requests, args.max_tokens)))
            peers.append(engine_round(model_dir, args.clients, args.requests, args.max_tokens, args.batch))
        rss_after = proc.memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=60)

    def summary(rs: list[dict]) -> dict:
        med = statistics.median
        return {"errors": sum(len(r["errors"]) for r in rs),
                "requests": sum(len(r["ttft"]) for r in rs),
                "ttft50": med(pct(r["ttft"], 50) for r in rs) * 1e3,
                "ttft99": med(pct(r["ttft"], 99) for r in rs) * 1e3,
                "tpot50": med(pct(r["tpot"], 50) for r in rs) * 1e3,
                "tpot99": med(pct(r["tpot"], 99) for r in rs) * 1e3,
                "tps": med(r["tokens"] / r["wall"] for r in rs)}

    s, p = summary(runs), summary(peers)
    print(f"\n{args.clients} streaming clients x {args.requests} requests, max_tokens {args.max_tokens}, "
          f"engine batch {args.batch}, model preset 'small' (byte vocab), {args.threads} torch threads, "
          f"median of {args.repeats} runs; load average {load_before:.1f} on {os.cpu_count()} CPUs\n")
    print("| | requests | errors | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | TPOT p99 (ms) | output tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("acik serve (HTTP, SSE)", s), ("acik.engine in-process (peer)", p)):
        print(f"| {name} | {r['requests']} | {r['errors']} | {r['ttft50']:.0f} | {r['ttft99']:.0f} | "
              f"{r['tpot50']:.1f} | {r['tpot99']:.1f} | {r['tps']:.0f} |")
    print(f"\nserver RSS after warm-up {rss_before / 2**20:.0f} MiB, after {len(runs) * args.clients * args.requests} "
          f"requests {rss_after / 2**20:.0f} MiB ({(rss_after - rss_before) / 2**20:+.1f} MiB)")
    if s["errors"]:
        for r in runs:
            print("errors:", r["errors"][:10])


if __name__ == "__main__":
    main()
