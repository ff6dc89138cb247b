//! `llmux batch run INPUT.jsonl -o OUTPUT.jsonl` and `llmux batch status`.
//!
//! Every input line (OpenAI Batch format: `custom_id`, `method`, `url`, `body`) is checked
//! before anything is sent; a bad one exits 2 naming its line. Items then go through the
//! router in this process, on the configured store, so they are admitted by the same
//! reservations as live traffic: each waits in its model's queue for capacity (no avoidable
//! 429s), and an item that still fails (a 429 after its wait, a 5xx, a timeout) is tried
//! again with backoff, up to `--max-retries`.
//!
//! The output file is the progress: each finished item is appended as one line and flushed,
//! so a rerun of the same command skips every `custom_id` that has a line (an item in flight
//! when the process died has none, and is sent again). A torn last line is cut off first.
//! The run's counts are also kept in the store (`batch status`).

use anyhow::{bail, Context};
use llmux::core::{Clock, Records, SystemClock};
use llmux::{Endpoint, Request, RouteError, Router};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The store table of batch runs (name: the output file's absolute path).
const BATCH_RUNS: &str = "batch_runs";

/// How long one item waits for capacity per attempt before it counts as a 429.
const ITEM_WAIT: Duration = Duration::from_secs(300);

#[derive(clap::Subcommand, Debug)]
pub enum BatchCommand {
    /// Send every line of INPUT (OpenAI Batch format) through the router, as fast as the
    /// limits allow, and write OpenAI Batch output lines to OUTPUT. Rerun to resume.
    Run {
        input: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
        /// Items in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Tries after the first for an item that fails.
        #[arg(long, default_value_t = 3)]
        max_retries: u32,
        /// Stop at the first item that fails after its retries.
        #[arg(long)]
        stop_on_error: bool,
        /// Send every item to this model instead of its own.
        #[arg(long)]
        model: Option<String>,
    },
    /// List batch runs with their done / failed / pending counts.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Why a run ended other than with every item answered 2xx.
#[derive(Debug)]
pub enum BatchEnd {
    /// Some items failed after their retries (exit 4).
    Failed(u64),
    /// Interrupted (exit 130): rerun to resume.
    Interrupted,
}

impl std::fmt::Display for BatchEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchEnd::Failed(n) => write!(
                f,
                "{n} item(s) failed after their retries; their output lines carry `error`"
            ),
            BatchEnd::Interrupted => f.write_str("interrupted; rerun the same command to resume"),
        }
    }
}
impl std::error::Error for BatchEnd {}

/// A checked input line.
struct Item {
    custom_id: String,
    endpoint: Endpoint,
    url: String,
    body: serde_json::Map<String, serde_json::Value>,
}

fn endpoint_of(url: &str) -> Option<Endpoint> {
    Some(match url {
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/messages" => Endpoint::Messages,
        "/v1/responses" => Endpoint::Responses,
        _ => return None,
    })
}

/// Every line of `text` checked; the first bad one is named by its number (from 1).
fn parse_input(text: &str, model: Option<&str>) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {n}: not JSON"))?;
        let Some(custom_id) = v.get("custom_id").and_then(|c| c.as_str()) else {
            bail!("line {n}: needs a string `custom_id`");
        };
        if !seen.insert(custom_id.to_string()) {
            bail!("line {n}: custom_id {custom_id:?} appears twice");
        }
        let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("POST");
        if method != "POST" {
            bail!("line {n}: method {method:?}: only POST is supported");
        }
        let Some(url) = v.get("url").and_then(|u| u.as_str()) else {
            bail!("line {n}: needs a string `url` such as \"/v1/chat/completions\"");
        };
        let Some(endpoint) = endpoint_of(url) else {
            bail!("line {n}: url {url:?} is not one of /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/responses");
        };
        let Some(mut body) = v.get("body").and_then(|b| b.as_object()).cloned() else {
            bail!("line {n}: needs an object `body`");
        };
        if let Some(m) = model {
            body.insert("model".into(), m.into());
        }
        if !body.get("model").is_some_and(|m| m.is_string()) {
            bail!("line {n}: body needs a string `model` (or pass --model)");
        }
        if body.get("stream").and_then(|s| s.as_bool()) == Some(true) {
            bail!("line {n}: body.stream: a batch item cannot stream");
        }
        items.push(Item {
            custom_id: custom_id.to_string(),
            endpoint,
            url: url.to_string(),
            body,
        });
    }
    Ok(items)
}

