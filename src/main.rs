//! The `r1serve` command line. `serve` runs the OpenAI-compatible server;
//! flags follow `vllm serve` so deployment scripts carry over. `generate`
//! runs one prompt through the same engine and reports its speed.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use r1serve::answers::extract::Extractor;
use r1serve::api::backend::TokenizerCodec;
use r1serve::api::connections::ConnectionLimits;
use r1serve::api::protocol::{unix_timestamp, ReasoningField};
use r1serve::api::router::{router, RouterConfig};
use r1serve::api::server::{serve, ServerOptions};
use r1serve::api::state::{AppState, ServedModel, ThinkingDefaults};
use r1serve::engine::reasoning_control::{LoopGuardMode, ReasoningConfig, DEFAULT_CLOSE_TEXT};
use r1serve::engine::{Engine, EngineConfig};
use r1serve::eval::run::{run, EvalOptions, Target};
use r1serve::eval::score::report;
use r1serve::kernels::dense::Precision;
use r1serve::kernels::device::{DeviceOptions, DeviceSpec};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::kv_events::KvEventsConfig;
use r1serve::metrics::{Metrics, MetricsCompat};
use r1serve::model::generation_config::GenerationDefaults;
use r1serve::model::load::{load, LoadOptions};
use r1serve::reasoning::{ReasoningParser, THINK_END, THINK_START};
use r1serve::structured::GrammarVocab;
use r1serve::tokenizer::ChatTemplate;
use r1serve::tokenizer::Tokenizer;
use r1serve::tools::ToolCallParser;

/// OpenAI-compatible inference server for DeepSeek-R1 distilled models.
#[derive(Debug, Parser)]
#[command(name = "r1serve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model over the OpenAI HTTP API.
    Serve(Box<ServeArgs>),
    /// Generate text for one prompt, streamed to stdout.
    Generate(GenerateArgs),
    /// Evaluate reasoning on a problem file as the DeepSeek-R1 paper does:
    /// k samples per problem, rule-checked answers, pass@1, pass@k, cons@k.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["model", "url"])))]
struct EvalArgs {
    /// Problems: JSON lines with `id`, `prompt` or `messages`, `answer`, and
    /// optionally `language` and `units`.
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Run this model in this process, with `serve`'s defaults; `serve`
    /// flags go after `--` (e.g. `-- --kv-cache-dtype fp8`).
    #[arg(long, value_name = "SRC")]
    model: Option<String>,
    /// Evaluate an OpenAI-compatible server instead, e.g.
    /// `http://localhost:8000/v1`.
    #[arg(long, value_name = "BASE_URL")]
    url: Option<String>,
    /// Bearer key for `--url` (unused with `--model`).
    #[arg(long, env = API_KEY_ENV, value_name = "KEY")]
    api_key: Option<String>,
    /// Samples per problem (the k of pass@k and cons@k).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    samples: u32,
    /// Sampling temperature (the R1 paper's 0.6).
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    /// Nucleus sampling mass (the R1 paper's 0.95).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Most tokens per sample, reasoning included.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Requests in flight at once; in process, also `--max-num-seqs`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Seed: sample i gets the stream of choice i of an `n = k` request
    /// with this seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-sample results, one JSON line each, appended as samples finish;
    /// an existing file is resumed (finished samples are not redone).
    #[arg(long, value_name = "FILE.jsonl")]
    out: Option<PathBuf>,
    /// Regex for the final answer when there is no `\boxed{…}` (its first
    /// group, else the whole match), before falling back to the last number.
    #[arg(long, value_name = "REGEX")]
    answer_regex: Option<String>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// `serve` flags for `--model`, after `--`.
    #[arg(last = true, value_name = "SERVE_FLAGS")]
    serve_flags: Vec<String>,
}

