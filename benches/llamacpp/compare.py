#!/usr/bin/env python3
"""r1serve against llama.cpp on the same GGUF files, side by side in one run.

Two tables, printed as Markdown:
  1. single-stream decode in process: `llama-bench` tg (and pp512 for
     reference) against `r1serve generate --ignore-eos`, with the weight
     bytes each streams per second next to a parallel memcpy's bytes per
     second measured in the same run;
  2. streaming chat through each server (llama-server -np 16, r1serve serve
     --max-num-seqs 16), greedy, ignore_eos, no prompt cache: decode tok/s and
     time to first token for 1 and 16 concurrent streams.

Each model argument is `MODEL` or `MODEL=GGUF`: r1serve runs MODEL (a GGUF
file or a Hugging Face directory), llama.cpp runs GGUF (default: MODEL), so
a bf16 directory can face llama.cpp on the same weights as a BF16 GGUF.

The servers run one at a time, so they never share the cores. Run it through
`benches/llamacpp/compare.sh`, which builds both programs first.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_isa() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "amx_int8" in flags:
        return "AVX-512 + AMX-INT8"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI (no AMX)"
    if "avx512f" in flags:
        return "AVX-512 (no VNNI)"
    if "avx_vnni" in flags:
        return "AVX2 + AVX-VNNI (no AVX-512)"
    if "avx2" in flags:
        return "AVX2 (no AVX-512, no AMX)"
    return "no AVX2"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def memcpy_bandwidth(threads: int) -> float:
    """Bytes copied per second by a memcpy of 512 MiB split over `threads`
    threads (numpy releases the GIL while copying), median of 5."""
    size = 512 << 20
    src = np.ones(size, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)
    bounds = [(i * size // threads, (i + 1) * size // threads) for i in range(threads)]
    rates = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(6):
            t = time.perf_counter()
            list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), bounds))
            rates.append(size / (time.perf_counter() - t))
    return statistics.median(rates[1:])


def weight_bytes(model: Path) -> int:
    """Bytes of a checkpoint's tensors: the GGUF file, or the safetensors of
    a directory. Decode reads each weight once per token, except that only
    one row of an untied embedding is read, so this slightly over-counts for
    a model with a separate output matrix."""
    if model.is_dir():
        return sum(p.stat().st_size for p in model.glob("*.safetensors"))
    return model.stat().st_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_bench(bin_dir: Path, gguf: Path, threads: int, tokens: int) -> dict:
    """tg and pp512 tokens/s from llama-bench's JSON output."""
    out = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads),
         "-p", "512", "-n", str(tokens), "-r", "3", "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    rates = {}
    for row in json.loads(out):
        key = "pp" if row["n_prompt"] > 0 else "tg"
        rates[key] = row["avg_ts"]
    return rates


def r1serve_generate(r1: Path, model: Path, tokens: int, runs: int = 3) -> float:
    """Median decode tokens/s of `r1serve generate` over `runs` runs."""
    rates = []
    for _ in range(runs):
        err = subprocess.run(
            [str(r1), "generate", "--model", str(model), "--chat", "--ignore-eos",
             "--temperature", "0", "--max-tokens", str(tokens),
             "--prompt", "Write a long story about a dragon."],
            check=True, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"},
        ).stderr
        m = re.search(r"decode: \d+ tokens, ([0-9.]+) tokens/s", err)
        if not m:
            sys.exit(f"r1serve generate printed no decode rate:\n{err}")
        rates.append(float(m.group(1)))
    return statistics.median(rates)


