//! The serving engine: requests in, token streams out. The engine loop runs
//! on its own OS thread; [`EngineHandle`] is the async-side door to it.

pub mod types;
