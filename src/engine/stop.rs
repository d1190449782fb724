//! Stop strings matched on detokenized text. Text that could still become
//! the start of a stop string is held back, so a partial stop string is
//! never streamed, and the stop string itself never reaches the output.
//!
//! A request's stop strings are compiled once into an Aho–Corasick automaton
//! that its `n` samples share; each sample keeps only its automaton state and
//! the held-back text. Every byte of new text costs one transition, whatever
//! the number and length of the stop strings, and the held-back text is the
//! longest suffix that is still a prefix of some stop string (so never longer
//! than the longest stop string less one byte).

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::Anchored;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A request's stop strings, compiled; cheap to clone and shared by samples.
#[derive(Clone, Default)]
pub struct StopStrings(Option<Arc<StopSet>>);

struct StopSet {
    strings: Vec<String>,
    automaton: NFA,
    /// How many bytes of text each state stands for: the length of the
    /// longest stop-string prefix that the text read so far ends with.
    depth: HashMap<StateID, usize>,
}

impl StopStrings {
    /// Compiles `stops` (empty strings are ignored). Fails only when the
    /// automaton would exceed the crate's internal size limits, which the
    /// API's bound on stop bytes keeps far away.
    pub fn new(stops: Vec<String>) -> Result<Self, String> {
        let strings: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        if strings.is_empty() {
            return Ok(Self(None));
        }
        let automaton = NFA::new(&strings).map_err(|e| format!("stop strings: {e}"))?;
        let start = automaton
            .start_state(Anchored::No)
            .map_err(|e| format!("stop strings: {e}"))?;
        // Reading a prefix of a stop string from the start lands on the trie
        // node of that prefix, and every state text can reach is such a
        // node: walking every prefix once labels every reachable state.
        let mut depth = HashMap::from([(start, 0)]);
        for s in &strings {
            let mut sid = start;
            for (i, &b) in s.as_bytes().iter().enumerate() {
                sid = automaton.next_state(Anchored::No, sid, b);
                depth.insert(sid, i + 1);
            }
        }
        Ok(Self(Some(Arc::new(StopSet {
            strings,
            automaton,
            depth,
        }))))
    }

