//! Test-only fault injection, compiled into every build but inert unless
//! the operator's environment names a fault: the server's supervision of
//! the engine thread can only be tested by killing that thread, and the
//! test suite runs the release binary. Nothing a client sends can reach it.
//!
//! `R1SERVE_FAULT_ENGINE_PANIC_AT_STEP=N` panics the engine thread in its
//! N-th model step (counted from 1).

use std::sync::OnceLock;

/// The environment variable naming the step at which the engine panics.
pub const PANIC_AT_STEP: &str = "R1SERVE_FAULT_ENGINE_PANIC_AT_STEP";

/// Called by the engine loop as it starts model step `step`; panics if the
/// environment asked for a fault there. Reads the environment once.
pub(super) fn at_step(step: u64) {
    static PANIC_STEP: OnceLock<Option<u64>> = OnceLock::new();
    let panic_step = PANIC_STEP.get_or_init(|| {
        std::env::var(PANIC_AT_STEP)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    if *panic_step == Some(step) {
        panic!("fault injected by {PANIC_AT_STEP}={step}");
    }
}
