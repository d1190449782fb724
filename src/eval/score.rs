//! The scores of an eval run, computed from its per-sample rows (the lines
//! of `--out`), so a resumed or copied results file gives the same report:
//! pass@1 (mean over the k samples), unbiased pass@k (Chen et al. 2021),
//! cons@k (majority vote), format rate, language consistency, token
//! statistics and reasoning end states.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::answers::vote::Tally;

/// How one sample's answer was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    Wrong,
    /// No final answer could be extracted.
    NoAnswer,
}

/// One sample of one problem: a line of `--out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// The problem's `id`.
    pub id: String,
    /// Sample index, `0..k`.
    pub sample: usize,
    /// The extracted final answer.
    pub answer: Option<String>,
    /// The key majority voting groups this answer under
    /// ([`crate::answers::answer::Canonical::vote_key`]).
    pub vote_key: Option<String>,
    pub verdict: Verdict,
    /// Reasoning closed by `</think>` and an answer present.
    pub format_ok: bool,
    /// Share of the reasoning's words in the problem's script; `None` when
    /// the reasoning has no words.
    pub language_share: Option<f64>,
    pub reasoning_tokens: usize,
    pub answer_tokens: usize,
    /// The choice's `finish_reason`.
    pub finish_reason: String,
    /// `closed`, `unclosed` (cut off while thinking) or `none` (no
    /// reasoning block).
    pub reasoning_end: String,
    /// Seconds from submission to the last token.
    pub seconds: f64,
}

/// The report over all problems.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub problems: usize,
    pub samples: usize,
    /// The k of pass@k and cons@k.
    pub k: usize,
    pub pass_at_1: f64,
    pub pass_at_k: f64,
    pub cons_at_k: f64,
    pub format_rate: f64,
    pub no_answer_rate: f64,
    /// Mean share of reasoning words in the problem's script, over the
    /// samples whose reasoning has words; `None` when none has.
    pub language_consistency: Option<f64>,
    pub reasoning_tokens_mean: f64,
    pub reasoning_tokens_median: f64,
    pub answer_tokens_mean: f64,
    pub answer_tokens_median: f64,
    /// Samples per reasoning end state.
    pub reasoning_end: BTreeMap<String, usize>,
    /// Samples per finish reason.
    pub finish_reason: BTreeMap<String, usize>,
}

/// The unbiased pass@k estimate for one problem with `n` samples of which
/// `c` are correct: 1 − C(n−c, k)/C(n, k), as a product so it cannot
/// overflow. With fewer than `k` samples it is pass@n.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    let k = k.min(n);
    if n == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    let miss: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - miss
}

/// Whether the majority answer among `rows` (one problem) is correct: the
/// vote key with the most samples wins; on a tie, the key whose first sample
/// has the lowest index. No answer at all is a miss.
pub fn consensus_correct(rows: &[&SampleRow]) -> bool {
    let mut tally = Tally::default();
    for row in rows {
        if let Some(key) = &row.vote_key {
            tally.add(key, key, row.sample);
        }
    }
    tally
        .winner()
        .and_then(|winner| {
            rows.iter()
                .find(|r| r.vote_key.as_ref() == Some(&winner.key))
        })
        .is_some_and(|r| r.verdict == Verdict::Correct)
}