    /// The stop strings, in the request's order.
    pub fn as_slice(&self) -> &[String] {
        self.0.as_ref().map_or(&[], |s| &s.strings)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for StopStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Incremental matcher for one sample.
pub struct StopChecker {
    stops: StopStrings,
    state: Option<StateID>,
    held: String,
    /// Whether the matched stop string stays in the output (vLLM's
    /// `include_stop_str_in_output`).
    keep_match: bool,
}

impl StopChecker {
    /// A matcher over the shared `stops`.
    pub fn new(stops: StopStrings) -> Self {
        let state = stops.0.as_ref().map(|s| {
            // `new` already obtained this start state once, so it exists.
            s.automaton
                .start_state(Anchored::No)
                .unwrap_or_else(|_| unreachable!("unanchored start state"))
        });
        Self {
            stops,
            state,
            held: String::new(),
            keep_match: false,
        }
    }

    /// The same matcher, but a matched stop string is emitted as the end
    /// of the text (what follows it is still dropped) when `keep` is set.
    pub fn keeping_match(self, keep: bool) -> Self {
        Self {
            keep_match: keep,
            ..self
        }
    }

    /// Adds new text; returns the text that is now safe to emit and the stop
    /// string that matched, if one did (generation must then end). The first
    /// stop string to end in the text wins; of several ending at the same
    /// byte, the longest.
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        let (Some(set), Some(mut sid)) = (self.stops.0.as_deref(), self.state) else {
            return (text.to_string(), None);
        };
        let offset = self.held.len();
        self.held.push_str(text);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            sid = set.automaton.next_state(Anchored::No, sid, b);
            if set.automaton.is_match(sid) {
                let pid = (0..set.automaton.match_len(sid))
                    .map(|k| set.automaton.match_pattern(sid, k))
                    .max_by_key(|&p| set.automaton.pattern_len(p))
                    .unwrap_or_else(|| unreachable!("a match state has a pattern"));
                // The stop string's bytes were all read since the last
                // release: the held text is exactly the state's depth.
                let end = offset + i + 1;
                let start = end - set.automaton.pattern_len(pid);
                let out = self.held[..if self.keep_match { end } else { start }].to_string();
                self.held.clear();
                self.state = None;
                return (out, Some(set.strings[pid.as_usize()].clone()));
            }
        }
        self.state = Some(sid);
        // A state missing from the map is impossible (see `new`); holding
        // everything back is the safe answer if it ever happened.
        let keep = set.depth.get(&sid).copied().unwrap_or(self.held.len());
        let cut = self.held.len() - keep.min(self.held.len());
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, None)
    }

    /// Releases the held text at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes held back for a possible stop string.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopStrings {
        StopStrings::new(list.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn run(list: &[&str], chunks: &[&str]) -> (String, Option<String>) {
        let mut c = StopChecker::new(stops(list));
        let mut out = String::new();
        for ch in chunks {
            let (t, hit) = c.push(ch);
            out.push_str(&t);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push_str(&c.flush());
        (out, None)
    }

    #[test]
    fn stop_string_split_across_chunks_is_cut_and_never_emitted() {
        let mut c = StopChecker::new(stops(&["END"]));
        assert_eq!(c.push("hello E").0, "hello ");
        assert_eq!(c.push("N"), (String::new(), None));
        assert_eq!(c.push("D tail"), (String::new(), Some("END".into())));
    }

    #[test]
    fn a_kept_match_ends_the_text_and_what_follows_is_dropped() {
        let mut c = StopChecker::new(stops(&["END"])).keeping_match(true);
        assert_eq!(c.push("hello E").0, "hello ");
        assert_eq!(c.push("ND tail"), ("END".into(), Some("END".into())));
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        assert_eq!(run(&["END"], &["a E", "Nx"]), ("a ENx".into(), None));
    }

    #[test]
    fn first_stop_to_end_wins_and_longest_on_a_tie() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), Some("a".into())));
        assert_eq!(
            run(&["b", "ab"], &["xxab"]),
            ("xx".into(), Some("ab".into()))
        );
    }

    #[test]
    fn a_failed_long_prefix_still_finds_a_stop_inside_it() {
        // "abab" fails at 'c' but its tail "ab" starts "abc".
        assert_eq!(
            run(&["ababd", "abc"], &["xab", "ab", "c"]),
            ("xab".into(), Some("abc".into()))
        );
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(
            run(&["停止"], &["好的停", "止了"]),
            ("好的".into(), Some("停止".into()))
        );
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
    }

    #[test]
    fn held_text_never_exceeds_the_longest_partial_match() {
        // A long stop string whose first byte recurs in the text: the old
        // matcher rescanned a growing buffer; this one holds at most the
        // current partial match.
        let long = format!("{}!", "a".repeat(4000));
        let mut c = StopChecker::new(stops(&[&long, "zz"]));
        for i in 0..10_000 {
            let (_, hit) = c.push(if i % 7 == 0 { "b" } else { "a" });
            assert!(hit.is_none());
            assert!(c.held_len() <= 6, "held {} bytes", c.held_len());
        }
        let (out, _) = c.push("z");
        assert!(out.chars().all(|ch| ch == 'a'), "{out:?}");
        assert_eq!(c.held_len(), 1, "only the 'z' that may start \"zz\"");
    }

    #[test]
    fn samples_share_one_compiled_copy() {
        let s = stops(&["x"]);
        let a = StopChecker::new(s.clone());
        let b = StopChecker::new(s.clone());
        let shared = s.0.as_ref().unwrap();
        assert_eq!(Arc::strong_count(shared), 3);
        drop((a, b));
        assert_eq!(Arc::strong_count(shared), 1);
    }

    /// The automaton against a plain rescan of the whole text, on random
    /// text, stops and chunking.
    #[test]
    fn agrees_with_a_naive_rescan() {
        use proptest::prelude::*;
        let alphabet = proptest::sample::select(vec!['a', 'b', 'é']);
        let word = proptest::collection::vec(alphabet.clone(), 1..5)
            .prop_map(|c| c.into_iter().collect::<String>());
        let strat = (
            proptest::collection::vec(word, 0..4),
            proptest::collection::vec(alphabet, 0..40),
            proptest::collection::vec(1usize..4, 1..40),
        );
        proptest!(|((list, text, cuts) in strat)| {
            let text: String = text.into_iter().collect();
            let mut chunks = Vec::new();
            let mut rest = text.as_str();
            for k in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let at = rest.char_indices().nth(*k).map_or(rest.len(), |(i, _)| i);
                chunks.push(&rest[..at]);
                rest = &rest[at..];
            }
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let got = run(&refs, &chunks);
            // The earliest end, then the longest stop ending there.
            let want = (1..=text.len())
                .filter(|&e| text.is_char_boundary(e))
                .find_map(|e| {
                    list.iter()
                        .filter(|s| text[..e].ends_with(s.as_str()))
                        .max_by_key(|s| s.len())
                        .map(|s| (text[..e - s.len()].to_string(), Some(s.clone())))
                })
                .unwrap_or((text.clone(), None));
            prop_assert_eq!(got, want);
        });
    }
}
