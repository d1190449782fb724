"""Recomputes pass@1, pass@k and cons@k from the raw rows of an
`r1serve eval --out` file, independently of the Rust code, and prints them
as one JSON object. Usage: eval_scores_client.py RESULTS.jsonl K

Conventions (the report's): a repeated (id, sample) row counts once, the
first; pass@k is 1 - C(n-c, k)/C(n, k) with k capped at n; cons@k takes the
answer with most votes, ties to the one seen at the lowest sample index,
and scores its verdict; no answer at all is a miss."""

import json
import math
import sys
from collections import OrderedDict

path, k = sys.argv[1], int(sys.argv[2])
problems = OrderedDict()
with open(path, encoding="utf-8") as f:
    for line in f:
        if not line.strip():
            continue
        row = json.loads(line)
        problems.setdefault(row["id"], {}).setdefault(row["sample"], row)

pass1 = passk = cons = 0.0
for samples in problems.values():
    n = len(samples)
    c = sum(1 for r in samples.values() if r["verdict"] == "correct")
    pass1 += c / n
    kk = min(k, n)
    passk += 1.0 - math.comb(n - c, kk) / math.comb(n, kk)
    votes = {}
    for index in sorted(samples):
        key = samples[index]["vote_key"]
        if key is None:
            continue
        count, first, verdict = votes.get(key, (0, index, samples[index]["verdict"]))
        votes[key] = (count + 1, first, verdict)
    if votes:
        best = max(votes.values(), key=lambda v: (v[0], -v[1]))
        cons += best[2] == "correct"

m = len(problems)
print(json.dumps({"problems": m, "pass_at_1": pass1 / m, "pass_at_k": passk / m, "cons_at_k": cons / m}))