/// The report over `rows` at `k` samples per problem. Rows repeated for
/// one `(id, sample)` (a resumed run) count once, the first.
pub fn report(rows: &[SampleRow], k: usize) -> Report {
    let mut by_problem: BTreeMap<&str, BTreeMap<usize, &SampleRow>> = BTreeMap::new();
    for row in rows {
        by_problem
            .entry(&row.id)
            .or_default()
            .entry(row.sample)
            .or_insert(row);
    }
    let unique: Vec<&SampleRow> = by_problem
        .values()
        .flat_map(|m| m.values().copied())
        .collect();
    let problems = by_problem.len().max(1) as f64;
    let (mut pass1, mut passk, mut cons) = (0.0, 0.0, 0.0);
    for samples in by_problem.values() {
        let samples: Vec<&SampleRow> = samples.values().copied().collect();
        let n = samples.len();
        let c = samples
            .iter()
            .filter(|r| r.verdict == Verdict::Correct)
            .count();
        pass1 += c as f64 / n as f64;
        passk += pass_at_k(n, c, k);
        cons += f64::from(u8::from(consensus_correct(&samples)));
    }
    let total = unique.len().max(1) as f64;
    let rate =
        |f: &dyn Fn(&SampleRow) -> bool| unique.iter().filter(|r| f(r)).count() as f64 / total;
    let shares: Vec<f64> = unique.iter().filter_map(|r| r.language_share).collect();
    let reasoning: Vec<usize> = unique.iter().map(|r| r.reasoning_tokens).collect();
    let answer: Vec<usize> = unique.iter().map(|r| r.answer_tokens).collect();
    let count = |f: &dyn Fn(&SampleRow) -> &str| {
        let mut map = BTreeMap::new();
        for r in &unique {
            *map.entry(f(r).to_owned()).or_insert(0) += 1;
        }
        map
    };
    Report {
        problems: by_problem.len(),
        samples: unique.len(),
        k,
        pass_at_1: pass1 / problems,
        pass_at_k: passk / problems,
        cons_at_k: cons / problems,
        format_rate: rate(&|r| r.format_ok),
        no_answer_rate: rate(&|r| r.verdict == Verdict::NoAnswer),
        language_consistency: (!shares.is_empty())
            .then(|| shares.iter().sum::<f64>() / shares.len() as f64),
        reasoning_tokens_mean: mean(&reasoning),
        reasoning_tokens_median: median(&reasoning),
        answer_tokens_mean: mean(&answer),
        answer_tokens_median: median(&answer),
        reasoning_end: count(&|r| &r.reasoning_end),
        finish_reason: count(&|r| &r.finish_reason),
    }
}

impl Report {
    /// The report as a two-column terminal table.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let tally = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rows = [
            ("problems", self.problems.to_string()),
            ("samples", self.samples.to_string()),
            ("pass@1", pct(self.pass_at_1)),
            (&*format!("pass@{}", self.k), pct(self.pass_at_k)),
            (&*format!("cons@{}", self.k), pct(self.cons_at_k)),
            ("format rate", pct(self.format_rate)),
            ("no answer", pct(self.no_answer_rate)),
            (
                "language consistency",
                self.language_consistency.map_or("-".into(), pct),
            ),
            (
                "reasoning tokens",
                format!(
                    "mean {:.1}, median {:.1}",
                    self.reasoning_tokens_mean, self.reasoning_tokens_median
                ),
            ),
            (
                "answer tokens",
                format!(
                    "mean {:.1}, median {:.1}",
                    self.answer_tokens_mean, self.answer_tokens_median
                ),
            ),
            ("reasoning end", tally(&self.reasoning_end)),
            ("finish reason", tally(&self.finish_reason)),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        rows.iter().map(|(k, v)| format!("{k:<22}{v}\n")).collect()
    }
}

fn mean(values: &[usize]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<usize>() as f64 / values.len() as f64
}

fn median(values: &[usize]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_binomial_formula() {
        let choose =
            |n: u64, k: u64| -> f64 { (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product() };
        for n in 1..=12usize {
            for c in 0..=n {
                for k in 1..=n {
                    let want = if n - c < k {
                        1.0
                    } else {
                        1.0 - choose((n - c) as u64, k as u64) / choose(n as u64, k as u64)
                    };
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - want).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {want}"
                    );
                }
            }
        }
        assert_eq!(pass_at_k(4, 1, 1), 0.25);
        assert_eq!(pass_at_k(0, 0, 4), 0.0);
        assert_eq!(pass_at_k(2, 1, 4), 1.0);
    }
}
