//! Running an eval: every (problem, sample) pair not already in `--out` is
//! sent as one chat completion, at most `concurrency` at a time, to r1serve's
//! own router in this process or to any OpenAI-compatible server; each
//! finished sample is judged and appended to `--out` at once, so a killed
//! run resumes where it stopped.
//!
//! Sample `i` is sent with `n = 1` and seed `seed ^ i·φ64`, the stream the
//! server's sampler gives choice `i` of an `n = k` request seeded `seed`
//! (`SamplerState::new`), so answers do not depend on how the k samples are
//! grouped into requests, nor on which process serves them.

use super::problems::Problem;
use super::score::{SampleRow, Verdict};
use crate::answers::extract::Extractor;
use crate::answers::language::WordCounts;
use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::{header, Request};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The odd constant the sampler mixes a choice's index into its seed with.
const INDEX_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Largest response body read back from the in-process router.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Where requests go.
#[derive(Clone)]
pub enum Target {
    /// r1serve's router in this process: the server's validation, prompt
    /// rendering and sampling, without a socket.
    Router(axum::Router),
    /// An OpenAI-compatible server at `base` (`http://host:port/v1`).
    Http {
        client: reqwest::Client,
        base: String,
        api_key: Option<String>,
    },
}

impl Target {
    /// An HTTP target; `base_url` with or without a trailing `/`.
    pub fn http(base_url: &str, api_key: Option<String>) -> Result<Self> {
        // Servers close idle keep-alive connections (uvicorn, under vLLM,
        // after 5 s); reusing one just as it closes fails the request, so
        // idle connections are dropped before any server drops them.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(4))
            .build()
            .context("building the HTTP client")?;
        Ok(Target::Http {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// `GET`s (`body` `None`) or `POST`s JSON to `path` under `/v1`; a
    /// non-2xx answer is an error carrying the server's message.
    async fn call(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, bytes) = match self {
            Target::Router(app) => {
                let builder = Request::builder().uri(format!("/v1{path}"));
                let request = match body {
                    Some(body) => builder
                        .method("POST")
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(body)?))?,
                    None => builder.method("GET").body(Body::empty())?,
                };
                let response = app.clone().oneshot(request).await?;
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), MAX_RESPONSE_BYTES).await?;
                (status, bytes.to_vec())
            }
            Target::Http {
                client,
                base,
                api_key,
            } => {
                let url = format!("{base}{path}");
                let mut builder = match body {
                    Some(body) => client.post(&url).json(body),
                    None => client.get(&url),
                };
                if let Some(key) = api_key {
                    builder = builder.bearer_auth(key);
                }
                let response = builder
                    .send()
                    .await
                    .with_context(|| format!("calling {url}"))?;
                let status = response.status().as_u16();
                (status, response.bytes().await?.to_vec())
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            bail!("{path} answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{path} answered with bad JSON: {text}"))
    }

    /// The first model the server lists.
    pub async fn model_name(&self) -> Result<String> {
        let models = self.call("/models", None).await?;
        models["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .context("the server lists no model at /v1/models")
    }
}

/// How to sample and where to write.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Samples per problem (k).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub seed: u64,
    /// Results file: read to resume, appended to as samples finish.
    pub out: Option<PathBuf>,
    /// How final answers are found.
    pub extractor: Extractor,
}

/// This run's own work (the report covers resumed rows too).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunStats {
    /// Samples generated by this run.
    pub samples_run: usize,
    /// Samples found already finished in `--out`.
    pub samples_resumed: usize,
    pub wall_seconds: f64,
    /// Completion tokens per second of wall time over this run's samples.
    pub tokens_per_second: f64,
}

