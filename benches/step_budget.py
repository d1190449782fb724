#!/usr/bin/env python3
"""What the engine's step budget (--max-num-batched-tokens) costs and buys.

For each budget, one `r1serve serve` at a time on the same model:
  - prefill: a long prompt through /v1/completions (max_tokens 1, no prefix
    cache), three requests, prompt tokens per second;
  - TTFT: 16 concurrent streaming chats (benches/llamacpp/compare.py's
    prompts and driver), two bursts, median time to first token;
  - stall: 8 streams decode while the long prompt arrives; the longest gap
    between two of their chunks meanwhile, and the prompt's prefill time.
    With ignore_eos a stream's end-of-text token adds no text, so a longest
    gap can span two steps.

Usage: python3 benches/step_budget.py R1SERVE_BINARY MODEL [BUDGET ...]
(default budgets 2048 256 128). Needs httpx (the tests' venv has it). Run it
on an otherwise idle machine; R1SERVE_ISA caps r1serve's kernels as usual.
"""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent / "llamacpp"))
import compare  # noqa: E402

LONG_PROMPT = " ".join(f"item{i} is followed by item{i + 1}." for i in range(250))


def serve(binary: str, model: str, budget: str):
    port = compare.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "serve", "--model", model, "--max-num-seqs", "16", "--no-prefix-caching",
         "--max-num-batched-tokens", budget, "--served-model-name", "bench", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while True:
        if proc.poll() is not None:
            sys.exit(f"{binary} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            sys.exit(f"{binary} did not become healthy")
        time.sleep(0.3)


def prefill(url: str) -> tuple[int, list[float]]:
    rates = []
    for rep in range(3):
        sent = time.perf_counter()
        body = {"model": "bench", "prompt": f"{rep} {LONG_PROMPT}", "max_tokens": 1}
        usage = httpx.post(url + "/v1/completions", json=body, timeout=600).json()["usage"]
        rates.append(usage["prompt_tokens"] / (time.perf_counter() - sent))
    return usage["prompt_tokens"], rates


async def stall(url: str) -> tuple[float, float]:
    gaps: list[tuple[float, float]] = []
    arrived: list[tuple[float, float]] = []

    async def stream(client: httpx.AsyncClient, i: int) -> None:
        body = {"model": "bench", "messages": [{"role": "user", "content": f"Story {i}: a dragon."}],
                "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
        last = None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append((now, now - last))
                    last = now

    async def long_prompt(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(3)
        sent = time.perf_counter()
        body = {"model": "bench", "prompt": LONG_PROMPT, "max_tokens": 1}
        await client.post(url + "/v1/completions", json=body)
        arrived.append((sent, time.perf_counter() - sent))

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(stream(client, i) for i in range(8)), long_prompt(client))
    sent, took = arrived[0]
    return took, max(g for t, g in gaps if sent <= t <= sent + took + 1)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, model = sys.argv[1], sys.argv[2]
    budgets = sys.argv[3:] or ["2048", "256", "128"]
    print(f"CPU: {compare.cpu_name()}, ISA: {compare.cpu_isa()}; model {Path(model).name}\n")
    print("| budget | long prompt | prefill tok/s (3 runs) | median TTFT, 16 chats (2 bursts) "
          "| prefill with 8 streams decoding | their longest gap |")
    print("|---|---|---|---|---|---|")
    for budget in budgets:
        proc, url = serve(binary, model, budget)
        try:
            asyncio.run(compare.streams(url + "/v1", 1, 8))  # warm-up: pages the weights in
            tokens, rates = prefill(url)
            ttft = [asyncio.run(compare.streams(url + "/v1", 16, 16))["ttft"] for _ in range(2)]
            took, gap = asyncio.run(stall(url))
        finally:
            proc.terminate()
            proc.wait()
        print(f"| {budget} | {tokens} tokens | {', '.join(f'{r:.1f}' for r in rates)} "
              f"| {', '.join(f'{t * 1e3:.0f}' for t in ttft)} ms | {took * 1e3:.0f} ms "
              f"| {gap * 1e3:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
