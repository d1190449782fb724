#!/usr/bin/env python3
"""Drives a live r1serve with the official `openai` Python package.

Run by `tests/server.rs` (test `smollm_serves_the_openai_api`) against the
server it starts; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=KEY python3 tests/openai_client.py

Needs `pip install -r tests/requirements.txt`. Exits non-zero on the first
failed check, so the calling test fails with this script's output.
"""

import sys

import openai


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    client = openai.OpenAI(max_retries=0, timeout=120)

    models = client.models.list()
    check(len(models.data) == 1, f"expected one model, got {models.data}")
    model = models.data[0].id
    check(client.models.retrieve(model).id == model, "models.retrieve")

    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0
    )
    choice = reply.choices[0]
    check(choice.message.role == "assistant", "assistant role")
    check(isinstance(choice.message.content, str) and choice.message.content, "content")
    check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
    usage = reply.usage
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, "usage sum")

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, stream_usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            stream_usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    check("".join(parts) == choice.message.content, "streamed chat text equals non-streamed")
    check(finish == choice.finish_reason, "streamed finish_reason")
    check(
        stream_usage is not None
        and stream_usage.completion_tokens == usage.completion_tokens,
        "stream usage",
    )

    completion = client.completions.create(
        model=model, prompt="The sky is", max_tokens=8, temperature=0
    )
    text = completion.choices[0].text
    check(isinstance(text, str) and text, "completion text")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="The sky is", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    check(streamed == text, "streamed completion equals non-streamed")

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check(False, "unknown model must fail")
    except openai.NotFoundError as error:
        check(error.code == "model_not_found", f"error code {error.code}")

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=5)
        check(False, "temperature 5 must fail")
    except openai.BadRequestError:
        pass

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
