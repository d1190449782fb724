//! `r1serve eval`: its scores against an independent reference (the Python
//! client recomputes pass@1, pass@k and cons@k from the raw rows of a fixed
//! results file), and the real binary end to end on Qwen2.5-Coder-0.5B over
//! 20 generated arithmetic problems: in process and against a live server
//! with the same seed, and killed mid-run then resumed; and the API's
//! `consensus` vote on the live server.

mod common;

use common::server::{chat, joined, python, Server, KEY, QWEN};
use r1serve::answers::extract::last_number;
use r1serve::answers::vote::Tally;
use r1serve::eval::run::read_rows;
use r1serve::eval::score::{report, SampleRow};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The report's scores equal the Python recomputation at several k; the
/// fixture's corner cases (ties, no answers, a short problem, a repeated
/// row) all enter the numbers.
#[test]
fn scores_match_an_independent_python_computation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/eval_results.jsonl");
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let rows: Vec<SampleRow> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    for k in [1, 2, 4] {
        let output = std::process::Command::new(python())
            .arg(root.join("tests/eval_scores_client.py"))
            .arg(&fixture)
            .arg(k.to_string())
            .output()
            .expect("cannot run Python");
        assert!(
            output.status.success(),
            "eval_scores_client.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let want: Value = serde_json::from_slice(&output.stdout).expect("json");
        let got = report(&rows, k);
        assert_eq!(got.problems as u64, want["problems"].as_u64().unwrap());
        // Both sides sum at most ten terms in double precision; 1e-12 is
        // far above their rounding (10 × 2^-53) and far below any real
        // difference (one sample of one problem moves a score by ≥ 1/40).
        for (name, value) in [
            ("pass_at_1", got.pass_at_1),
            ("pass_at_k", got.pass_at_k),
            ("cons_at_k", got.cons_at_k),
        ] {
            let reference = want[name].as_f64().unwrap();
            assert!(
                (value - reference).abs() < 1e-12,
                "k={k} {name}: rust {value}, python {reference}"
            );
        }
        assert_eq!(got.samples, 39, "the repeated row counts once");
        if k == 1 {
            assert!(
                (got.pass_at_k - got.pass_at_1).abs() < 1e-12,
                "pass@1 twice"
            );
        }
    }
}

/// Sampling shared by every run: k = 4, short answers, one seed.
const SAMPLING: &[&str] = &[
    "--samples",
    "4",
    "--max-tokens",
    "16",
    "--seed",
    "7",
    "--concurrency",
    "16",
];

/// The test server's engine settings (`Server::start` adds the memory and
/// length), so the in-process engine batches the same way.
const ENGINE: &[&str] = &[
    "--kv-cache-memory",
    "256MiB",
    "--max-model-len",
    "2048",
    "--max-num-seqs",
    "16",
];

fn problems() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arithmetic20.jsonl")
}

/// `r1serve eval` with `--data` the arithmetic problems and `--out`, over
/// `target` flags; the model run in process when `target` is empty.
fn eval_command(target: &[&str], out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_r1serve"));
    command
        .arg("eval")
        .arg("--data")
        .arg(problems())
        .arg("--out")
        .arg(out)
        .args(SAMPLING)
        .arg("--json")
        .env_remove("R1SERVE_API_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if target.is_empty() {
        let model = common::server::model_path(QWEN);
        command.arg("--model").arg(model).arg("--").args(ENGINE);
    } else {
        command.args(target);
    }
    command
}

/// Runs an eval to completion; its JSON report.
fn eval(target: &[&str], out: &Path) -> Value {
    let output = eval_command(target, out)
        .output()
        .expect("cannot run r1serve eval");
    assert!(
        output.status.success(),
        "r1serve eval failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON report")
}

/// (id, sample) → extracted answer, asserting each pair appears once.
fn answers(out: &Path) -> BTreeMap<(String, usize), Option<String>> {
    let mut map = BTreeMap::new();
    for row in read_rows(out).expect("results") {
        let key = (row.id.clone(), row.sample);
        assert!(
            map.insert(key, row.answer).is_none(),
            "{} sample {} twice",
            row.id,
            row.sample
        );
    }
    map
}

