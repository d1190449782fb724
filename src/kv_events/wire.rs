//! vLLM's KV-cache event wire format (`vllm/distributed/kv_events.py`), so
//! subscribers written for vLLM — llm-d's KV-cache indexer among them —
//! read r1serve unchanged.
//!
//! A message is three ZMQ frames: the topic, an 8-byte big-endian sequence
//! number, and a msgpack `EventBatch`. vLLM encodes its structs with
//! msgspec as `array_like` and its events as a tagged union, so on the wire:
//!
//! - `EventBatch`: `[ts, events, data_parallel_rank]`, `ts` a float of Unix
//!   seconds, the rank `nil` (one engine, no data parallelism);
//! - `["BlockStored", block_hashes, parent_block_hash, token_ids,
//!   block_size, lora_id, medium]`, `lora_id` `nil`, `medium` `"cpu"` (where
//!   r1serve keeps its KV cache);
//! - `["BlockRemoved", block_hashes, medium]`;
//! - `["AllBlocksCleared"]`.
//!
//! Block hashes go out as unsigned 64-bit integers, the last 8 bytes of the
//! SHA-256 block hash read big-endian: what vLLM sends by default
//! (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`) and what llm-d's indexer keys
//! on. r1serve's hashes are its own, not vLLM's: a subscriber matches
//! requests to blocks by the token ids each `BlockStored` carries, not by
//! recomputing hashes.

use rmpv::Value;

use crate::kv_cache::block_pool::BlockHash;
use crate::kv_cache::events::KvEvent;

/// Where the blocks live, vLLM's `medium`.
pub const MEDIUM: &str = "cpu";

/// A block hash as subscribers see it.
pub fn external_hash(hash: &BlockHash) -> u64 {
    let mut tail = [0; 8];
    tail.copy_from_slice(&hash.0[24..]);
    u64::from_be_bytes(tail)
}

fn hashes(hashes: &[BlockHash]) -> Value {
    Value::Array(
        hashes
            .iter()
            .map(|h| Value::from(external_hash(h)))
            .collect(),
    )
}

fn event(event: &KvEvent) -> Value {
    Value::Array(match event {
        KvEvent::BlockStored {
            block_hashes,
            parent,
            token_ids,
            block_size,
        } => vec![
            Value::from("BlockStored"),
            hashes(block_hashes),
            parent.map_or(Value::Nil, |p| Value::from(external_hash(&p))),
            Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
            Value::from(*block_size as u64),
            Value::Nil,
            Value::from(MEDIUM),
        ],
        KvEvent::BlockRemoved { block_hashes } => vec![
            Value::from("BlockRemoved"),
            hashes(block_hashes),
            Value::from(MEDIUM),
        ],
        KvEvent::AllBlocksCleared => vec![Value::from("AllBlocksCleared")],
    })
}

/// The msgpack `EventBatch` of `events` stamped `ts` (Unix seconds).
pub fn encode_batch(ts: f64, events: &[KvEvent]) -> Vec<u8> {
    let batch = Value::Array(vec![
        Value::from(ts),
        Value::Array(events.iter().map(event).collect()),
        Value::Nil,
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &batch).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(last: u8) -> BlockHash {
        let mut h = [0xAA; 32];
        h[31] = last;
        BlockHash(h)
    }

    #[test]
    fn hashes_are_the_last_eight_bytes_big_endian() {
        assert_eq!(external_hash(&hash(7)), 0xAAAA_AAAA_AAAA_AA07);
    }

    #[test]
    fn batch_is_vllms_array_form() {
        let bytes = encode_batch(
            1.5,
            &[
                KvEvent::BlockStored {
                    block_hashes: vec![hash(1), hash(2)],
                    parent: None,
                    token_ids: vec![10, 11, 12, 13],
                    block_size: 2,
                },
                KvEvent::BlockRemoved {
                    block_hashes: vec![hash(1)],
                },
                KvEvent::AllBlocksCleared,
            ],
        );
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let batch = value.as_array().unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].as_f64(), Some(1.5));
        assert!(batch[2].is_nil());
        let events = batch[1].as_array().unwrap();
        let stored = events[0].as_array().unwrap();
        assert_eq!(stored.len(), 7);
        assert_eq!(stored[0].as_str(), Some("BlockStored"));
        assert_eq!(
            stored[1].as_array().unwrap()[1].as_u64(),
            Some(external_hash(&hash(2)))
        );
        assert!(stored[2].is_nil());
        let tokens: Vec<u64> = stored[3]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(tokens, [10, 11, 12, 13]);
        assert_eq!(stored[4].as_u64(), Some(2));
        assert!(stored[5].is_nil());
        assert_eq!(stored[6].as_str(), Some(MEDIUM));
        let removed = events[1].as_array().unwrap();
        assert_eq!(removed[0].as_str(), Some("BlockRemoved"));
        assert_eq!(removed[2].as_str(), Some(MEDIUM));
        assert_eq!(events[2].as_array().unwrap().len(), 1);
    }
}
