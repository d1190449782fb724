//! Rule-based answer equivalence for `r1serve eval` and API consensus: an
//! extracted answer and a reference are normalised to a [`Canonical`] form
//! and compared. No model is involved; the rules are these, in order:
//!
//! 1. Notation is dropped: surrounding `$…$`, `\(…\)`, `\[…\]`; spacing
//!    macros (`\,` `\!` `\;` `\ ` `~`), `\left`/`\right`, `\displaystyle`;
//!    `\text{…}`, `\mathrm{…}`, `\textbf{…}`, `\mathbf{…}`, `\mbox{…}` keep
//!    their contents; `\dfrac`/`\tfrac` read as `\frac`; `\sqrt3` as
//!    `\sqrt{3}`; degree signs, percent signs and dollar signs are removed;
//!    a Unicode minus is `-`; a leading `x =` (one letter) is dropped; all
//!    whitespace and a trailing full stop go.
//! 2. Units go where the problem declares them (`"units": ["cm"]`): a
//!    declared unit at the end of the answer is removed.
//! 3. Numbers: integers, decimals, thousands separators in groups of three
//!    (`1,000`), `a/b`, `\frac{a}{b}`, `\frac12`, a sign before any of them,
//!    and `e`/`\times10^{n}` exponents are read as exact fractions, so
//!    `0.5`, `1/2` and `\frac{1}{2}` are one answer. A decimal with at least
//!    two places also matches a fraction it is the rounding of (`0.33` and
//!    `1/3`, not `0.3` and `1/3`): |a − b| ≤ ½·10^−places, checked exactly.
//! 4. Multiple choice: when the reference is one letter A–J, the answer is
//!    read as a letter: `B`, `b`, `(B)`, `B)`, `B.`, `(B) 42`.
//! 5. Tuples `(…)` and intervals/lists `[…]` match element by element, sets
//!    `\{…\}` in any order.
//! 6. Anything else matches when the normalised strings are equal.

use super::extract::braced;

/// Most decimal places or exponent read as an exact fraction; longer ones
/// stay text, so arithmetic on `i128` cannot overflow.
const MAX_DIGITS: usize = 30;

/// An answer in the form answers are compared and voted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Canonical {
    /// An exact fraction `num/den` (reduced, `den > 0`), with the decimal
    /// places it was written with when it was a decimal.
    Number {
        num: i128,
        den: i128,
        places: Option<u32>,
    },
    /// A multiple-choice letter, upper case.
    Choice(char),
    /// An ordered (`ordered`) or unordered list of answers.
    List {
        ordered: bool,
        items: Vec<Canonical>,
    },
    /// A normalised string.
    Text(String),
}

impl Canonical {
    /// The key majority voting groups answers by: equal numbers, letters
    /// and strings share a key (a rounded decimal is its own key).
    pub fn vote_key(&self) -> String {
        match self {
            Canonical::Number { num, den: 1, .. } => num.to_string(),
            Canonical::Number { num, den, .. } => format!("{num}/{den}"),
            Canonical::Choice(c) => c.to_string(),
            Canonical::List { ordered, items } => {
                let mut keys: Vec<String> = items.iter().map(Canonical::vote_key).collect();
                if !ordered {
                    keys.sort();
                }
                let (open, close) = if *ordered { ("(", ")") } else { ("{", "}") };
                format!("{open}{}{close}", keys.join(","))
            }
            Canonical::Text(s) => s.clone(),
        }
    }
}

/// The reference answer of one problem, normalised once.
#[derive(Clone, Debug)]
pub struct Reference {
    canonical: Canonical,
    units: Vec<String>,
}

impl Reference {
    /// `answer` with the problem's declared `units`.
    pub fn new(answer: &str, units: &[String]) -> Self {
        let canonical = canonical(answer, units, false);
        Self {
            canonical,
            units: units.to_vec(),
        }
    }

    /// The reference's own canonical form.
    pub fn canonical(&self) -> &Canonical {
        &self.canonical
    }

    /// Reads an extracted answer the way this reference is written
    /// (letters when the reference is a letter).
    pub fn read(&self, answer: &str) -> Canonical {
        let choice = matches!(self.canonical, Canonical::Choice(_));
        canonical(answer, &self.units, choice)
    }

    /// Whether an extracted answer is equivalent to the reference.
    pub fn matches(&self, answer: &str) -> bool {
        equivalent(&self.read(answer), &self.canonical)
    }
}