/// Where the forward pass runs.
#[derive(Debug, Args)]
struct DeviceArgs {
    /// `auto` (a CUDA GPU when this build has CUDA and one is present, else
    /// the CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value_t = DeviceSpec::Auto)]
    device: DeviceSpec,
    /// Fraction of the GPU's memory r1serve may use for weights,
    /// activations and the KV cache together (vLLM's flag); the KV cache
    /// gets what the weights leave, unless --kv-cache-memory says otherwise.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// What the CPU multiplies bf16 weights against: `auto` (bf16-rounded
    /// activations where the CPU has AVX512_BF16 or AMX-BF16, as llama.cpp
    /// does; f32 elsewhere) or `float32` (f32 activations everywhere: equal
    /// to an f32 reference up to f32 rounding, slower prefill on those CPUs).
    #[arg(long, default_value_t = Precision::Auto, value_name = "DTYPE")]
    dtype: Precision,
}

impl DeviceArgs {
    fn options(&self) -> DeviceOptions {
        DeviceOptions {
            device: self.device,
            gpu_memory_utilization: self.gpu_memory_utilization,
            precision: self.dtype,
        }
    }
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Model: a GGUF file, a Hugging Face directory, or a Hub repo id.
    #[arg(long, value_name = "SRC")]
    model: String,
    /// Hub revision (branch, tag or commit) when `--model` is a repo id.
    #[arg(long)]
    revision: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Keep generating past the end-of-sequence token (for timing exactly
    /// `--max-tokens` tokens).
    #[arg(long)]
    ignore_eos: bool,
    /// Sampling temperature; default: the model's recommendation, else greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass; default: the model's recommendation, else 1.
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
}

/// How chat output is split into `reasoning_content` and `content`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReasoningParserArg {
    /// `<think>` … `</think>` blocks.
    #[value(name = "deepseek_r1")]
    DeepseekR1,
    /// Everything is content.
    None,
    /// `deepseek_r1` when the tokenizer has `<think>` and `</think>` tokens
    /// or the chat template mentions `<think>`, else `none`.
    Auto,
}

/// How tool calls are read from chat answers (vLLM's `--tool-call-parser`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ToolCallParserArg {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Qwen2.5).
    Hermes,
    /// DeepSeek-R1, V3 and R1-0528: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
    /// and a fenced JSON block.
    #[value(name = "deepseek_r1")]
    DeepseekR1,
    /// DeepSeek-V3.1: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}`.
    #[value(name = "deepseek_v31")]
    DeepseekV31,
    /// Never parse tool calls: all output is content.
    None,
    /// Picked from the tool-call markup of the chat template (or of
    /// `--tool-call-template`); `none` when it has none.
    Auto,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Model to serve: a GGUF file, a Hugging Face directory, or a Hub repo
    /// id (`org/name`, optionally `org/name:file.gguf`).
    #[arg(long, value_name = "SRC")]
    model: String,
    /// Hub revision (branch, tag or commit) when `--model` is a repo id.
    #[arg(long)]
    revision: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Name clients pass as `model`; defaults to the model's own name.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Accepted API key (repeatable). Without one, no key is required; an
    /// empty or blank key is refused rather than read as "no key".
    #[arg(long = "api-key", env = API_KEY_ENV, value_name = "KEY")]
    api_keys: Vec<String>,
    /// Context length (prompt + completion); defaults to the model's.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Most tokens processed in one engine step; longer prompts are
    /// prefilled in chunks, and every running sequence decodes in every
    /// step even past it. Default: 256 on a CPU with AMX, 128 on other CPUs,
    /// 2048 on a GPU, or --max-num-seqs if that is more.
    #[arg(long)]
    max_num_batched_tokens: Option<usize>,
    /// Memory for the KV cache, e.g. `4GiB` or `512MiB`, all committed at
    /// startup; defaults to 40% of available memory.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    kv_cache_memory: Option<u64>,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Element type of the KV cache: f16, bf16 (f32's range, 8 significant
    /// bits), fp8 (E4M3, unscaled: twice f16's tokens per byte) or f32;
    /// `auto` is f16.
    #[arg(long, default_value_t = KvDtype::F16, value_name = "DTYPE")]
    kv_cache_dtype: KvDtype,
    /// Disable reuse of KV blocks across requests with a common prefix.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Jinja chat template file replacing the model's own.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// How to split reasoning from the answer.
    #[arg(long, value_enum, default_value_t = ReasoningParserArg::Auto)]
    reasoning_parser: ReasoningParserArg,
    /// Name of the reasoning field in chat responses: `reasoning_content`
    /// (DeepSeek, SGLang, llama.cpp), `reasoning` (vLLM, OpenRouter) or
    /// `both`; a request's `reasoning_field` overrides it.
    #[arg(long, default_value_t = ReasoningField::ReasoningContent, value_name = "NAME")]
    reasoning_field: ReasoningField,
    /// How to read tool calls from the answer.
    #[arg(long, value_enum, default_value_t = ToolCallParserArg::Auto)]
    tool_call_parser: ToolCallParserArg,
    /// Jinja chat template for requests that show the model tools, for
    /// models whose own template has no tool block.
    #[arg(long, value_name = "FILE")]
    tool_call_template: Option<PathBuf>,
    /// Sampling defaults replacing the model's own, as a JSON object, e.g.
    /// '{"temperature": 0.5, "top_p": 0.9}' (keys: temperature, top_p,
    /// top_k, min_p, repetition_penalty). A request's own values win.
    #[arg(long, value_name = "JSON", value_parser = parse_generation_config)]
    override_generation_config: Option<GenerationDefaults>,
    /// Requests allowed to wait for admission before new ones get 503.
    #[arg(long, default_value_t = 256)]
    max_waiting_requests: usize,
    /// Origin allowed by CORS (repeatable); `*` allows any.
    #[arg(long = "allowed-origins", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Largest accepted request body, e.g. `8MiB`.
    #[arg(long, value_parser = parse_bytes, default_value = "8MiB", value_name = "SIZE")]
    max_body_bytes: u64,
    /// Most open client connections; more are answered 503 and closed.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a client may take to send a request's headers, counted from
    /// when the connection waits for them (so idle keep-alive connections
    /// close after this long too).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a request body may pause between two pieces before the
    /// request fails with 408.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Also export every metric that has a vLLM equivalent under its
    /// `vllm:` name (`vllm`), for the llm-d endpoint picker's default
    /// configuration and vLLM's dashboards.
    #[arg(long, value_name = "NAMES")]
    metrics_compat: Option<MetricsCompat>,
    /// Publish KV-cache events for prefix-aware routers, as vLLM's JSON,
    /// e.g. '{"enable_kv_cache_events": true, "publisher": "zmq",
    /// "endpoint": "tcp://*:5557", "topic": "kv-events"}' (also:
    /// max_queue_size).
    #[arg(long, value_name = "JSON", value_parser = parse_kv_events_config)]
    kv_events_config: Option<KvEventsConfigArg>,
    #[command(flatten)]
    thinking: ThinkingArgs,
}

