//! The paged KV cache: fixed-size blocks of keys and values, owned by a
//! pool with reference counts and a prefix cache.

pub mod storage;