/// Whether two canonical answers are the same answer (rules 3–6).
pub fn equivalent(a: &Canonical, b: &Canonical) -> bool {
    match (a, b) {
        (
            Canonical::Number {
                num: an,
                den: ad,
                places: ap,
            },
            Canonical::Number {
                num: bn,
                den: bd,
                places: bp,
            },
        ) => {
            (an == bn && ad == bd)
                || rounds_to(*an, *ad, *ap, *bn, *bd, *bp)
                || rounds_to(*bn, *bd, *bp, *an, *ad, *ap)
        }
        (
            Canonical::List {
                ordered: ao,
                items: ai,
            },
            Canonical::List {
                ordered: bo,
                items: bi,
            },
        ) => {
            if ao != bo || ai.len() != bi.len() {
                return false;
            }
            if *ao {
                return ai.iter().zip(bi).all(|(x, y)| equivalent(x, y));
            }
            let mut unused: Vec<&Canonical> = bi.iter().collect();
            ai.iter().all(|x| {
                let hit = unused.iter().position(|y| equivalent(x, y));
                hit.map(|i| unused.swap_remove(i)).is_some()
            })
        }
        _ => a == b,
    }
}

/// Whether the decimal `dn/dd` written with `places ≥ 2` places is the
/// rounding of `fn_/fd`, a value not itself written as a decimal:
/// |dn/dd − fn/fd| ≤ 1/(2·10^places) ⇔ 2·|dn·fd·(10^p/dd) − fn·10^p| ≤ fd.
fn rounds_to(
    dn: i128,
    dd: i128,
    places: Option<u32>,
    fn_: i128,
    fd: i128,
    fplaces: Option<u32>,
) -> bool {
    let Some(p) = places else { return false };
    if p < 2 || fplaces.is_some() {
        return false;
    }
    let check = || -> Option<bool> {
        let scale = 10i128.checked_pow(p)?;
        // A decimal's reduced denominator divides 10^places.
        if scale % dd != 0 {
            return None;
        }
        let left = dn.checked_mul(fd)?.checked_mul(scale / dd)?;
        let right = fn_.checked_mul(scale)?;
        Some(left.checked_sub(right)?.checked_abs()?.checked_mul(2)? <= fd)
    };
    check().unwrap_or(false)
}

/// Normalises `text` (rules 1–2) and reads it as a number, a letter (when
/// `choice`), a list, or text.
pub fn canonical(text: &str, units: &[String], choice: bool) -> Canonical {
    let s = normalise(text, units);
    if choice {
        if let Some(c) = letter(&s) {
            return Canonical::Choice(c);
        }
    }
    if let Some(list) = list(&s, units) {
        return list;
    }
    if let Some((num, den, places)) = number(&s) {
        return Canonical::Number { num, den, places };
    }
    if !choice {
        // A reference that is one letter makes the problem multiple choice.
        if let Some(c) = letter(&s).filter(|_| s.len() <= 3) {
            return Canonical::Choice(c);
        }
    }
    Canonical::Text(s)
}

/// Rules 1 and 2: the notation-free, whitespace-free form of an answer.
pub fn normalise(text: &str, units: &[String]) -> String {
    let mut s = text.trim().replace('−', "-");
    for (open, close) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            s = inner.to_owned();
        }
    }
    for name in ["\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox"] {
        s = unwrap_macro(&s, name);
    }
    for (from, to) in [
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
    ] {
        s = s.replace(from, to);
    }
    s = brace_sqrt(&s);
    let mut s = s.trim().to_owned();
    for unit in units {
        if let Some(rest) = s.strip_suffix(unit.as_str()) {
            if !rest.trim().is_empty() {
                s = rest.trim_end().to_owned();
            }
        }
    }
    let mut s: String = s.split_whitespace().collect();
    if let Some((lhs, rhs)) = s.split_once('=') {
        let variable = lhs.len() == 1 && lhs.chars().all(|c| c.is_ascii_alphabetic());
        if variable && !rhs.is_empty() && !rhs.contains('=') {
            s = rhs.to_owned();
        }
    }
    while s.ends_with('.') {
        s.pop();
    }
    s
}

/// `\name{x}` → `x` everywhere (braces inside `x` balanced).
fn unwrap_macro(s: &str, name: &str) -> String {
    let opening = format!("{name}{{");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(&opening) {
        let body = &rest[at + opening.len()..];
        let Some(inner) = braced(body) else { break };
        out.push_str(&rest[..at]);
        out.push_str(inner);
        rest = &body[inner.len() + 1..];
    }
    out.push_str(rest);
    out
}

