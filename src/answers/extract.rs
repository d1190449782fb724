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
    /// Skip the last-number fallback (the API's `{"regex": …}`, which
    /// takes the pattern's answer or none).
    pub skip_number: bool,
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
            ..Self::default()
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
        if self.skip_number {
            return None;
        }
        last_number(text)
    }
}

/// The contents of the last complete `\boxed{…}` or `\fbox{…}` (nested
/// braces balanced, empty boxes skipped); `\boxed 5` (TeX's brace-less form) gives `5`. A box cut
/// off by the token limit is skipped in favour of an earlier complete one.
pub fn last_boxed(text: &str) -> Option<String> {
    // One pass with a stack of open braces, so a text full of unclosed
    // boxes costs its length, not its length times its boxes. The box that
    // starts last among the complete ones wins.
    let mut open: Vec<Option<(usize, usize)>> = Vec::new();
    let mut best: Option<(usize, &str)> = None;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if let Some(name) = ["\\boxed", "\\fbox"].iter().find(|m| rest.starts_with(*m)) {
            let after = i + name.len();
            if text[after..].starts_with('{') {
                open.push(Some((i, after + 1)));
                i = after + 1;
                continue;
            }
            if let Some(arg) = braceless_argument(&text[after..]) {
                best = Some((i, arg));
            }
            i = after;
            continue;
        }
        match rest.as_bytes()[0] {
            b'{' => open.push(None),
            b'}' => {
                if let Some(Some((start, content))) = open.pop() {
                    let inner = text[content..i].trim();
                    if !inner.is_empty() && best.is_none_or(|(s, _)| start > s) {
                        best = Some((start, inner));
                    }
                }
            }
            _ => {}
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    best.map(|(_, inner)| inner.to_owned())
}

/// `\boxed 5`: after a space, everything up to the next space or `$`.
fn braceless_argument(rest: &str) -> Option<&str> {
    let arg = rest.strip_prefix(' ')?.trim_start();
    let end = arg
        .find(|c: char| c.is_whitespace() || c == '$')
        .unwrap_or(arg.len());
    (end > 0).then(|| &arg[..end])
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
    fn unclosed_boxes_cost_one_pass() {
        // Quadratic scanning would take minutes here; one pass takes
        // milliseconds.
        let text = format!("{}\\boxed{{7}}", "\\boxed{".repeat(200_000));
        assert_eq!(last_boxed(&text).as_deref(), Some("7"));
        let text = format!("\\boxed{{1}}{}", "\\fbox{{".repeat(200_000));
        assert_eq!(last_boxed(&text).as_deref(), Some("1"));
    }

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
            ("\\boxed{\\boxed{3}} and \\boxed{4", Some("3")),
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
            skip_boxed: true,
            ..Extractor::default()
        };
        assert_eq!(last.extract("\\boxed{A} 12").as_deref(), Some("12"));
    }
}
