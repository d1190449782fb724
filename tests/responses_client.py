#!/usr/bin/env python3
"""OpenAI's Responses API through the official `openai` Python package, against a live r1serve
serving Qwen2.5-0.5B with a reasoning template (its generation prompt opens `<think>`) and the
Hermes tool-call parser.

Run by `tests/responses.rs` against the server it starts; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x python3 tests/responses_client.py

The chat route is the reference for what the model says (the Responses route must return the
same reasoning, answer, calls and token counts for the same conversation, greedy), the SDK's
own stream accumulator for the event sequence, and `jsonschema` for structured answers:
- a plain question: one `reasoning` item with the chat's `reasoning_content` and one `message`
  with its `content`; usage equals the chat's, reasoning tokens included;
- streamed: the SDK's `responses.stream()` accumulates the same output; sequence numbers run
  0, 1, 2, ... from `response.created` to `response.completed`; every delta belongs to the item
  its `output_index` names, and the deltas add up to the `.done` texts;
- `instructions` and input items (messages with text parts, `function_call` and
  `function_call_output`) template as the equivalent chat messages: same input token count;
- a forced function call returns `function_call` items whose arguments validate against the
  tool's schema, streamed and not;
- `text.format` with a JSON schema yields an answer that validates;
- `max_output_tokens` that cuts the reasoning gives status `incomplete`, streamed and not;
- what needs stored state or hosted tools is a 400 naming the field.
Exits non-zero on the first failed check.
"""

import json
import sys

import jsonschema
import openai

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather",
          "parameters": WEATHER}]
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                                "description": "Current weather",
                                                "parameters": WEATHER}}]
# Reasoning closed by the engine after this many tokens, where the grammar of a forced call
# or a schema takes over (the 0.5B model may otherwise end inside its reasoning).
THINKING = {"thinking_token_budget": 48}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}")
        sys.exit(1)


def items(response, kind):
    return [item for item in response.output if item.type == kind]


def reasoning_text(response):
    return "".join(part.text for item in items(response, "reasoning") for part in item.content or [])


def same_as_chat(client, model, response, chat):
    message = chat.choices[0].message
    check(reasoning_text(response) == (getattr(message, "reasoning_content", None) or ""),
          f"reasoning {reasoning_text(response)!r} vs chat {message}")
    check(response.output_text == (message.content or ""),
          f"answer {response.output_text!r} vs chat {message.content!r}")
    check(response.usage.input_tokens == chat.usage.prompt_tokens,
          f"input tokens {response.usage} vs chat {chat.usage}")
    check(response.usage.output_tokens == chat.usage.completion_tokens,
          f"output tokens {response.usage} vs chat {chat.usage}")
    check(response.usage.output_tokens_details.reasoning_tokens
          == chat.usage.completion_tokens_details.reasoning_tokens,
          f"reasoning tokens {response.usage} vs chat {chat.usage}")


def streamed(client, **request):
    """The SDK's accumulated final response and the raw events, checked for order."""
    events = []
    with client.responses.stream(**request) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_response()
    check([e.sequence_number for e in events] == list(range(len(events))),
          f"sequence numbers {[e.sequence_number for e in events]}")
    check(events[0].type == "response.created" and events[1].type == "response.in_progress",
          f"opening events {[e.type for e in events[:2]]}")
    check(events[-1].type == "response.completed", f"last event {events[-1].type}")
    texts = {}
    for event in events:
        if event.type in ("response.output_text.delta", "response.reasoning_text.delta"):
            item = final.output[event.output_index]
            check(item.id == event.item_id, f"{event.type} names {event.item_id}, not {item.id}")
            texts[event.item_id] = texts.get(event.item_id, "") + event.delta
        if event.type in ("response.output_text.done", "response.reasoning_text.done"):
            check(texts.get(event.item_id, "") == event.text,
                  f"deltas {texts.get(event.item_id)!r} vs done {event.text!r}")
        if event.type == "response.function_call_arguments.done":
            item = final.output[event.output_index]
            check(item.arguments == event.arguments, f"arguments {item.arguments} vs {event}")
    return final, events


