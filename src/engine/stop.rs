//! Stop strings matched on detokenized text. Text that could still become
//! the start of a stop string is held back, so a partial stop string is
//! never streamed, and the stop string itself never reaches the output.

/// Incremental matcher for one sample.
pub struct StopChecker {
    stops: Vec<String>,
    held: String,
}

impl StopChecker {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds new text; returns the text that is now safe to emit and the stop
    /// string that matched, if one did (generation must then end).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), None);
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, s)| (*p, std::cmp::Reverse(s.len())));
        if let Some((pos, stop)) = hit {
            let stop = stop.clone();
            let out = self.held[..pos].to_string();
            self.held.clear();
            return (out, Some(stop));
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, None)
    }

    /// Releases the held text at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    stop.char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .filter(|&k| text.ends_with(&stop[..k]))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut c = StopChecker::new(&stops);
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
        let stops = vec!["END".to_string()];
        let mut c = StopChecker::new(&stops);
        assert_eq!(c.push("hello E").0, "hello ");
        assert_eq!(c.push("N"), (String::new(), None));
        assert_eq!(c.push("D tail"), (String::new(), Some("END".into())));
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        assert_eq!(run(&["END"], &["a E", "Nx"]), ("a ENx".into(), None));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), Some("a".into())));
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
}
