#!/usr/bin/env python3
"""Tool calling through the official `openai` Python package, against a live r1serve
serving Qwen2.5-0.5B with the Hermes tool-call parser.

Run by `tests/server.rs` (test `qwen_calls_tools`) against the server it starts; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x python3 tests/openai_tools_client.py

The round trip is the one an agent makes: the model calls a tool, the client runs it and
sends the result back as a `tool` message after the assistant's call, and the model
answers. Greedy decoding makes the model's choices reproducible. Whatever the first reply
is, its wire format is checked and streaming must equal non-streaming; when the model
writes no parsable call (this 0.5B model writes bare JSON), the call turn sent back is the
client's own, so the tool-result turn and final answer are exercised either way.
Exits non-zero on the first failed check.
"""

import json
import sys

import openai

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                },
                "required": ["city"],
            },
        },
    }
]


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def streamed(client, **request):
    """Content, calls as (id, name, arguments) and finish_reason of a streamed reply."""
    content, calls, finish = "", [], None
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.id is not None:
                    check(piece.index == len(calls), f"call index {piece.index}")
                    check(piece.type == "function", f"piece type {piece.type}")
                    check(piece.function.name, "first piece names the function")
                    calls.append([piece.id, piece.function.name, piece.function.arguments or ""])
                else:
                    check(piece.function.name is None, "name only in the first piece")
                    calls[piece.index][2] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish


def main():
    client = openai.OpenAI(max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Use the tools you are given."},
        {"role": "user", "content": "What is the weather like in Paris right now? Use get_weather."},
    ]
    request = dict(model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=64)

    reply = client.chat.completions.create(**request)
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    for call in calls:
        check(call.id.startswith("call_"), f"call id {call.id}")
        check(call.type == "function", f"call type {call.type}")
        check(call.function.name == "get_weather", f"function {call.function.name}")
        arguments = json.loads(call.function.arguments)
        check(isinstance(arguments, dict), f"arguments {arguments}")
    if calls:
        check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}")
    else:
        check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
        check(isinstance(choice.message.content, str), "content without calls")

    content, stream_calls, finish = streamed(client, **request)
    check(finish == choice.finish_reason, f"streamed finish_reason {finish}")
    check(content == (choice.message.content or ""), f"streamed content {content!r}")
    check(
        [(n, a) for _, n, a in stream_calls]
        == [(c.function.name, c.function.arguments) for c in calls],
        f"streamed calls {stream_calls} differ from {calls}",
    )

    if calls:
        assistant = choice.message.model_dump(exclude_none=True)
    else:
        # Qwen2.5-Coder-0.5B at T=0 writes the call's JSON without the <tool_call>
        # tags here (so it is content, as in vLLM); the client then makes the call
        # itself, which is the turn it sends back.
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                }
            ],
        }
    call = assistant["tool_calls"][0]
    # The client runs the tool and sends the result back.
    messages.append(assistant)
    messages.append(
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature_c": 21, "sky": "sunny"})}
    )
    final = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=64
    )
    answer = final.choices[0]
    check(not answer.message.tool_calls, f"final answer calls again: {answer.message}")
    check(answer.finish_reason in ("stop", "length"), f"final finish_reason {answer.finish_reason}")
    check(isinstance(answer.message.content, str) and answer.message.content.strip(), "final content")
    check("21" in answer.message.content or "sunny" in answer.message.content.lower(),
          f"final answer ignores the tool result: {answer.message.content!r}")

    try:
        client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice="required"
        )
        check(False, "tool_choice required must fail")
    except openai.BadRequestError as error:
        check("required" in str(error), f"error names the value: {error}")

    print("openai tools client: all checks passed")


if __name__ == "__main__":
    main()