/// Bounds on the model's reasoning.
#[derive(Debug, Args)]
struct ThinkingArgs {
    /// Most reasoning tokens of a request that sets no budget or effort;
    /// unbounded when absent.
    #[arg(long, value_name = "TOKENS")]
    thinking_budget: Option<usize>,
    /// Budgets of `reasoning_effort` low, medium and high.
    #[arg(long, value_parser = parse_effort_budgets, default_value = "1024,4096,16384",
          value_name = "LOW,MEDIUM,HIGH")]
    reasoning_effort_budgets: EffortBudgets,
    /// Text fed to the model to close its reasoning at a budget: must
    /// contain `</think>` and be at most 32 tokens.
    #[arg(long, default_value = DEFAULT_CLOSE_TEXT, hide_default_value = true, value_name = "TEXT")]
    thinking_close_text: String,
    /// Tokens kept for the answer of a request that sets none: reasoning
    /// is closed in time to leave them under the token limit.
    #[arg(long, value_name = "TOKENS")]
    answer_token_reserve: Option<usize>,
    /// What to do when the reasoning repeats itself: `close` it so the
    /// model answers, `stop` the choice, or `off`.
    #[arg(long, default_value_t = LoopGuardMode::Close, value_name = "MODE")]
    reasoning_loop_guard: LoopGuardMode,
}

/// `--reasoning-effort-budgets` as parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EffortBudgets([usize; 3]);

fn parse_effort_budgets(text: &str) -> Result<EffortBudgets, String> {
    let values: Vec<usize> = text
        .split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("'{text}': {e}"))?;
    match values[..] {
        [low, medium, high] if low <= medium && medium <= high => {
            Ok(EffortBudgets([low, medium, high]))
        }
        _ => Err(format!(
            "'{text}' must be three increasing token counts, e.g. 1024,4096,16384"
        )),
    }
}