/// The `custom_id`s the output already holds, after cutting off a torn last line.
fn finished(output: &Path) -> anyhow::Result<HashSet<String>> {
    let mut done = HashSet::new();
    let Ok(text) = std::fs::read(output) else {
        return Ok(done);
    };
    let mut keep = 0usize;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let complete = line.ends_with(b"\n");
        let parsed = serde_json::from_slice::<serde_json::Value>(line).ok();
        match (complete, parsed) {
            (true, Some(v)) => {
                if let Some(id) = v.get("custom_id").and_then(|c| c.as_str()) {
                    done.insert(id.to_string());
                }
                keep += line.len();
            }
            _ => break,
        }
    }
    if keep < text.len() {
        // The last write was cut short (the process died mid-line): drop it.
        let f = std::fs::OpenOptions::new().write(true).open(output)?;
        f.set_len(keep as u64)?;
    }
    Ok(done)
}

/// Counters shown by the progress display and kept in the store.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

pub async fn run(
    config: llmux::Config,
    cmd: &BatchCommand,
    interrupted: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    match cmd {
        BatchCommand::Status { json } => status(&config, *json).await,
        BatchCommand::Run {
            input,
            output,
            concurrency,
            max_retries,
            stop_on_error,
            model,
        } => {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let items = parse_input(&text, model.as_deref())
                .with_context(|| format!("{}: bad input", input.display()))?;
            for it in &items {
                let m = it.body.get("model").and_then(|m| m.as_str()).unwrap_or("");
                if !config.models.contains_key(m) {
                    bail!(
                        "{}: model {m:?} of custom_id {:?} is not in the config",
                        input.display(),
                        it.custom_id
                    );
                }
            }
            if *concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let already = finished(output)?;
            let todo: Vec<Item> = items
                .into_iter()
                .filter(|it| !already.contains(&it.custom_id))
                .collect();
            let total = todo.len() as u64 + already.len() as u64;
            let router = Router::from_config(config).context("cannot start the router")?;
            let key = std::fs::canonicalize(
                output
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )
            .map(|d| d.join(output.file_name().unwrap_or_default()))
            .unwrap_or_else(|_| output.clone())
            .display()
            .to_string();
            let opts = RunOptions {
                concurrency: *concurrency,
                max_retries: *max_retries,
                stop_on_error: *stop_on_error,
            };
            run_items(
                &router,
                todo,
                output,
                already.len() as u64,
                total,
                opts,
                &key,
                input,
                interrupted,
            )
            .await
        }
    }
}

