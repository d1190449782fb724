//! The answer checker on a table of tricky cases: model output (extraction
//! included), reference, declared units, and the expected verdict.

use super::*;
use crate::answers::extract::Extractor;

/// (model output, reference, declared units, equivalent?)
const CASES: &[(&str, &str, &[&str], bool)] = &[
    // Boxes, nested braces, and which box counts.
    ("so \\boxed{42}", "42", &[], true),
    ("\\boxed{41} no wait \\boxed{42}", "42", &[], true),
    ("\\boxed{42} no wait \\boxed{41}", "42", &[], false),
    ("\\boxed{\\frac{1}{2}}", "1/2", &[], true),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", &[], true),
    ("\\boxed{\\tfrac{3}{4}}", "\\frac{3}{4}", &[], true),
    ("\\boxed{\\frac12}", "0.5", &[], true),
    (
        "\\boxed{\\frac{\\sqrt{3}}{2}}",
        "\\frac{\\sqrt3}{2}",
        &[],
        true,
    ),
    (
        "\\boxed{\\frac{\\sqrt{3}}{2}}",
        "\\frac{\\sqrt{2}}{2}",
        &[],
        false,
    ),
    ("\\boxed{7} then \\boxed{\\frac{1", "7", &[], true),
    ("$\\boxed{12}$.", "12", &[], true),
    ("\\boxed 9", "9", &[], true),
    // Fractions against decimals.
    ("\\boxed{0.5}", "\\frac{1}{2}", &[], true),
    ("\\boxed{0.50}", "1/2", &[], true),
    ("\\boxed{.5}", "1/2", &[], true),
    ("\\boxed{0.333}", "\\frac{1}{3}", &[], true),
    ("\\boxed{0.33}", "1/3", &[], true),
    ("\\boxed{0.3}", "1/3", &[], false),
    ("\\boxed{0.334}", "1/3", &[], false),
    ("\\boxed{0.667}", "\\frac{2}{3}", &[], true),
    ("\\boxed{0.666}", "\\frac{2}{3}", &[], false),
    ("\\boxed{2/4}", "1/2", &[], true),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", &[], true),
    ("\\boxed{0.51}", "1/2", &[], false),
    ("\\boxed{1.0}", "1", &[], true),
    ("\\boxed{0.99}", "1", &[], false),
    // Thousands separators.
    ("\\boxed{1,000}", "1000", &[], true),
    ("The total is 1,000 apples.", "1000", &[], true),
    ("\\boxed{12,345,678}", "12345678", &[], true),
    ("\\boxed{1,00}", "100", &[], false),
    ("\\boxed{1,000.5}", "1000.5", &[], true),
    ("\\boxed{1{,}000}", "1000", &[], true),
    // Signs.
    ("\\boxed{-5}", "-5", &[], true),
    ("\\boxed{−5}", "-5", &[], true),
    ("\\boxed{5}", "-5", &[], false),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", &[], true),
    ("\\boxed{\\frac{-1}{2}}", "-1/2", &[], true),
    ("\\boxed{\\frac{1}{-2}}", "-\\frac{1}{2}", &[], true),
    ("\\boxed{+3}", "3", &[], true),
    ("so x is -7.", "-7", &[], true),
    ("\\boxed{- 4}", "-4", &[], true),
    // Units, declared and notational.
    ("\\boxed{5\\text{ cm}}", "5", &["cm"], true),
    ("\\boxed{5 cm}", "5", &["cm"], true),
    ("\\boxed{5\\,\\mathrm{cm}^2}", "5", &["cm^2"], true),
    ("\\boxed{5 cm}", "5", &[], false),
    ("\\boxed{30^\\circ}", "30", &[], true),
    ("\\boxed{30^{\\circ}}", "30", &[], true),
    ("\\boxed{45°}", "45", &[], true),
    ("\\boxed{25\\%}", "25", &[], true),
    ("\\boxed{\\$18}", "18", &[], true),
    ("\\boxed{18 dollars}", "18", &["dollars"], true),
    ("\\boxed{18 dollars}", "19", &["dollars"], false),
    // Multiple choice.
    ("\\boxed{B}", "B", &[], true),
    ("\\boxed{(B)}", "B", &[], true),
    ("\\boxed{\\text{(C)}}", "C", &[], true),
    ("\\boxed{c}", "C", &[], true),
    ("\\boxed{(D) 42}", "D", &[], true),
    ("\\boxed{B}", "(B)", &[], true),
    ("\\boxed{A}", "B", &[], false),
    ("\\boxed{Carbon}", "C", &[], false),
    // Whitespace, variables, notation wrappers, full stops.
    ("\\boxed{x = 3}", "3", &[], true),
    ("\\boxed{x=3}", "x = 3", &[], true),
    ("\\boxed{ 3 }", "3", &[], true),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", &[], true),
    ("\\boxed{(2,1)}", "(1,2)", &[], false),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", &[], true),
    ("\\boxed{[0.5, 1]}", "[\\frac12, 1]", &[], true),
    ("\\boxed{(1,2,3)}", "(1,2)", &[], false),
    ("\\boxed{\\sqrt{2}}", "\\sqrt2", &[], true),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", &[], false),
    ("\\boxed{\\text{yes}}", "yes", &[], true),
    ("\\boxed{\\pi}", "\\pi", &[], true),
    ("\\boxed{\\displaystyle 7}", "7", &[], true),
    ("\\boxed{1.5e3}", "1500", &[], true),
    ("\\boxed{1.5\\times10^{3}}", "1500", &[], true),
    ("\\boxed{2.5 \\times 10^{-1}}", "1/4", &[], true),
    // No answer at all, or the wrong last number.
    ("I cannot solve this.", "4", &[], false),
    ("It is 4 apples and 2 pears", "4", &[], false),
    ("\\boxed{}", "0", &[], false),
    ("\\boxed{0}", "0", &[], true),
    ("\\boxed{007}", "7", &[], true),
];

#[test]
fn tricky_answers_get_the_expected_verdict() {
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    let extractor = Extractor::new();
    let mut failures = Vec::new();
    for &(output, reference, units, want) in CASES {
        let units: Vec<String> = units.iter().map(|u| u.to_string()).collect();
        let reference = Reference::new(reference, &units);
        let got = extractor
            .extract(output)
            .is_some_and(|answer| reference.matches(&answer));
        if got != want {
            failures.push(format!(
                "{output:?} vs {:?}: got {got}, want {want}",
                reference.canonical()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn equal_answers_share_a_vote_key() {
    let key = |s: &str| canonical(s, &[], false).vote_key();
    assert_eq!(key("\\frac{1}{2}"), key("0.5"));
    assert_eq!(key("1,000"), key("1000"));
    assert_eq!(key("\\{1,2\\}"), key("\\{2,1\\}"));
    assert_ne!(key("(1,2)"), key("(2,1)"));
    assert_eq!(key("x = -3"), "-3");
    assert_eq!(key("(B)"), "B");
}

#[test]
fn huge_numbers_stay_text_instead_of_overflowing() {
    let big = "9".repeat(60);
    assert!(matches!(canonical(&big, &[], false), Canonical::Text(_)));
    assert!(matches!(canonical("1e999", &[], false), Canonical::Text(_)));
    assert!(Reference::new(&big, &[]).matches(&big));
}