/// Environment variable read as `--api-key`.
const API_KEY_ENV: &str = "R1SERVE_API_KEY";

/// The API keys to require, refusing blank ones: `--api-key ""` (or an
/// empty `R1SERVE_API_KEY`, which clap may drop before it gets here) must
/// not quietly turn authentication off.
fn api_keys(args: &ServeArgs) -> Result<Vec<String>> {
    let env_blank =
        std::env::var_os(API_KEY_ENV).is_some_and(|v| v.to_string_lossy().trim().is_empty());
    if env_blank || args.api_keys.iter().any(|k| k.trim().is_empty()) {
        bail!(
            "an empty API key was given (--api-key or {API_KEY_ENV}); pass a real key, or no \
             --api-key and no {API_KEY_ENV} to serve without authentication"
        );
    }
    Ok(args.api_keys.iter().map(|k| k.trim().to_string()).collect())
}

/// Parses a byte size: a number with an optional unit, binary (`KiB`,
/// `MiB`, `GiB`, `TiB`, and the bare `K`, `M`, `G`, `T`) or decimal (`KB`,
/// `MB`, `GB`, `TB`), case-insensitive.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 4GiB or 512MiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    let bytes = number * scale;
    if bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64 {
        Ok(bytes as u64)
    } else {
        Err(format!("size '{text}' is out of range"))
    }
}

/// `--kv-events-config` as parsed: `None` inside when it turns events off.
#[derive(Clone, Debug)]
struct KvEventsConfigArg(Option<KvEventsConfig>);

fn parse_kv_events_config(json: &str) -> Result<KvEventsConfigArg, String> {
    KvEventsConfig::parse(json)
        .map(KvEventsConfigArg)
        .map_err(|e| format!("{e:#}"))
}

/// Parses `--override-generation-config`.
fn parse_generation_config(json: &str) -> Result<GenerationDefaults, String> {
    GenerationDefaults::from_override(json).map_err(|e| format!("{e:#}"))
}

fn main() -> Result<()> {
    // Logs go to stderr, so `generate`'s text on stdout stays clean, and are
    // coloured only for a person watching a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => run_serve(*args),
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(r1serve::generate::run(r1serve::generate::GenerateOptions {
                model: args.model,
                revision: args.revision,
                device: args.device.options(),
                prompt: args.prompt,
                chat: args.chat,
                max_tokens: args.max_tokens,
                ignore_eos: args.ignore_eos,
                temperature: args.temperature,
                top_p: args.top_p,
                seed: args.seed,
            }))
        }
    }
}

fn router_config(args: &ServeArgs) -> Result<RouterConfig> {
    Ok(RouterConfig {
        max_body_bytes: usize::try_from(args.max_body_bytes)
            .context("--max-body-bytes is too large for this platform")?,
        allowed_origins: args.allowed_origins.clone(),
        body_timeout: Duration::from_secs(args.body_timeout),
    })
}

fn run_serve(args: ServeArgs) -> Result<()> {
    let api_keys = api_keys(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let metrics = Metrics::install_with(args.metrics_compat)?;
        let state = AppState::new(api_keys, metrics);
        let options = ServerOptions {
            addr: SocketAddr::new(args.host, args.port),
            router: router_config(&args)?,
            connections: ConnectionLimits {
                max_connections: args.max_connections as usize,
                header_timeout: Duration::from_secs(args.header_timeout),
            },
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        };
        let load = async move {
            tokio::task::spawn_blocking(move || load_model(&args))
                .await
                .context("model loading panicked")?
        };
        serve(options, state, load).await
    })
}

