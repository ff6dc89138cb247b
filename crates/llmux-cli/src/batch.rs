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
use llmux::batch::{BatchItem, BatchOptions};
use llmux::core::{Clock, Records, SystemClock};
use llmux::Router;
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
            let items = BatchItem::parse_lines(&text, model.as_deref())
                .with_context(|| format!("{}: bad input", input.display()))?;
            for it in &items {
                let m = it.model();
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
            let todo: Vec<BatchItem> = items
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
    todo: Vec<BatchItem>,
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
        let stop_on_error = opts.stop_on_error;
        let item_opts = BatchOptions {
            concurrency: 1,
            max_retries: opts.max_retries,
            wait: ITEM_WAIT,
        };
        workers.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed) {
                    return Ok::<(), anyhow::Error>(());
                }
                let Some(item) = queue.lock().next() else {
                    return Ok(());
                };
                progress.in_flight.fetch_add(1, Ordering::Relaxed);
                let line = send(&router, &item, &item_opts, &interrupted).await;
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

/// Send one item (see `Router::send_item`); its output line and whether it succeeded, or
/// `None` when interrupted before it finished (its lease is released; a rerun sends it again).
async fn send(
    router: &Router,
    item: &BatchItem,
    opts: &BatchOptions,
    interrupted: &AtomicBool,
) -> Option<(String, bool)> {
    let sent = router.send_item(item, opts);
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
    let mut line = result.output_line();
    line["url"] = result.url.clone().into();
    Some((line.to_string(), result.ok()))
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
