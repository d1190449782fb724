"""Schemathesis hooks for the `schemathesis_conformance` test in server.rs.

The spec allows up to 128 choices and completions as long as the context,
and the server honours both; on a CPU-only CI box such a request takes
minutes. Valid `n` and length values are therefore clamped to small ones,
while invalid values pass through untouched so that their rejection is
still exercised.
"""

import schemathesis

MAX_N = 2
MAX_TOKENS = 4
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def map_body(ctx, body):
    if ctx.operation.path not in GENERATION_PATHS or not isinstance(body, dict):
        return body
    n = body.get("n")
    if _is_int(n) and 1 <= n <= 128:
        body["n"] = min(n, MAX_N)
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(field)
        if _is_int(value) and value >= 1:
            body[field] = min(value, MAX_TOKENS)
    # Without a limit a chat request generates up to the end of the context.
    if ctx.operation.path == "/v1/responses":
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = MAX_TOKENS
    elif body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    min_tokens = body.get("min_tokens")
    if _is_int(min_tokens) and min_tokens >= 0:
        body["min_tokens"] = min(min_tokens, MAX_TOKENS)
    return body