/// `r1serve eval`: the problems through r1serve's own router in this
/// process (`--model`, loaded exactly as `serve` loads it) or through an
/// OpenAI-compatible server (`--url`); the report on stdout.
fn run_eval(args: EvalArgs) -> Result<()> {
    let problems = r1serve::eval::problems::load(&args.data)?;
    let extractor = match &args.answer_regex {
        Some(pattern) => Extractor::with_regex(pattern).map_err(anyhow::Error::msg)?,
        None => Extractor::new(),
    };
    let options = EvalOptions {
        samples: args.samples as usize,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        concurrency: args.concurrency as usize,
        seed: args.seed,
        out: args.out.clone(),
        extractor,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (rows, stats) = runtime.block_on(async {
        let target = match (&args.model, &args.url) {
            (Some(model), _) => Target::Router(in_process_router(model, &args)?),
            (None, Some(url)) => Target::http(url, args.api_key.clone())?,
            (None, None) => bail!("give --model or --url"),
        };
        run(&target, &problems, &options).await
    })?;
    let report = report(&rows, options.samples);
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["run"] = serde_json::to_value(&stats)?;
        println!("{value}");
    } else {
        print!("{}", report.table());
        println!(
            "{:<22}{} run, {} resumed, {:.1} s, {:.1} tokens/s",
            "this run",
            stats.samples_run,
            stats.samples_resumed,
            stats.wall_seconds,
            stats.tokens_per_second
        );
    }
    Ok(())
}

/// The router `serve` would run for `model` with `--max-num-seqs` at the
/// eval's concurrency and the `serve` flags given after `--`.
fn in_process_router(model: &str, args: &EvalArgs) -> Result<axum::Router> {
    let concurrency = args.concurrency.to_string();
    let mut argv = vec!["r1serve", "serve", "--model", model];
    if !args
        .serve_flags
        .iter()
        .any(|f| f.starts_with("--max-num-seqs"))
    {
        argv.extend(["--max-num-seqs", &concurrency]);
    }
    argv.extend(args.serve_flags.iter().map(String::as_str));
    let Command::Serve(serve_args) = Cli::try_parse_from(argv)?.command else {
        bail!("the flags after `--` are not `serve` flags");
    };
    let metrics = Metrics::install_with(serve_args.metrics_compat)?;
    let state = AppState::new(Vec::new(), metrics);
    state.set_model(load_model(&serve_args)?);
    Ok(router(state, &router_config(&serve_args)?))
}