struct RunOptions {
    concurrency: usize,
    max_retries: u32,
    stop_on_error: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_items(
    router: &Router,
    todo: Vec<Item>,
    output: &Path,
    already: u64,
    total: u64,
    opts: RunOptions,
    key: &str,
    input: &Path,
    interrupted: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let out = Arc::new(parking_lot::Mutex::new(std::io::BufWriter::new(out)));
    let progress = Arc::new(Progress::default());
    progress.done.store(already, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let record = |state: &str, p: &Progress| {
        serde_json::json!({
            "input": input.display().to_string(),
            "output": key,
            "total": total,
            "done": p.done.load(Ordering::Relaxed),
            "failed": p.failed.load(Ordering::Relaxed),
            "state": state,
            "updated_at": SystemClock.now().rfc3339(),
        })
        .to_string()
    };
    let store = router.store().clone();
    store
        .put_record(BATCH_RUNS, key, &record("running", &progress))
        .await?;
    let display = Display::new(total, already);
    let queue = Arc::new(parking_lot::Mutex::new(todo.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency {
        let (router, queue, out, progress, stop, interrupted) = (
            router.clone(),
            queue.clone(),
            out.clone(),
            progress.clone(),
            stop.clone(),
            interrupted.clone(),
        );
        let (max_retries, stop_on_error) = (opts.max_retries, opts.stop_on_error);
        workers.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed) {
                    return Ok::<(), anyhow::Error>(());
                }
                let Some(item) = queue.lock().next() else {
                    return Ok(());
                };
                progress.in_flight.fetch_add(1, Ordering::Relaxed);
                let line = send(&router, &item, max_retries, &interrupted).await;
                progress.in_flight.fetch_sub(1, Ordering::Relaxed);
                let Some((line, ok)) = line else {
                    // Interrupted mid-item: no line, so a rerun sends it again.
                    return Ok(());
                };
                {
                    let mut w = out.lock();
                    w.write_all(line.as_bytes())?;
                    w.write_all(b"\n")?;
                    w.flush()?;
                }
                if ok {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    if stop_on_error {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut all = futures_util::future::join_all(workers);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_record = Instant::now();
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = tick.tick() => {
                display.show(&progress, started);
                if last_record.elapsed() >= Duration::from_secs(2) {
                    last_record = Instant::now();
                    let _ = store.put_record(BATCH_RUNS, key, &record("running", &progress)).await;
                }
            }
        }
    };
    for r in results {
        r.context("a batch worker stopped")??;
    }
    out.lock().get_mut().sync_all()?;
    display.finish(&progress, started);
    let failed = progress.failed.load(Ordering::Relaxed);
    let state = if interrupted.load(Ordering::Relaxed) {
        "interrupted"
    } else if failed > 0 {
        "failed"
    } else {
        "completed"
    };
    store
        .put_record(BATCH_RUNS, key, &record(state, &progress))
        .await?;
    if interrupted.load(Ordering::Relaxed) {
        return Err(BatchEnd::Interrupted.into());
    }
    if failed > 0 {
        return Err(BatchEnd::Failed(failed).into());
    }
    Ok(())
}

/// Send one item, retrying with backoff; its output line and whether it succeeded, or
/// `None` when interrupted before it finished.
async fn send(
    router: &Router,
    item: &Item,
    max_retries: u32,
    interrupted: &AtomicBool,
) -> Option<(String, bool)> {
    let body = bytes::Bytes::from(serde_json::to_vec(&item.body).unwrap_or_default());
    let mut attempt = 0u32;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            return None;
        }
        let mut req = Request::from_json_bytes(item.endpoint, body.clone());
        req.max_wait = Some(ITEM_WAIT);
        // Interrupted: give the item up (its lease is released); a rerun sends it again.
        let sent = router.request(req);
        tokio::pin!(sent);
        let result = loop {
            tokio::select! {
                r = &mut sent => break r,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if interrupted.load(Ordering::Relaxed) {
                        return None;
                    }
                }
            }
        };
        let (status, answer, error, retry) = match result {
            Ok(resp) => {
                let status = resp.status;
                let request_id = resp
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                match resp.bytes().await {
                    Ok(b) => {
                        let body: serde_json::Value = serde_json::from_slice(&b)
                            .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned().into());
                        let retry = status == 429 || status >= 500;
                        let answer = serde_json::json!({
                            "status_code": status,
                            "request_id": request_id,
                            "body": body,
                        });
                        let error = (!(200..300).contains(&status)).then(|| {
                            serde_json::json!({"code": format!("http_{status}"), "message": format!("the upstream answered {status}")})
                        });
                        (Some(status), Some(answer), error, retry)
                    }
                    Err(e) => (
                        None,
                        None,
                        Some(
                            serde_json::json!({"code": "upstream_error", "message": e.to_string()}),
                        ),
                        true,
                    ),
                }
            }
            Err(e) => {
                let (code, retry) = match &e {
                    RouteError::NoCapacity { budget: true, .. } => ("budget_exceeded", false),
                    RouteError::NoCapacity { .. } => ("rate_limit_exceeded", true),
                    RouteError::Upstream { .. } | RouteError::Store(_) => ("upstream_error", true),
                    RouteError::PolicyViolation(_) => ("policy_violation", false),
                    RouteError::UnknownModel(_) => ("model_not_found", false),
                    _ => ("invalid_request", false),
                };
                (
                    None,
                    None,
                    Some(serde_json::json!({"code": code, "message": e.to_string()})),
                    retry,
                )
            }
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if !ok && retry && attempt < max_retries {
            attempt += 1;
            // Full jitter: up to 0.5 s, 1 s, 2 s, … (at most 30 s).
            let ceiling = 500u64.saturating_mul(1 << (attempt - 1).min(6)).min(30_000);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=ceiling))).await;
            continue;
        }
        let line = serde_json::json!({
            "id": format!("batch_req_{}", uuid_like(&item.custom_id)),
            "custom_id": item.custom_id,
            "response": answer,
            "error": error,
            "url": item.url,
        });
        return Some((line.to_string(), ok));
    }
}

