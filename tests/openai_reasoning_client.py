#!/usr/bin/env python3
"""The reasoning field dialects through the official `openai` Python package, against a live
r1serve whose chat template opens the reasoning (Qwen2.5-0.5B with an R1-style template).

Run by `tests/server.rs` (test `reasoning_field_dialects`) against the server it starts, which
passes its `--reasoning-field` value as R1SERVE_REASONING_FIELD; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x \
        R1SERVE_REASONING_FIELD=reasoning python3 tests/openai_reasoning_client.py

For the server's field and for each per-request override (`extra_body={"reasoning_field": …}`),
at temperature 0 with two choices: the client reads the reasoning under exactly the configured
name(s) (`message.reasoning_content` / `message.reasoning`, which the client keeps as extra
fields), `both` carries identical text under each name, and the stream concatenated per choice
equals the non-streamed reply in every field: reasoning under each name, content, tool calls,
finish reason and usage. Assistant turns sent back with either name are accepted; two different
texts under the two names are a 400 naming `messages[i].reasoning`.
Exits non-zero on the first failed check.
"""

import os
import sys

import openai

NAMES = ("reasoning_content", "reasoning")
FIELDS = {"reasoning_content": ("reasoning_content",), "reasoning": ("reasoning",), "both": NAMES}


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def extras(obj):
    """The fields the client does not model, where both reasoning names land."""
    return obj.model_extra or {}


def reply_fields(message, finish_reason):
    """Every field a client reads from one non-streamed choice."""
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    fields = {name: extras(message).get(name) for name in NAMES}
    # A stream cannot tell null content (the output ended in the reasoning)
    # from empty content: every stream opens with content "".
    fields.update(content=message.content or "", tool_calls=calls, finish_reason=finish_reason)
    return fields


def streamed_fields(client, n, request):
    """The same fields per choice, concatenated from the stream, and its usage."""
    out = [
        {"reasoning_content": None, "reasoning": None, "content": "", "tool_calls": [], "finish_reason": None}
        for _ in range(n)
    ]
    usage = None
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request)
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            fields, delta = out[choice.index], choice.delta
            for name in NAMES:
                piece = extras(delta).get(name)
                if piece is not None:
                    fields[name] = (fields[name] or "") + piece
            fields["content"] += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.id is not None:
                    fields["tool_calls"].append([piece.id, piece.function.name, piece.function.arguments or ""])
                else:
                    fields["tool_calls"][piece.index][2] += piece.function.arguments or ""
            fields["finish_reason"] = choice.finish_reason or fields["finish_reason"]
    for fields in out:
        fields["tool_calls"] = [tuple(call) for call in fields["tool_calls"]]
    return out, usage


def usage_fields(usage):
    details = usage.completion_tokens_details
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, details and details.reasoning_tokens)


def check_dialect(client, model, server_field, override):
    names = FIELDS[override or server_field]
    what = f"server {server_field}, request {override}"
    request = dict(
        model=model,
        # This model, greedy, reasons briefly and closes its reasoning for
        # this question. Whether it then answers or ends at once depends on
        # near-ties that each CPU's kernels round their own way (an AMX Xeon
        # ended right after "Yes, 7 is a prime number."), so min_tokens keeps
        # the end of sequence impossible for 24 tokens: the answer is never
        # empty, and the stream is compared on both fields.
        messages=[
            {
                "role": "user",
                "content": "Is 7 prime? Reason briefly inside <think></think>, then answer yes or no.",
            }
        ],
        temperature=0,
        max_tokens=48,
        n=2,
        extra_body={"min_tokens": 24, **({"reasoning_field": override} if override else {})},
    )
    reply = client.chat.completions.create(**request)
    check(len(reply.choices) == 2, f"{what}: two choices")
    expected = []
    for choice in sorted(reply.choices, key=lambda c: c.index):
        message = choice.message
        for name in NAMES:
            if name in names:
                text = getattr(message, name, None)
                check(isinstance(text, str) and text, f"{what}: {name} is the reasoning, got {text!r}")
            else:
                check(name not in extras(message), f"{what}: {name} must be absent, got {extras(message)}")
        if len(names) == 2:
            check(message.reasoning == message.reasoning_content, f"{what}: both names carry the same text")
        expected.append(reply_fields(message, choice.finish_reason))
    # n choices at temperature 0 are the same sample twice.
    check(expected[0] == expected[1], f"{what}: greedy choices differ: {expected}")
    check(expected[0]["content"], f"{what}: the model answered after reasoning: {expected[0]}")
    streamed, usage = streamed_fields(client, 2, request)
    for index, (want, got) in enumerate(zip(expected, streamed)):
        check(got == want, f"{what}: choice {index} streamed {got} but replied {want}")
    check(usage is not None, f"{what}: a usage chunk")
    check(usage_fields(usage) == usage_fields(reply.usage), f"{what}: usage {usage} vs {reply.usage}")
    return expected[0]


def check_history(client, model, answer):
    """An assistant turn sent back under either name is accepted; a conflict is named."""
    reasoning = answer["reasoning_content"] or answer["reasoning"]
    for name in NAMES:
        messages = [
            {"role": "user", "content": "Is 7 prime?"},
            {"role": "assistant", "content": answer["content"], name: reasoning},
            {"role": "user", "content": "And 9?"},
        ]
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=4)
        check(reply.choices[0].finish_reason in ("stop", "length"), f"history with {name}")
    turn = {"role": "assistant", "content": "42", "reasoning": "a", "reasoning_content": "b"}
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "q"}, turn], max_tokens=1
        )
        check(False, "different reasoning texts must be refused")
    except openai.BadRequestError as error:
        param = error.body.get("param") if isinstance(error.body, dict) else None
        check(param == "messages[1].reasoning", f"the 400 names messages[1].reasoning: {error.body}")
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "q"}],
            max_tokens=1,
            extra_body={"reasoning_field": "thoughts"},
        )
        check(False, "an unknown reasoning_field must be refused")
    except openai.BadRequestError as error:
        param = error.body.get("param") if isinstance(error.body, dict) else None
        check(param == "reasoning_field", f"the 400 names reasoning_field: {error.body}")


def main():
    server_field = os.environ["R1SERVE_REASONING_FIELD"]
    check(server_field in FIELDS, f"R1SERVE_REASONING_FIELD={server_field}")
    client = openai.OpenAI(max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    answers = [check_dialect(client, model, server_field, o) for o in (None, *FIELDS)]
    reasoning = [a["reasoning_content"] or a["reasoning"] for a in answers]
    check(len(set(reasoning)) == 1, f"the reasoning text is the same under every name: {reasoning}")
    check_history(client, model, answers[0])
    print("ok")


if __name__ == "__main__":
    main()