/// Same seed, same per-sample answers in process and over HTTP; a run
/// killed mid-way resumes without redoing finished samples and ends with
/// the same answers as an uninterrupted one.
#[tokio::test]
async fn eval_in_process_over_http_and_resumed() {
    let dir = std::env::temp_dir().join(format!("r1serve-eval-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local_out = dir.join("local.jsonl");
    let local = eval(&[], &local_out);
    assert_eq!(local["problems"], 20);
    assert_eq!(local["samples"], 80);
    assert_eq!(local["run"]["samples_run"], 80);
    // The model answers two-digit arithmetic often enough that a checker
    // rejecting everything (or a broken extraction) cannot pass.
    assert!(local["pass_at_1"].as_f64().unwrap() > 0.2, "{local}");
    let local_answers = answers(&local_out);
    assert_eq!(local_answers.len(), 80);

    let server = Server::start(QWEN, &["--max-num-seqs", "16"], Some(KEY)).await;
    let http_out = dir.join("http.jsonl");
    let base = server.url("/v1");
    let http = eval(&["--url", &base, "--api-key", KEY], &http_out);
    consensus_on_a_live_server(&server).await;
    drop(server);
    assert_eq!(answers(&http_out), local_answers, "in process vs over HTTP");
    assert_eq!(http["pass_at_1"], local["pass_at_1"]);
    assert_eq!(http["cons_at_k"], local["cons_at_k"]);

    // Kill once at least 20 samples are written, then resume.
    let resumed_out = dir.join("resumed.jsonl");
    let mut child = eval_command(&[], &resumed_out)
        .spawn()
        .expect("cannot run r1serve eval");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let written = std::fs::read_to_string(&resumed_out).map_or(0, |t| t.lines().count());
        if written >= 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "eval finished before the kill"
        );
        assert!(Instant::now() < deadline, "no progress in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_rows(&resumed_out).unwrap().len();
    assert!(
        (20..80).contains(&before),
        "{before} samples before the kill"
    );
    let resumed = eval(&[], &resumed_out);
    assert_eq!(resumed["run"]["samples_resumed"], before as u64);
    assert_eq!(resumed["run"]["samples_run"], (80 - before) as u64);
    assert_eq!(
        answers(&resumed_out),
        local_answers,
        "resumed vs uninterrupted"
    );
    assert_eq!(resumed["pass_at_1"], local["pass_at_1"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `consensus` over HTTP: k choices whose extracted answers the vote
/// counts (recounted here from the choices the response returns), the
/// prompt prefilled once for all k (the prefix-cache counters), the same
/// vote in the final chunk of the same request streamed, and 400s for
/// requests it cannot honour.
async fn consensus_on_a_live_server(server: &Server) {
    const K: u64 = 4;
    const BLOCK: u64 = 16;
    let body = chat(
        "Consensus check: what is 17 + 26? Answer with the number.",
        json!({
            "consensus": {"samples": K, "extract": "last_number"},
            "temperature": 0.8,
            "seed": 11,
            "max_tokens": 24,
        }),
    );
    let hits = server.metric("r1serve:prefix_cache_hits_total").await;
    let queries = server.metric("r1serve:prefix_cache_queries_total").await;
    let response = server.post_ok("/v1/chat/completions", &body).await;
    let prompt = response["usage"]["prompt_tokens"].as_u64().unwrap();
    let choices = response["choices"].as_array().unwrap();
    assert_eq!(choices.len() as u64, K);
    let mut tally = Tally::default();
    let mut no_answer = 0;
    for (i, choice) in choices.iter().enumerate() {
        match last_number(choice["message"]["content"].as_str().unwrap_or("")) {
            Some(answer) => tally.add_answer(&answer, i),
            None => no_answer += 1,
        }
    }
    let vote = &response["consensus"];
    assert_eq!(vote["total"], K, "{vote}");
    assert_eq!(vote["no_answer"], no_answer, "{vote}");
    let votes = vote["votes"].as_object().unwrap();
    let counted: u64 = votes.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(counted + no_answer, K, "{vote}");
    let winner = tally
        .winner()
        .expect("a 0.5B model writes a number in 24 tokens");
    assert_eq!(vote["answer"], winner.answer.as_str(), "{response}");
    assert_eq!(votes[&winner.answer], winner.votes as u64, "{vote}");
    // One lookup per choice; choices after the first find every full block
    // of the prompt (all but its last token) that the first computed.
    let full_blocks = (prompt - 1) / BLOCK * BLOCK;
    let queried = server.metric("r1serve:prefix_cache_queries_total").await - queries;
    let hit = server.metric("r1serve:prefix_cache_hits_total").await - hits;
    assert_eq!(queried as u64, K * prompt);
    assert!(
        hit as u64 >= (K - 1) * full_blocks && full_blocks > 0,
        "{hit} hits for {K} x {prompt} prompt tokens"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = server.stream("/v1/chat/completions", &streamed).await;
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["consensus"], *vote, "the same seed streamed");
    assert!(rest.iter().all(|c| c.get("consensus").is_none()));
    let contents = joined(rest, "content");
    for (choice, text) in choices.iter().zip(&contents) {
        assert_eq!(choice["message"]["content"].as_str().unwrap_or(""), text);
    }

    let mut mismatched = body.clone();
    mismatched["n"] = json!(2);
    server
        .post_400("/v1/chat/completions", &mismatched, "n")
        .await;
    let mut bad_regex = body.clone();
    bad_regex["consensus"]["extract"] = json!({"regex": "("});
    server
        .post_400("/v1/chat/completions", &bad_regex, "consensus")
        .await;
}