/// Runs every unfinished sample; returns all rows of these problems
/// (resumed ones first) and this run's statistics.
pub async fn run(
    target: &Target,
    problems: &[Problem],
    opts: &EvalOptions,
) -> Result<(Vec<SampleRow>, RunStats)> {
    let ids: HashSet<&str> = problems.iter().map(|p| p.id.as_str()).collect();
    let mut rows: Vec<SampleRow> = match &opts.out {
        Some(path) => read_rows(path)?
            .into_iter()
            .filter(|r| ids.contains(r.id.as_str()) && r.sample < opts.samples)
            .collect(),
        None => Vec::new(),
    };
    let done: HashSet<(String, usize)> = rows.iter().map(|r| (r.id.clone(), r.sample)).collect();
    let todo: Vec<(&Problem, usize)> = problems
        .iter()
        .flat_map(|p| (0..opts.samples).map(move |i| (p, i)))
        .filter(|(p, i)| !done.contains(&(p.id.clone(), *i)))
        .collect();
    let mut stats = RunStats {
        samples_resumed: done.len(),
        ..Default::default()
    };
    let model = target.model_name().await?;
    let mut out = match &opts.out {
        Some(path) => Some(
            drop_torn_tail(path)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                })
                .with_context(|| format!("opening --out {}", path.display()))?,
        ),
        None => None,
    };
    let mut progress = Progress::new(todo.len());
    let started = Instant::now();
    let mut tokens = 0usize;
    let mut finished = futures::stream::iter(todo)
        .map(|(problem, sample)| run_sample(target, &model, problem, sample, opts))
        .buffer_unordered(opts.concurrency.max(1));
    while let Some(row) = finished.next().await {
        let row = row?;
        if let Some(file) = &mut out {
            let mut line = serde_json::to_string(&row)?;
            line.push('\n');
            file.write_all(line.as_bytes())?;
            file.flush()?;
        }
        tokens += row.reasoning_tokens + row.answer_tokens;
        stats.samples_run += 1;
        progress.tick();
        rows.push(row);
    }
    progress.finish();
    stats.wall_seconds = started.elapsed().as_secs_f64();
    stats.tokens_per_second = tokens as f64 / stats.wall_seconds.max(1e-9);
    Ok((rows, stats))
}

/// The rows of a results file; a missing file has none, and a last line
/// cut off by a kill is ignored (its sample runs again).
pub fn read_rows(path: &Path) -> Result<Vec<SampleRow>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading --out {}", path.display())),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().enumerate() {
        let last = number + 1 == lines.len();
        match serde_json::from_str(line) {
            Ok(row) => rows.push(row),
            Err(_) if last && !complete => {}
            Err(e) => bail!("{}:{}: not a result row: {e}", path.display(), number + 1),
        }
    }
    Ok(rows)
}

/// Cuts a line left half-written by a kill off the end of `path`, so new
/// rows start on a line of their own.
fn drop_torn_tail(path: &Path) -> std::io::Result<()> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let keep = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(keep as u64)
}

/// The seed that gives sample `index` of `seed` the stream of choice
/// `index` in an `n = k` request.
pub fn sample_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64).wrapping_mul(INDEX_MIX)
}

async fn run_sample(
    target: &Target,
    model: &str,
    problem: &Problem,
    sample: usize,
    opts: &EvalOptions,
) -> Result<SampleRow> {
    let body = json!({
        "model": model,
        "messages": problem.messages,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "max_tokens": opts.max_tokens,
        // The API's seed is an i64 the server reads back as u64 bits.
        "seed": sample_seed(opts.seed, sample) as i64,
    });
    let started = Instant::now();
    let response = target
        .call("/chat/completions", Some(&body))
        .await
        .with_context(|| format!("problem {:?} sample {sample}", problem.id))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(judge(problem, sample, &response, opts, seconds))
}

