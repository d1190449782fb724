//! The paged KV cache: what a model caches per token ([`spec`]), fixed-size
//! blocks of keys and values ([`storage`]),
//! owned by a pool with reference counts and a prefix cache
//! ([`block_pool`]), handed out per sequence by the [`manager`], which
//! reports what enters and leaves the prefix cache as [`events`].

pub mod block_pool;
pub mod events;
pub mod manager;
pub mod spec;
pub mod storage;