/// A stable id for an item's output line, from its `custom_id`.
fn uuid_like(custom_id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    custom_id.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A progress bar on a terminal, a plain line every 5 s otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    last_line: parking_lot::Mutex<Instant>,
}

impl Display {
    fn new(total: u64, already: u64) -> Display {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(already);
            bar
        });
        Display {
            bar,
            total,
            last_line: parking_lot::Mutex::new(Instant::now()),
        }
    }

    fn figures(&self, p: &Progress, started: Instant) -> (u64, u64, u64, f64) {
        let done = p.done.load(Ordering::Relaxed);
        let failed = p.failed.load(Ordering::Relaxed);
        let flying = p.in_flight.load(Ordering::Relaxed);
        let rate = (done + failed) as f64 / started.elapsed().as_secs_f64().max(0.001);
        (done, failed, flying, rate)
    }

    fn show(&self, p: &Progress, started: Instant) {
        let (done, failed, flying, rate) = self.figures(p, started);
        match &self.bar {
            Some(bar) => {
                bar.set_position(done + failed);
                bar.set_message(format!(
                    "done {done}, failed {failed}, in flight {flying}, {rate:.1}/s"
                ));
            }
            None => {
                let mut last = self.last_line.lock();
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    let left = self.total.saturating_sub(done + failed);
                    let eta = if rate > 0.0 {
                        format!("{:.0} s", left as f64 / rate)
                    } else {
                        "unknown".into()
                    };
                    eprintln!(
                        "batch: {}/{} done, {failed} failed, {flying} in flight, {rate:.1}/s, ETA {eta}",
                        done + failed,
                        self.total
                    );
                }
            }
        }
    }

    fn finish(&self, p: &Progress, started: Instant) {
        let (done, failed, _, _) = self.figures(p, started);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "batch: {done} done, {failed} failed of {} in {:.1} s",
            self.total,
            started.elapsed().as_secs_f64()
        );
    }
}

async fn status(config: &llmux::Config, json: bool) -> anyhow::Result<()> {
    let store = llmux::AnyStore::open(&config.store)?;
    let runs = store.list_records(BATCH_RUNS).await?;
    let mut out = std::io::stdout();
    let values: Vec<serde_json::Value> = runs
        .iter()
        .filter_map(|(_, v)| serde_json::from_str::<serde_json::Value>(v).ok())
        .map(|mut v| {
            let total = v["total"].as_u64().unwrap_or(0);
            let settled = v["done"].as_u64().unwrap_or(0) + v["failed"].as_u64().unwrap_or(0);
            v["pending"] = total.saturating_sub(settled).into();
            v
        })
        .collect();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&values)?)?;
        return Ok(());
    }
    if values.is_empty() {
        writeln!(out, "no batch runs")?;
        return Ok(());
    }
    for v in values {
        writeln!(
            out,
            "{}: {} — {} done, {} failed, {} pending of {} (updated {})",
            v["output"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("?"),
            v["done"],
            v["failed"],
            v["pending"],
            v["total"],
            v["updated_at"].as_str().unwrap_or("?"),
        )?;
    }
    Ok(())
}
