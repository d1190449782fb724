#!/usr/bin/env python3
"""Structured outputs through the official `openai` Python package, against a live r1serve
serving Qwen2.5-0.5B with a reasoning template (its generation prompt opens `<think>`) and
the Hermes tool-call parser.

Run by `tests/structured_outputs.rs` against the server it starts; by hand:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=x python3 tests/structured_client.py

Every answer is validated by the `jsonschema` package here, never by r1serve:
- 10 JSON schemas (nested objects, arrays, enums, bounded numbers, required and optional
  properties, patterned strings) × 5 prompts, sampled at T=0.8: each finished answer
  parses and validates, the reasoning before it is free text (it does not parse as JSON),
  and at most a tenth run to max_tokens (a sample looping inside a string);
- streaming equals non-streaming (same seed) for a structured answer and a forced call;
- a named `tool_choice` makes a call valid under the function's parameters schema;
- a request shaped like Open WebUI's default (its built-in tools, `tool_choice` auto,
  streaming) streams its reasoning and then either an answer or valid `tool_calls` deltas.
Exits non-zero on the first failed check.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {
        "city": {"type": "string"},
        "location": {"type": "object", "properties": {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180}},
            "required": ["lat", "lon"]}},
     "required": ["city", "location"]},
    {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4}},
     "required": ["tags"]},
    {"type": "object", "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["sentiment", "confidence"]},
    {"type": "object", "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "comment": {"type": "string", "maxLength": 60}},
     "required": ["score"]},
    {"type": "object", "properties": {
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "title": {"type": "string"}},
     "required": ["date", "title"]},
    {"type": "object", "properties": {
        "items": {"type": "array", "maxItems": 3, "items": {
            "type": "object",
            "properties": {"product": {"type": "string"},
                           "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["product", "quantity"]}}},
     "required": ["items"]},
    {"type": "object", "properties": {
        "answer": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 80}},
     "required": ["answer"], "additionalProperties": False},
    {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
        "priority": {"enum": ["low", "medium", "high"]},
        "owner": {"type": "object", "properties": {"name": {"type": "string"},
                                                   "email": {"type": "string"}},
                  "required": ["name"]}},
     "required": ["code", "priority"]},
    {"type": "object", "properties": {
        "values": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100},
                   "minItems": 2, "maxItems": 5},
        "unit": {"enum": ["kg", "lb"]}},
     "required": ["values", "unit"]},
]

PROMPTS = [
    "Describe a person you might meet in a café.",
    "Summarize what happened at a small town festival.",
    "Give me data about a city you like.",
    "Invent a support ticket for a broken printer.",
    "Tell me about a product review you read.",
]

# Open WebUI's built-in tools as its default (native) function calling sends them.
OPEN_WEBUI_TOOLS = [
    {"type": "function", "function": {
        "name": "search_web", "description": "Search the public web for information.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "The search query"}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "fetch_url", "description": "Fetch the text content of a web page.",
        "parameters": {"type": "object", "properties": {
            "url": {"type": "string", "description": "The URL to fetch"}},
            "required": ["url"]}}},
    {"type": "function", "function": {
        "name": "get_current_timestamp", "description": "Get the current date and time.",
        "parameters": {"type": "object", "properties": {}}}},
]

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit"]}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city.", "parameters": WEATHER}}

# Reasoning is bounded so that 50 sampled answers fit the test's time; the budget's close
# is the engine's, after which the grammar takes over.
THINKING = {"thinking_token_budget": 48}


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def is_json(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def structured(client, model, schema, prompt, seed):
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt + " Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        temperature=0.8, seed=seed, max_tokens=320, extra_body=THINKING)
    return reply.choices[0]


def schema_case(args):
    client, model, i, j = args
    choice = structured(client, model, SCHEMAS[i], PROMPTS[j], seed=100 * i + j)
    message = choice.message
    where = f"schema {i}, prompt {j}"
    if choice.finish_reason == "length":
        # The grammar bounds the structure, not a string's length: a 0.5B model sampled
        # at T=0.8 sometimes repeats a word inside a string until max_tokens (which
        # answers do depends on the CPU's rounding). Cut, not invalid; main() bounds
        # how many may be.
        return where, None
    check(choice.finish_reason == "stop", f"{where}: finish_reason {choice.finish_reason}")
    try:
        answer = json.loads(message.content)
    except (TypeError, ValueError) as error:
        check(False, f"{where}: answer is not JSON ({error}): {message.content!r}")
    try:
        jsonschema.validate(answer, SCHEMAS[i])
    except jsonschema.ValidationError as error:
        check(False, f"{where}: {error.message}: {message.content!r}")
    reasoning = getattr(message, "reasoning_content", None) or ""
    check(reasoning.strip() and not is_json(reasoning),
          f"{where}: the reasoning is not free text: {reasoning!r}")
    return where, message.content


def streamed(client, **request):
    """Reasoning, content, calls as [name, arguments] and finish_reason of a stream."""
    reasoning, content, calls, finish = "", "", [], None
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.id is not None:
                    check(piece.index == len(calls), f"call index {piece.index}")
                    check(piece.function.name, "the first piece names the function")
                    calls.append([piece.function.name, piece.function.arguments or ""])
                else:
                    check(piece.function.name is None, "the name only in the first piece")
                    calls[piece.index][1] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return reasoning, content, calls, finish


def main():
    client = openai.OpenAI(max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    cases = [(client, model, i, j) for i in range(len(SCHEMAS)) for j in range(len(PROMPTS))]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(schema_case, cases))
    answers = [answer for _, answer in results if answer is not None]
    cut = [where for where, answer in results if answer is None]
    # A systematic fault (a grammar that cannot close, a mask that traps sampling) cuts
    # most answers; a looping sample now and then cuts one or two.
    check(len(cut) <= len(results) // 10,
          f"{len(cut)} of {len(results)} answers ran to max_tokens: {cut}")
    print(f"{len(answers)} structured answers validated, e.g. {answers[0]}; "
          f"{len(cut)} ran to max_tokens: {cut}")

    # Streaming equals non-streaming for a structured answer (same seed).
    request = dict(
        model=model, messages=[{"role": "user", "content": PROMPTS[3] + " Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "ticket", "schema": SCHEMAS[8]}},
        temperature=0.8, seed=7, max_tokens=320, extra_body=THINKING)
    plain = client.chat.completions.create(**request).choices[0]
    reasoning, content, _, finish = streamed(client, **request)
    check(content == plain.message.content, f"streamed {content!r} != {plain.message.content!r}")
    check(reasoning == plain.message.reasoning_content, "streamed reasoning differs")
    check(finish == plain.finish_reason, f"streamed finish_reason {finish}")

    # A named tool_choice forces a valid call, streamed as it is answered.
    named = {"type": "function", "function": {"name": "get_weather"}}
    request = dict(
        model=model, messages=[{"role": "user", "content": "Will it rain in Lyon this week?"}],
        tools=[WEATHER_TOOL] + OPEN_WEBUI_TOOLS, tool_choice=named, temperature=0.8, seed=3,
        max_tokens=320, extra_body=THINKING)
    plain = client.chat.completions.create(**request).choices[0]
    calls = plain.message.tool_calls or []
    check(len(calls) == 1 and calls[0].function.name == "get_weather", f"{plain.message}")
    check(plain.finish_reason == "tool_calls", f"finish_reason {plain.finish_reason}")
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    check(plain.message.reasoning_content, "the forced call comes after free reasoning")
    _, _, stream_calls, finish = streamed(client, **request)
    check(stream_calls == [[calls[0].function.name, calls[0].function.arguments]],
          f"streamed calls {stream_calls}")
    check(finish == "tool_calls", f"streamed finish_reason {finish}")

    # Open WebUI's default request: its tools, tool_choice auto, streaming. This 0.5B
    # model sometimes closes its reasoning and ends without a word (after writing a call
    # as bare JSON in its reasoning, which is not executed): the stream is still checked,
    # and across the requests it must answer or call at least once.
    answered = 0
    for question in ["Write a haiku about the sea.",
                     "Search the web for the latest Rust release and tell me its version.",
                     "What time is it now?"]:
        for seed in (1, 2):
            reasoning, content, calls, finish = streamed(
                client, model=model, messages=[{"role": "user", "content": question}],
                tools=OPEN_WEBUI_TOOLS, tool_choice="auto", temperature=0.6, seed=seed,
                max_tokens=200, extra_body=THINKING)
            check(reasoning.strip(), f"{question}: no reasoning streamed")
            check("<think>" not in content and "</think>" not in content, f"{content!r}")
            check("<tool_call>" not in content, f"{question}: raw markup {content!r}")
            if calls:
                check(finish == "tool_calls", f"{question}: finish_reason {finish}")
                names = {t["function"]["name"]: t["function"]["parameters"]
                         for t in OPEN_WEBUI_TOOLS}
                for name, arguments in calls:
                    check(name in names, f"{question}: unknown function {name}")
                    jsonschema.validate(json.loads(arguments), names[name])
            else:
                check(finish in ("stop", "length"), f"{question}: finish_reason {finish}")
            answered += bool(calls or content.strip())
    check(answered > 0, "no Open WebUI-shaped request got an answer or a call")

    print("structured client: all checks passed")


if __name__ == "__main__":
    main()
