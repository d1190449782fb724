#!/usr/bin/env python3
"""Echoed prompt logprobs from a batch of token prompts, checked against HF transformers.

Run by `tests/completion_batches.rs` against an r1serve serving the bf16 Qwen2.5-Coder-0.5B
directory (`R1SERVE_HF_DIR`) with f32 activations and an f32 KV cache; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x R1SERVE_HF_DIR=<dir> \\
        python3 tests/echo_logprobs_client.py

This is the request lm-evaluation-harness's `local-completions` sends to score continuations
(a batch of token lists, `echo`, `logprobs`, `max_tokens` 1). transformers, run here on the
same directory in float32, is the reference:
- choice `i` answers prompt `i` and echoes its text;
- every prompt token after the first has its logprob within the tolerance below, and the
  largest of its alternatives equals its own logprob exactly when the reference's most
  likely token is that token (positions where the reference's two best are closer than the
  tolerance are left out: either answer is right there);
- the generated token is the reference's greedy one (same proviso), with its logprob.

Tolerance: the model parity tests accept logits within 1e-3 of the largest |logit| of the
row (f32 on both sides, summed in different orders; tests/common/parity.rs). A logprob is a
logit minus the row's log-sum-exp, which moves by at most as much as the largest logit
does, so a logprob may be off by twice that: 2e-3 x max|logit|, per row.
Exits non-zero on the first failed check.
"""

import os
import sys

import openai
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
]
ALTERNATIVES = 2


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main():
    directory = os.environ["R1SERVE_HF_DIR"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    model.eval()
    client = openai.OpenAI()
    name = client.models.list().data[0].id
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]

    reply = client.completions.create(
        model=name, prompt=prompts, max_tokens=1, temperature=0, echo=True,
        logprobs=ALTERNATIVES,
    )
    if [c.index for c in reply.choices] != list(range(len(prompts))):
        fail(f"choice indices {[c.index for c in reply.choices]}")
    checked = 0
    for ids, choice in zip(prompts, reply.choices):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        got = choice.logprobs
        if len(got.tokens) != len(ids) + 1:
            fail(f"{len(got.tokens)} tokens for a prompt of {len(ids)} and one generated")
        if not choice.text.startswith(tokenizer.decode(ids)):
            fail(f"echo {choice.text!r} does not start with the prompt")
        if got.token_logprobs[0] is not None or got.top_logprobs[0] is not None:
            fail("the first prompt token has logprobs")
        for p in range(1, len(ids) + 1):
            row = logprobs[p - 1]
            tolerance = 2e-3 * logits[p - 1].abs().max().item()
            token = ids[p] if p < len(ids) else int(row.argmax())
            top2 = row.topk(2)
            ambiguous = (top2.values[0] - top2.values[1]).item() <= tolerance
            if p == len(ids):
                if ambiguous:
                    continue
                want = tokenizer.decode([token])
                if got.tokens[p] != want:
                    fail(f"prompt {PROMPTS.index(tokenizer.decode(ids))}: generated "
                         f"{got.tokens[p]!r}, reference's greedy token is {want!r}")
            own = got.token_logprobs[p]
            ref = row[token].item()
            if abs(own - ref) > tolerance:
                fail(f"position {p}: logprob {own}, transformers {ref} (tolerance {tolerance})")
            top = got.top_logprobs[p]
            if len(top) > ALTERNATIVES + 1 or own not in top.values():
                fail(f"position {p}: alternatives {top} lack the token's own {own}")
            if not ambiguous and (max(top.values()) == own) != (int(row.argmax()) == token):
                fail(f"position {p}: alternatives {top}, reference's best "
                     f"{tokenizer.decode([int(row.argmax())])!r}")
            checked += 1
    print(f"{checked} logprobs within 2e-3 x max|logit| of transformers'")


if __name__ == "__main__":
    main()