/// Reads one completion: the reasoning (a separate field, or `<think>` in
/// the content), the answer, tokens and end state, and checks the answer.
fn judge(
    problem: &Problem,
    sample: usize,
    response: &Value,
    opts: &EvalOptions,
    seconds: f64,
) -> SampleRow {
    let choice = &response["choices"][0];
    let message = &choice["message"];
    let finish_reason = choice["finish_reason"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let content = message["content"].as_str().unwrap_or("");
    let field = message["reasoning_content"]
        .as_str()
        .or_else(|| message["reasoning"].as_str());
    let (reasoning, answer_text, reasoning_end) = match (field, content.split_once("</think>")) {
        (Some(r), _) if finish_reason == "length" && content.is_empty() => (r, "", "unclosed"),
        (Some(r), _) => (r, content, "closed"),
        (None, Some((r, a))) => (r.trim_start().trim_start_matches("<think>"), a, "closed"),
        (None, None) if content.trim_start().starts_with("<think>") => (content, "", "unclosed"),
        (None, None) => ("", content, "none"),
    };
    let answer = opts.extractor.extract(answer_text);
    let canonical = answer.as_deref().map(|a| problem.reference.read(a));
    let verdict = match &canonical {
        None => Verdict::NoAnswer,
        Some(c) if crate::answers::answer::equivalent(c, problem.reference.canonical()) => {
            Verdict::Correct
        }
        Some(_) => Verdict::Wrong,
    };
    let usage = &response["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0) as usize;
    let reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .map_or(0, |n| n as usize)
        .min(completion);
    let judged_text = if reasoning.is_empty() {
        answer_text
    } else {
        reasoning
    };
    SampleRow {
        id: problem.id.clone(),
        sample,
        vote_key: canonical.map(|c| c.vote_key()),
        answer,
        verdict,
        format_ok: reasoning_end == "closed" && verdict != Verdict::NoAnswer,
        language_share: problem
            .script
            .and_then(|s| WordCounts::of(judged_text).share(s)),
        reasoning_tokens,
        answer_tokens: completion - reasoning_tokens,
        finish_reason,
        reasoning_end: reasoning_end.to_owned(),
        seconds,
    }
}

/// A progress line with ETA on stderr: redrawn in place on a terminal,
/// else one line per tenth of the work.
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    terminal: bool,
    last_tenth: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_tenth: 0,
        }
    }

    fn tick(&mut self) {
        self.done += 1;
        let tenth = self.done * 10 / self.total.max(1);
        if !self.terminal && tenth == self.last_tenth {
            return;
        }
        self.last_tenth = tenth;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / elapsed.max(1e-9);
        let eta = Duration::from_secs_f64((self.total - self.done) as f64 / rate.max(1e-9));
        let line = format!(
            "eval: {}/{} samples, {rate:.2}/s, ETA {}s",
            self.done,
            self.total,
            eta.as_secs()
        );
        if self.terminal {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.terminal && self.done > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasoning in its own field or as `<think>` in the content, closed or
    /// cut off, and the answer read from after it only.
    #[test]
    fn completions_are_judged_by_their_parts() {
        let problem = super::super::problems::tests_problem("12");
        let opts = EvalOptions {
            samples: 1,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 64,
            concurrency: 1,
            seed: 0,
            out: None,
            extractor: Extractor::new(),
        };
        let response = |message: Value, finish: &str| {
            json!({"choices": [{"message": message, "finish_reason": finish}],
                   "usage": {"completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 7}}})
        };
        let judged = |message: Value, finish: &str| {
            judge(&problem, 0, &response(message, finish), &opts, 1.0)
        };
        let row = judged(
            json!({"reasoning_content": "so 5 + 7", "content": "\\boxed{12}"}),
            "stop",
        );
        assert_eq!(
            (row.verdict, row.format_ok, &*row.reasoning_end),
            (Verdict::Correct, true, "closed")
        );
        assert_eq!((row.reasoning_tokens, row.answer_tokens), (7, 3));
        assert_eq!(row.language_share, Some(1.0));
        let row = judged(
            json!({"content": "<think>maybe 12</think> It is 13."}),
            "stop",
        );
        assert_eq!(
            (row.verdict, row.answer.as_deref()),
            (Verdict::Wrong, Some("13"))
        );
        let row = judged(json!({"reasoning": "it is 12 or", "content": ""}), "length");
        assert_eq!(
            (row.verdict, &*row.reasoning_end, row.format_ok),
            (Verdict::NoAnswer, "unclosed", false)
        );
        let row = judged(json!({"content": "12"}), "stop");
        assert_eq!(
            (row.verdict, &*row.reasoning_end, row.format_ok),
            (Verdict::Correct, "none", false)
        );
    }

    #[test]
    fn sample_seeds_follow_the_sampler() {
        assert_eq!(sample_seed(7, 0), 7);
        assert_eq!(sample_seed(7, 1), 7 ^ INDEX_MIX);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_other_damage_refused() {
        let dir = std::env::temp_dir().join(format!("r1serve-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let row = r#"{"id":"a","sample":0,"answer":"1","vote_key":"1","verdict":"correct","format_ok":true,"language_share":null,"reasoning_tokens":1,"answer_tokens":2,"finish_reason":"stop","reasoning_end":"closed","seconds":0.5}"#;
        std::fs::write(&path, format!("{row}\n{}", &row[..40])).unwrap();
        assert_eq!(read_rows(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("{}\n{row}\n", &row[..40])).unwrap();
        assert!(format!("{:#}", read_rows(&path).unwrap_err()).contains("out.jsonl:1"));
        assert!(read_rows(&dir.join("missing.jsonl")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