/// Loads the model, picks the chat template and reasoning parser, and
/// starts the engine. Runs on a blocking thread: it reads gigabytes.
fn load_model(args: &ServeArgs) -> Result<ServedModel> {
    let loaded = load(
        &args.model,
        &LoadOptions {
            revision: args.revision.clone(),
            device: args.device.options(),
        },
    )?;
    let tokenizer = Arc::clone(&loaded.tokenizer);
    let template_source = match &args.chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --chat-template {}", path.display()))?,
        ),
        None => tokenizer.chat_template().map(str::to_string),
    };
    let compile = |source: &str| {
        ChatTemplate::new(
            source,
            tokenizer.bos_token().map(str::to_string),
            tokenizer.eos_token().map(str::to_string),
        )
    };
    let template = template_source
        .as_deref()
        .map(compile)
        .transpose()
        .context("compiling the chat template")?;
    let tool_template_source = args
        .tool_call_template
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --tool-call-template {}", path.display()))
        })
        .transpose()?;
    let tool_template = tool_template_source
        .as_deref()
        .map(compile)
        .transpose()
        .context("compiling the --tool-call-template")?;
    let tool_parser = match args.tool_call_parser {
        ToolCallParserArg::Hermes => ToolCallParser::Hermes,
        ToolCallParserArg::DeepseekR1 => ToolCallParser::DeepSeekR1,
        ToolCallParserArg::DeepseekV31 => ToolCallParser::DeepSeekV31,
        ToolCallParserArg::None => ToolCallParser::None,
        ToolCallParserArg::Auto => tool_template_source
            .as_deref()
            .or(template_source.as_deref())
            .map_or(ToolCallParser::None, ToolCallParser::detect),
    };
    let reasoning = match args.reasoning_parser {
        ReasoningParserArg::DeepseekR1 => ReasoningParser::DeepSeekR1,
        ReasoningParserArg::None => ReasoningParser::None,
        ReasoningParserArg::Auto => {
            let has_tokens = tokenizer.token_to_id(THINK_START).is_some()
                && tokenizer.token_to_id(THINK_END).is_some();
            let template_thinks = template_source
                .as_deref()
                .is_some_and(|t| t.contains(THINK_START));
            if has_tokens || template_thinks {
                ReasoningParser::DeepSeekR1
            } else {
                ReasoningParser::None
            }
        }
    };
    // Indexing the vocabulary takes seconds; it overlaps the engine's start
    // (cache allocation and commit).
    let grammar = {
        let tokenizer = Arc::clone(&tokenizer);
        let vocab_size = loaded.model.info().vocab_size;
        std::thread::spawn(move || grammar_vocab(&tokenizer, vocab_size))
    };
    let kv_events = args
        .kv_events_config
        .as_ref()
        .and_then(|arg| arg.0.as_ref())
        .map(r1serve::kv_events::start)
        .transpose()?;
    let engine = Engine::start_publishing(
        loaded.model,
        Arc::clone(&tokenizer),
        EngineConfig {
            block_size: args.block_size,
            kv_cache_memory: args.kv_cache_memory,
            kv_dtype: args.kv_cache_dtype,
            max_num_seqs: args.max_num_seqs,
            max_num_batched_tokens: args.max_num_batched_tokens,
            max_model_len: args.max_model_len,
            max_waiting_requests: args.max_waiting_requests,
            enable_prefix_caching: !args.no_prefix_caching,
            reasoning: ReasoningConfig {
                close_text: args.thinking.thinking_close_text.clone(),
                loop_guard: args.thinking.reasoning_loop_guard,
                ..Default::default()
            },
        },
        kv_events,
    )?;
    tracing::info!(reasoning_parser = %reasoning, tool_call_parser = %tool_parser, "engine started");
    let grammar = grammar.join().unwrap_or_else(|_| {
        tracing::warn!("structured outputs are unavailable: indexing the vocabulary failed");
        None
    });
    let defaults = args
        .override_generation_config
        .unwrap_or_default()
        .or(loaded.generation_config)
        .or(GenerationDefaults::for_template(template_source.as_deref()));
    tracing::info!("sampling defaults for requests that set none: {defaults}");
    Ok(ServedModel {
        max_model_len: engine.max_model_len(),
        engine: Arc::new(engine),
        codec: Arc::new(TokenizerCodec::new(tokenizer, template, tool_template)),
        name: args.served_model_name.clone().unwrap_or(loaded.name),
        defaults,
        reasoning,
        reasoning_field: args.reasoning_field,
        tool_parser,
        thinking: ThinkingDefaults {
            budget: args.thinking.thinking_budget,
            effort_budgets: args.thinking.reasoning_effort_budgets.0,
            answer_reserve: args.thinking.answer_token_reserve,
        },
        grammar,
        created: unix_timestamp(),
    })
}

