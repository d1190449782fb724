//! Placeholder loop detector (replaced by the dialects branch's).

use crate::types::TokenId;

/// Loop detector settings.
#[derive(Clone, Debug)]
pub struct LoopGuardConfig {
    /// Shortest repeated span.
    pub min_span: usize,
    /// Copies that make a loop.
    pub repeats: usize,
    /// Recent tokens looked at.
    pub window: usize,
}

impl Default for LoopGuardConfig {
    fn default() -> Self {
        Self {
            min_span: 32,
            repeats: 3,
            window: 1024,
        }
    }
}

/// Loop detector.
#[derive(Clone, Debug)]
pub struct LoopGuard {
    config: LoopGuardConfig,
    recent: Vec<TokenId>,
}

impl LoopGuard {
    /// A detector.
    pub fn new(config: LoopGuardConfig) -> Self {
        Self {
            config,
            recent: Vec::new(),
        }
    }

    /// Feeds a token; true when the recent tokens loop.
    pub fn push(&mut self, token: TokenId) -> bool {
        self.recent.push(token);
        let n = self.recent.len();
        let r = self.config.repeats;
        (1..=n / r).any(|p| {
            let len = r * p.max(self.config.min_span);
            len <= n && (n - len..n - p).all(|i| self.recent[i] == self.recent[i + p])
        })
    }
}
