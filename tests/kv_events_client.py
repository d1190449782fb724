"""A KV-cache event subscriber written from the documented wire format
(src/kv_events/wire.rs, which follows vLLM's kv_events.py): pyzmq for the
three frames, msgpack for the EventBatch. Drives a live r1serve with a small
KV cache and checks that

- a prompt's full blocks arrive as BlockStored events whose token ids are
  the prompt's ids (from /tokenize) block by block, chained by parent hash,
  each hash the block's own (r1serve's SHA-256 chain, last 8 bytes);
- filling the cache with other prompts evicts them: BlockRemoved names each
  of those hashes;
- sequence numbers count up by one from the first message.

Environment: OPENAI_BASE_URL, KV_EVENTS_ENDPOINT, KV_EVENTS_TOPIC,
KV_BLOCK_SIZE. Prints the number of messages received.
"""

import hashlib
import json
import os
import struct
import sys
import time
import urllib.request

import msgpack
import zmq

BASE = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
ENDPOINT = os.environ["KV_EVENTS_ENDPOINT"]
TOPIC = os.environ["KV_EVENTS_TOPIC"]
BLOCK = int(os.environ["KV_BLOCK_SIZE"])


def fail(message):
    print(message)
    sys.exit(1)


def post(path, body):
    request = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def block_hash(parent, tokens):
    """r1serve's chained block hash (kv_cache::block_pool::hash_block)."""
    h = hashlib.sha256()
    if parent is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + parent)
    h.update(struct.pack("<Q", len(tokens)))
    for t in tokens:
        h.update(struct.pack("<I", t))
    h.update(struct.pack("<Q", 0))
    return h.digest()


def external(digest):
    return int.from_bytes(digest[-8:], "big")


class Subscriber:
    def __init__(self):
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.connect(ENDPOINT)
        self.socket.setsockopt_string(zmq.SUBSCRIBE, TOPIC)
        self.seqs = []
        self.events = []

    def drain(self, quiet_ms=300, deadline_s=20):
        """Reads messages until none arrive for `quiet_ms`."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and self.socket.poll(quiet_ms):
            frames = self.socket.recv_multipart()
            if len(frames) != 3:
                fail(f"{len(frames)} frames, expected topic, seq, payload")
            topic, seq, payload = frames
            if topic.decode() != TOPIC or len(seq) != 8:
                fail(f"bad frames: topic {topic!r}, seq {seq!r}")
            self.seqs.append(int.from_bytes(seq, "big"))
            batch = msgpack.unpackb(payload, raw=False)
            if len(batch) != 3 or not isinstance(batch[0], float):
                fail(f"not an EventBatch[ts, events, dp_rank]: {batch}")
            if abs(batch[0] - time.time()) > 60:
                fail(f"batch timestamp {batch[0]} is not now")
            self.events.extend(batch[1])


def stored_blocks(events):
    """(hash, parent, tokens) of each block stored, in order."""
    blocks = []
    for event in events:
        if event[0] != "BlockStored":
            continue
        tag, hashes, parent, tokens, block_size, lora_id, medium = event
        if block_size != BLOCK or lora_id is not None or medium != "cpu":
            fail(f"bad BlockStored fields: {event}")
        if len(tokens) != len(hashes) * BLOCK:
            fail(f"{len(tokens)} tokens for {len(hashes)} blocks")
        for i, h in enumerate(hashes):
            blocks.append((h, parent, tokens[i * BLOCK:(i + 1) * BLOCK]))
            parent = h
    return blocks


def removed_hashes(events):
    removed = set()
    for event in events:
        if event[0] == "BlockRemoved":
            tag, hashes, medium = event
            if medium != "cpu":
                fail(f"bad BlockRemoved: {event}")
            removed.update(hashes)
    return removed


def main():
    sub = Subscriber()
    time.sleep(0.5)  # the PUB side learns of the subscription asynchronously
    prompt = " ".join(f"item{i}" for i in range(40))
    ids = post("/tokenize", {"prompt": prompt})["tokens"]
    full = len(ids) // BLOCK
    if full < 2:
        fail(f"prompt of {len(ids)} tokens fills fewer than two blocks")
    post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
    sub.drain()
    blocks = stored_blocks(sub.events)
    if len(blocks) != full:
        fail(f"{len(blocks)} blocks stored, expected {full}: {sub.events}")
    parent_digest = None
    parent = None
    mine = set()
    for i, (h, event_parent, tokens) in enumerate(blocks):
        if tokens != ids[i * BLOCK:(i + 1) * BLOCK]:
            fail(f"block {i} tokens {tokens} are not the prompt's")
        if event_parent != parent:
            fail(f"block {i} parent {event_parent}, expected {parent}")
        digest = block_hash(parent_digest, tokens)
        if h != external(digest):
            fail(f"block {i} hash {h} is not its tokens' hash {external(digest)}")
        parent_digest, parent = digest, h
        mine.add(h)

    # Other prompts, together more blocks than the cache holds, so every
    # free block is handed out again: the first prompt's are evicted.
    pool_blocks = int(os.environ["KV_NUM_BLOCKS"])
    used = 0
    n = 0
    while used <= 2 * pool_blocks:
        other = " ".join(f"o{n}w{i}" for i in range(30))
        used += len(post("/tokenize", {"prompt": other})["tokens"]) // BLOCK + 1
        post("/v1/completions", {"prompt": other, "max_tokens": 1})
        n += 1
    sub.drain()
    removed = removed_hashes(sub.events)
    if not mine <= removed:
        fail(f"blocks {mine - removed} never reported removed")
    if not sub.seqs or sub.seqs != list(range(sub.seqs[0], sub.seqs[0] + len(sub.seqs))):
        fail(f"sequence numbers not consecutive: {sub.seqs}")
    print(len(sub.seqs))


main()