/// Indexes the vocabulary for structured outputs. A tokenizer the grammar
/// engine cannot read costs only those: the server runs and says why
/// constrained requests are refused.
fn grammar_vocab(tokenizer: &Tokenizer, vocab_size: usize) -> Option<Arc<GrammarVocab>> {
    let started = std::time::Instant::now();
    match GrammarVocab::new(tokenizer, vocab_size) {
        Ok(vocab) => {
            tracing::info!(
                "structured outputs: vocabulary indexed in {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            Some(Arc::new(vocab))
        }
        Err(e) => {
            tracing::warn!("structured outputs are unavailable: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512mib"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("4XB").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn blank_api_keys_are_refused() {
        for key in ["", "  ", "\t"] {
            let cli =
                Cli::try_parse_from(["r1serve", "serve", "--model", "m.gguf", "--api-key", key])
                    .unwrap();
            let Command::Serve(args) = cli.command else {
                panic!("parsed as another command");
            };
            assert!(api_keys(&args).is_err(), "{key:?} accepted");
        }
    }

    #[test]
    fn dtype_flag() {
        let dtype = |value: &str| {
            let argv = ["r1serve", "serve", "--model", "m.gguf", "--dtype", value];
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Serve(args) => args.device.options().precision,
                other => panic!("parsed as {other:?}"),
            })
        };
        assert_eq!(dtype("float32").unwrap(), Precision::Float32);
        assert_eq!(dtype("auto").unwrap(), Precision::Auto);
        assert!(dtype("bfloat8").is_err());
    }

    /// `eval` takes exactly one of `--model` and `--url`, the paper's
    /// sampling by default, and `serve` flags after `--`.
    #[test]
    fn eval_flags() {
        let eval = |argv: &[&str]| {
            let base = ["r1serve", "eval", "--data", "p.jsonl"];
            Cli::try_parse_from(base.iter().chain(argv)).map(|cli| match cli.command {
                Command::Eval(args) => args,
                other => panic!("parsed as {other:?}"),
            })
        };
        let args = eval(&["--model", "m.gguf", "--", "--kv-cache-dtype", "fp8"]).unwrap();
        assert_eq!((args.samples, args.temperature, args.top_p), (4, 0.6, 0.95));
        assert_eq!(args.serve_flags, ["--kv-cache-dtype", "fp8"]);
        assert!(eval(&["--url", "http://h/v1", "--samples", "8", "--json"]).is_ok());
        assert!(eval(&[]).is_err(), "a target is required");
        assert!(eval(&["--model", "m", "--url", "http://h/v1"]).is_err());
        assert!(eval(&["--model", "m", "--samples", "0"]).is_err());
    }

    #[test]
    fn cli_defaults_and_repeatable_flags() {
        let cli = Cli::try_parse_from([
            "r1serve",
            "serve",
            "--model",
            "m.gguf",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--allowed-origins",
            "*",
            "--reasoning-parser",
            "deepseek_r1",
            "--kv-cache-memory",
            "1GiB",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.api_keys, ["a", "b"]);
        assert_eq!(args.allowed_origins, ["*"]);
        assert_eq!(args.reasoning_parser, ReasoningParserArg::DeepseekR1);
        assert_eq!(args.reasoning_field, ReasoningField::ReasoningContent);
        assert_eq!(args.tool_call_parser, ToolCallParserArg::Auto);
        assert!(args.tool_call_template.is_none());
        assert_eq!(args.kv_cache_memory, Some(1 << 30));
        assert_eq!(args.port, 8000);
        assert_eq!(args.max_num_seqs, 64);
        assert_eq!(args.max_num_batched_tokens, None);
        assert_eq!(args.block_size, 16);
        assert_eq!(args.max_waiting_requests, 256);
        assert_eq!(args.max_body_bytes, 8 << 20);
        assert_eq!(args.kv_cache_dtype, KvDtype::F16);
        assert_eq!(args.device.dtype, Precision::Auto);
        assert!(!args.no_prefix_caching);
        assert_eq!(args.max_connections, 512);
        assert_eq!(args.header_timeout, 60);
        assert_eq!(args.body_timeout, 60);
        assert!(args.override_generation_config.is_none());
        assert!(args.metrics_compat.is_none());
        assert!(args.kv_events_config.is_none());
    }

    #[test]
    fn override_generation_config_is_parsed_at_startup() {
        let parse = |json: &str| {
            Cli::try_parse_from([
                "r1serve",
                "serve",
                "--model",
                "m.gguf",
                "--override-generation-config",
                json,
            ])
        };
        let Command::Serve(args) = parse(r#"{"temperature": 0.5, "top_p": 0.9}"#)
            .unwrap()
            .command
        else {
            panic!("parsed as another command");
        };
        let flag = args.override_generation_config.unwrap();
        assert_eq!((flag.temperature, flag.top_p), (Some(0.5), Some(0.9)));
        assert!(parse(r#"{"temperature": 5}"#).is_err());
        assert!(parse(r#"{"seed": 1}"#).is_err());
    }

    #[test]
    fn reasoning_field_flag() {
        let parse = |name: &str| {
            Cli::try_parse_from([
                "r1serve",
                "serve",
                "--model",
                "m.gguf",
                "--reasoning-field",
                name,
            ])
        };
        for field in ReasoningField::ALL {
            let Command::Serve(args) = parse(field.as_str()).unwrap().command else {
                panic!("parsed as another command");
            };
            assert_eq!(args.reasoning_field, field);
        }
        let error = parse("thoughts").unwrap_err().to_string();
        assert!(
            error.contains("thoughts") && error.contains("reasoning_content"),
            "{error}"
        );
    }
}
