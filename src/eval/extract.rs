//! Finding the final answer in a model's output, as the DeepSeek-R1 paper's
//! rule-based reward does: the last `\boxed{…}` (braces may nest), else the
//! last match of a configurable regex, else the last number in the text.

use regex::Regex;
use std::sync::LazyLock;

/// A number as written in running text: optional sign (ASCII or Unicode
/// minus), digits with optional thousands separators, optional decimals,
/// optionally over a denominator (`3/4`).
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?").expect("number pattern")
});

/// Where the final answer is looked for, in order.
#[derive(Clone, Debug, Default)]
pub struct Extractor {
    /// Tried when the text has no complete `\boxed{…}`: the last match wins,
    /// its first capture group if it has one, else the whole match.
    pub regex: Option<Regex>,
    /// Skip the `\boxed{…}` step (the API's `"extract": "last_number"`).
    pub skip_boxed: bool,
}

impl Extractor {
    /// The default chain: boxed, then the last number.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain boxed → `pattern` → last number; a bad pattern is an
    /// error naming it.
    pub fn with_regex(pattern: &str) -> Result<Self, String> {
        let regex =
            Regex::new(pattern).map_err(|e| format!("bad answer regex {pattern:?}: {e}"))?;
        Ok(Self {
            regex: Some(regex),
            skip_boxed: false,
        })
    }

    /// The final answer in `text`, or `None` when there is none.
    pub fn extract(&self, text: &str) -> Option<String> {
        if !self.skip_boxed {
            if let Some(found) = last_boxed(text) {
                return Some(found);
            }
        }
        if let Some(regex) = &self.regex {
            if let Some(caps) = regex.captures_iter(text).last() {
                let m = caps.get(1).or_else(|| caps.get(0))?;
                return Some(m.as_str().trim().to_owned());
            }
        }
        last_number(text)
    }
}

/// The contents of the last complete `\boxed{…}` or `\fbox{…}` (nested
/// braces balanced, empty boxes skipped); `\boxed 5` (TeX's brace-less form) gives `5`. A box cut
/// off by the token limit is skipped in favour of an earlier complete one.
pub fn last_boxed(text: &str) -> Option<String> {
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for macro_name in ["\\boxed", "\\fbox"] {
        starts.extend(
            text.match_indices(macro_name)
                .map(|(at, m)| (at, at + m.len())),
        );
    }
    starts.sort_unstable();
    starts
        .iter()
        .rev()
        .find_map(|&(_, after)| box_contents(&text[after..]))
}

/// The argument of a box macro whose name ends just before `rest`.
fn box_contents(rest: &str) -> Option<String> {
    if let Some(body) = rest.strip_prefix('{') {
        let inner = braced(body)?.trim();
        return (!inner.is_empty()).then(|| inner.to_owned());
    }
    // `\boxed 5`: a space, then everything up to the next space or `$`.
    let arg = rest.strip_prefix(' ')?.trim_start();
    let end = arg
        .find(|c: char| c.is_whitespace() || c == '$')
        .unwrap_or(arg.len());
    (end > 0).then(|| arg[..end].to_owned())
}

/// The text up to the `}` closing an already-open `{`, or `None` when it
/// never closes.
pub(crate) fn braced(body: &str) -> Option<&str> {
    let mut depth = 1usize;
    for (at, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&body[..at]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The last number written in `text` (see [`NUMBER`]), spaces around a
/// fraction bar removed.
pub fn last_number(text: &str) -> Option<String> {
    NUMBER
        .find_iter(text)
        .last()
        .map(|m| m.as_str().split_whitespace().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_nesting_truncation_and_fallbacks() {
        let ex = Extractor::new();
        let cases: &[(&str, Option<&str>)] = &[
            ("so \\boxed{42}.", Some("42")),
            ("\\boxed{1} then \\boxed{2}", Some("2")),
            ("\\boxed{\\frac{1}{2}}", Some("\\frac{1}{2}")),
            ("\\boxed{\\text{(B)}}", Some("\\text{(B)}")),
            ("\\boxed{{a}{b}{c}}", Some("{a}{b}{c}")),
            ("\\boxed{7} and \\boxed{\\frac{1", Some("7")),
            ("\\fbox{9}", Some("9")),
            ("$\\boxed 5$", Some("5")),
            ("\\boxed{ 12 }", Some("12")),
            ("The answer is 3, not 4.", Some("4")),
            ("total: 1,000 apples", Some("1,000")),
            ("it is −7", Some("−7")),
            ("ratio 3 / 4", Some("3/4")),
            ("pi is 3.14159", Some("3.14159")),
            ("no digits here", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(ex.extract(text).as_deref(), *want, "{text:?}");
        }
    }

    #[test]
    fn regex_comes_after_boxed_and_before_last_number() {
        let ex = Extractor::with_regex(r"(?i)answer:\s*([A-E])").unwrap();
        assert_eq!(ex.extract("Answer: C because 42").as_deref(), Some("C"));
        assert_eq!(ex.extract("Answer: C, \\boxed{D}").as_deref(), Some("D"));
        assert_eq!(ex.extract("no letter, 17").as_deref(), Some("17"));
        let whole = Extractor::with_regex(r"#### \d+").unwrap();
        assert_eq!(whole.extract("x #### 18").as_deref(), Some("#### 18"));
        assert!(Extractor::with_regex("(")
            .unwrap_err()
            .contains("bad answer regex"));
        let last = Extractor {
            regex: None,
            skip_boxed: true,
        };
        assert_eq!(last.extract("\\boxed{A} 12").as_deref(), Some("12"));
    }
}