async def one_stream(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> dict:
    body = {
        "model": "bench",
        # Distinct prompts, so no stream can reuse another's prefix.
        "messages": [{"role": "user",
                      "content": f"Story number {i}: write a long story about a dragon."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "cache_prompt": False,
    }
    sent = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    async with client.stream("POST", f"{url}/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    if first is None:
        raise RuntimeError(f"{url}: stream {i} produced no text")
    n = usage["completion_tokens"] if usage else chunks
    return {"ttft": first - sent, "tokens": n, "first": first, "last": last, "sent": sent}


async def streams(url: str, count: int, tokens: int) -> dict:
    limits = httpx.Limits(max_connections=count + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        rows = await asyncio.gather(*(one_stream(client, url, i, tokens) for i in range(count)))
    rates = [(r["tokens"] - 1) / max(r["last"] - r["first"], 1e-9) for r in rows]
    wall = max(r["last"] for r in rows) - min(r["sent"] for r in rows)
    return {
        # Every stream decodes at once, so their rates add up.
        "decode": sum(rates),
        "ttft": statistics.median(r["ttft"] for r in rows),
        "end_to_end": sum(r["tokens"] for r in rows) / wall,
    }


def serve_and_measure(cmd: list, url: str, tokens: int, log: Path) -> dict:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            health = url.removesuffix("/v1") + "/health"
            deadline = time.time() + 600
            while True:
                if proc.poll() is not None:
                    sys.exit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
                try:
                    if httpx.get(health, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    sys.exit(f"{cmd[0]} did not become healthy; see {log}")
                time.sleep(0.5)
            asyncio.run(streams(url, 1, 8))  # warm-up: pages the weights in
            return {n: asyncio.run(streams(url, n, tokens)) for n in (1, 16)}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="directory of llama-server and llama-bench")
    ap.add_argument("--r1serve", type=Path, required=True, help="the r1serve binary")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per stream")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for llama.cpp")
    ap.add_argument("--logs", type=Path, default=Path("/tmp"), help="where the server logs go")
    ap.add_argument("models", nargs="+", metavar="MODEL[=GGUF]")
    a = ap.parse_args()

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, ISA: {cpu_isa()}")
    if os.environ.get("R1SERVE_ISA"):
        print(f"r1serve capped at R1SERVE_ISA={os.environ['R1SERVE_ISA']}; llama.cpp from {a.llama_bin}")
    print(f"load average before: {load_average()}")
    memcpy = memcpy_bandwidth(os.cpu_count())
    bench_rows, serve_rows = [], []
    for arg in a.models:
        model, _, gguf = arg.partition("=")
        model = Path(model)
        gguf = Path(gguf) if gguf else model
        name = model.name.removesuffix(".gguf")
        lb = llama_bench(a.llama_bin, gguf, a.threads, a.tokens)
        gen = r1serve_generate(a.r1serve, model, a.tokens)
        bench_rows.append((name, lb["tg"], gen, lb["pp"], weight_bytes(gguf), weight_bytes(model)))
        port = free_port()
        ctx = 16 * (a.tokens + 256)
        ll = serve_and_measure(
            [str(a.llama_bin / "llama-server"), "-m", str(gguf), "-np", "16", "-c", str(ctx),
             "-t", str(a.threads), "--alias", "bench", "--host", "127.0.0.1", "--port", str(port)],
            f"http://127.0.0.1:{port}/v1", a.tokens, a.logs / f"llama-server-{name}.log")
        port = free_port()
        r1 = serve_and_measure(
            [str(a.r1serve), "serve", "--model", str(model), "--max-num-seqs", "16",
             "--no-prefix-caching", "--served-model-name", "bench",
             "--host", "127.0.0.1", "--port", str(port)],
            f"http://127.0.0.1:{port}/v1", a.tokens, a.logs / f"r1serve-{name}.log")
        serve_rows.append((name, ll, r1))

    print(f"load average after: {load_average()}\n")
    print(f"### In process, single stream: llama-bench tg{a.tokens} vs `r1serve generate` (tokens/s)\n")
    print(f"memcpy over {os.cpu_count()} threads: {memcpy / 1e9:.2f} GB/s. Weight GB/s: the checkpoint's "
          "tensor bytes × tokens/s; of memcpy: that over the memcpy's bytes/s.\n")
    print(f"| model | llama-bench tg{a.tokens} | r1serve generate | ratio | llama.cpp weight GB/s "
          "| r1serve weight GB/s | r1serve of memcpy | llama-bench pp512 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tg, gen, pp, lbytes, rbytes in bench_rows:
        print(f"| {name} | {tg:.1f} | {gen:.1f} | {gen / tg:.2f}× | {lbytes * tg / 1e9:.2f} "
              f"| {rbytes * gen / 1e9:.2f} | {rbytes * gen / memcpy:.0%} | {pp:.1f} |")
    print(f"\n### Streaming chat through the servers, {a.tokens} tokens, ignore_eos, no prompt cache\n")
    print("| model | streams | llama-server decode tok/s | r1serve decode tok/s | ratio "
          "| llama-server TTFT | r1serve TTFT | TTFT ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ll, r1 in serve_rows:
        for n in (1, 16):
            x, y = ll[n], r1[n]
            print(f"| {name} | {n} | {x['decode']:.1f} | {y['decode']:.1f} | {y['decode'] / x['decode']:.2f}× "
                  f"| {x['ttft'] * 1e3:.0f} ms | {y['ttft'] * 1e3:.0f} ms | {y['ttft'] / x['ttft']:.2f}× |")
    print("\nDecode tok/s: (tokens − 1) over the time from a stream's first to its last token, summed "
          "over the concurrent streams; TTFT: median time from request to first text.")


if __name__ == "__main__":
    main()