/// `\sqrt3` → `\sqrt{3}`, so both spellings compare equal.
fn brace_sqrt(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut rest = s;
    while let Some(at) = rest.find("\\sqrt") {
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        match rest.chars().next() {
            Some(c) if c.is_ascii_alphanumeric() => {
                out.push('{');
                out.push(c);
                out.push('}');
                rest = &rest[1..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// Rule 4: a choice letter A–J in one of its usual wrappings.
fn letter(s: &str) -> Option<char> {
    let s = s.strip_prefix('(').unwrap_or(s);
    let mut chars = s.chars();
    let c = chars.next()?.to_ascii_uppercase();
    let rest = chars.as_str();
    let wrapped = rest.is_empty() || rest.starts_with([')', '.', ':']);
    ('A'..='J').contains(&c).then_some(c).filter(|_| wrapped)
}

/// Rule 5: `(a,b)`, `[a,b]` or `\{a,b\}` with at least two items.
fn list(s: &str, units: &[String]) -> Option<Canonical> {
    let (inner, ordered) =
        if let Some(i) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
            (i, false)
        } else if let Some(i) = s
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .or_else(|| s.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
        {
            (i, true)
        } else {
            return None;
        };
    let items = split_top_level(inner)?;
    (items.len() >= 2).then(|| Canonical::List {
        ordered,
        items: items
            .iter()
            .map(|item| canonical(item, units, false))
            .collect(),
    })
}

/// `inner` split at commas outside brackets; `None` when brackets do not
/// balance (then it was not one list).
fn split_top_level(inner: &str) -> Option<Vec<&str>> {
    let mut depth = 0i32;
    let mut items = Vec::new();
    let mut start = 0;
    for (at, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    items.push(&inner[start..]);
    Some(items)
}

/// Rule 3: `s` as a reduced fraction and the decimal places it was written
/// with.
fn number(s: &str) -> Option<(i128, i128, Option<u32>)> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (num, den, places) = if let Some(frac) = body.strip_prefix("\\frac") {
        let (top, bottom) = frac_args(frac)?;
        let (tn, td, _) = number(top)?;
        let (bn, bd, _) = number(bottom)?;
        (tn.checked_mul(bd)?, td.checked_mul(bn)?, None)
    } else if let Some((top, bottom)) = body.split_once('/') {
        let (tn, td, _) = decimal(top)?;
        let (bn, bd, _) = decimal(bottom)?;
        (tn.checked_mul(bd)?, td.checked_mul(bn)?, None)
    } else {
        decimal(body)?
    };
    if den == 0 {
        return None;
    }
    let sign = if negative ^ (num < 0) ^ (den < 0) {
        -1
    } else {
        1
    };
    let (num, den) = (num.abs(), den.abs());
    let g = gcd(num, den);
    Some((sign * num / g, den / g, places))
}

/// The two arguments of `\frac`: `{a}{b}`, or `12` for `\frac12`.
fn frac_args(s: &str) -> Option<(&str, &str)> {
    if let Some(body) = s.strip_prefix('{') {
        let top = braced(body)?;
        let after = body[top.len() + 1..].strip_prefix('{')?;
        let bottom = braced(after)?;
        return (after.len() == bottom.len() + 1).then_some((top, bottom));
    }
    let mut chars = s.char_indices();
    let (_, a) = chars.next()?;
    let (b_at, b) = chars.next()?;
    let ok = a.is_ascii_digit() && b.is_ascii_digit() && s.len() == b_at + 1;
    ok.then(|| (&s[..b_at], &s[b_at..]))
}

/// An unsigned (or `-`-signed) decimal with optional thousands separators
/// and exponent, as `(num, den, places)`.
fn decimal(s: &str) -> Option<(i128, i128, Option<u32>)> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (mantissa, exponent) = split_exponent(s)?;
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let int = grouped_digits(int)?;
    let frac = frac.unwrap_or("");
    let all_digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty())
        || !all_digits(frac)
        || int.len() + frac.len() > MAX_DIGITS
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut num: i128 = digits.parse().ok()?;
    let mut den: i128 = 10i128.checked_pow(frac.len() as u32)?;
    if exponent >= 0 {
        num = num.checked_mul(10i128.checked_pow(exponent as u32)?)?;
    } else {
        den = den.checked_mul(10i128.checked_pow(exponent.unsigned_abs())?)?;
    }
    let places = (!frac.is_empty() && exponent == 0).then_some(frac.len() as u32);
    if negative {
        num = -num;
    }
    let g = gcd(num.abs(), den);
    Some((num / g, den / g, places))
}

/// `1.5e3` and `1.5\times10^{3}` → (`1.5`, 3); no exponent → 0.
fn split_exponent(s: &str) -> Option<(&str, i32)> {
    let split = s
        .split_once("\\times10^")
        .or_else(|| s.split_once(['e', 'E']));
    let Some((mantissa, exp)) = split else {
        return Some((s, 0));
    };
    let exp = exp
        .strip_prefix('{')
        .and_then(|e| e.strip_suffix('}'))
        .unwrap_or(exp);
    let value: i32 = exp.parse().ok()?;
    (value.unsigned_abs() as usize <= MAX_DIGITS).then_some((mantissa, value))
}

/// Digits, or digits in comma-separated groups of three (`12,345`), without
/// the commas; `None` for anything else.
fn grouped_digits(s: &str) -> Option<String> {
    let mut groups = s.split(',');
    let first = groups.next()?;
    let rest: Vec<&str> = groups.collect();
    let digits = |g: &str| g.bytes().all(|b| b.is_ascii_digit());
    let grouped = rest.is_empty() || (!first.is_empty() && first.len() <= 3);
    if !digits(first) || !grouped || rest.iter().any(|g| g.len() != 3 || !digits(g)) {
        return None;
    }
    Some(std::iter::once(first).chain(rest).collect())
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
