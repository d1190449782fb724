#!/usr/bin/env python3
"""Tool calling through the official `openai` Python package, against a live r1serve
serving Qwen2.5-0.5B with the Hermes tool-call parser.

Run by `tests/server.rs` (test `qwen_calls_tools`) against the server it starts; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x python3 tests/openai_tools_client.py

The round trip is the one an agent makes: the model calls a tool, the client runs it and
sends the result back as a `tool` message after the assistant's call, and the model
answers. Greedy decoding makes the model's choices reproducible. With `tool_choice`
`auto`, whatever the first reply is, its wire format is checked and streaming must equal
non-streaming. With a named `tool_choice` the server's grammar makes the model call that
function with arguments valid under its parameters schema (checked here with the
`jsonschema` package, not by r1serve), and `required` makes it call one or more; the
forced call is the one the round trip sends back. Exits non-zero on the first failed check.
"""

import json
import sys

import jsonschema
import openai

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
    },
    "required": ["city"],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given city.",
            "parameters": SCHEMA,
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

    named = {"type": "function", "function": {"name": "get_weather"}}
    forced = client.chat.completions.create(**request, tool_choice=named)
    forced_choice = forced.choices[0]
    forced_calls = forced_choice.message.tool_calls or []
    check(len(forced_calls) == 1, f"a named tool_choice makes one call: {forced_choice.message}")
    check(forced_choice.finish_reason == "tool_calls", f"finish_reason {forced_choice.finish_reason}")
    check(forced_calls[0].function.name == "get_weather", f"{forced_calls[0]}")
    jsonschema.validate(json.loads(forced_calls[0].function.arguments), SCHEMA)
    content, stream_calls, finish = streamed(client, **request, tool_choice=named)
    check(finish == "tool_calls", f"streamed finish_reason {finish}")
    check(
        [(n, a) for _, n, a in stream_calls]
        == [(c.function.name, c.function.arguments) for c in forced_calls],
        f"streamed forced calls {stream_calls} differ from {forced_calls}",
    )

    required = client.chat.completions.create(**request, tool_choice="required")
    required_calls = required.choices[0].message.tool_calls or []
    check(required_calls, f"tool_choice required makes a call: {required.choices[0].message}")
    for call in required_calls:
        check(call.function.name == "get_weather", f"{call}")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)

    assistant = forced_choice.message.model_dump(exclude_none=True)
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
            model=model, messages=messages, tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
        check(False, "a tool_choice naming an undefined function must fail")
    except openai.BadRequestError as error:
        check("get_time" in str(error), f"error names the function: {error}")

    print("openai tools client: all checks passed")


if __name__ == "__main__":
    main()