def main():
    client = openai.OpenAI()
    model = client.models.list().data[0].id
    question = "What is 12 + 30? Think briefly."

    # A plain question, against the chat route.
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=96,
        temperature=0)
    response = client.responses.create(model=model, input=question, max_output_tokens=96,
                                       temperature=0)
    check(response.status == "completed", f"status {response.status}")
    check([item.type for item in response.output][0] == "reasoning",
          f"items {[item.type for item in response.output]}")
    same_as_chat(client, model, response, chat)
    final, _ = streamed(client, model=model, input=question, max_output_tokens=96,
                        temperature=0)
    check([i.type for i in final.output] == [i.type for i in response.output],
          f"streamed items {[i.type for i in final.output]}")
    check(final.output_text == response.output_text and
          reasoning_text(final) == reasoning_text(response),
          f"streamed {final.output_text!r} vs {response.output_text!r}")

    # Instructions and input items template as the equivalent chat.
    conversation = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
    ]
    chat_messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    chat = client.chat.completions.create(model=model, messages=chat_messages, tools=CHAT_TOOLS,
                                          max_tokens=48, temperature=0)
    response = client.responses.create(model=model, instructions="Answer in one sentence.",
                                       input=conversation, tools=TOOLS, max_output_tokens=48,
                                       temperature=0)
    same_as_chat(client, model, response, chat)

    # A forced call, streamed and not, after reasoning bounded by vLLM's
    # `thinking_token_budget` (a chat field the route passes on).
    for stream in (False, True):
        request = dict(model=model, input="Will it rain in Lyon this week?", tools=TOOLS,
                       tool_choice={"type": "function", "name": "get_weather"},
                       max_output_tokens=200, temperature=0, extra_body=THINKING)
        result = streamed(client, **request)[0] if stream else client.responses.create(**request)
        calls = items(result, "function_call")
        check(calls and all(c.name == "get_weather" for c in calls),
              f"stream={stream}: calls {result.output}")
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), WEATHER)
            check(call.call_id.startswith("call_") and call.id.startswith("fc_"), f"{call}")
        check(not items(result, "message"), f"a call-only reply has no message: {result.output}")

    # A structured answer.
    response = client.responses.create(
        model=model, input="Invent a person.", max_output_tokens=400, temperature=0,
        extra_body=THINKING,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                         "strict": True}})
    check(response.status == "completed", f"structured status {response.status}")
    jsonschema.validate(json.loads(response.output_text), PERSON)

    # Cut inside the reasoning.
    response = client.responses.create(model=model, input=question, max_output_tokens=4)
    check(response.status == "incomplete" and
          response.incomplete_details.reason == "max_output_tokens",
          f"cut: {response.status} {response.incomplete_details}")
    check([i.type for i in response.output] == ["reasoning"] and
          response.output[0].status == "incomplete", f"cut items {response.output}")
    final, _ = streamed(client, model=model, input=question, max_output_tokens=4)
    check(final.status == "incomplete", f"streamed cut: {final.status}")

    # What a stateless server with function tools only cannot serve.
    for extra, param in [({"previous_response_id": "resp_123"}, "previous_response_id"),
                         ({"tools": [{"type": "web_search"}]}, "tools"),
                         ({"input": [{"role": "user", "content": [
                             {"type": "input_image", "image_url": "http://x/y.png"}]}]},
                          "input")]:
        request = dict(model=model, input="hi", max_output_tokens=4)
        request.update(extra)
        try:
            client.responses.create(**request)
            check(False, f"{extra} was accepted")
        except openai.BadRequestError as error:
            check(error.body.get("param") == param, f"{extra}: {error.body}")
    print("responses: all checks passed")


if __name__ == "__main__":
    main()
