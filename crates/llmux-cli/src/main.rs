//! The `llmux` binary. Reads argv, files and the environment; everything else lives in the
//! library crates. Exit codes: 0 success, 1 state or provider not found, 2 bad argument or
//! config (clap exits 2 on usage errors itself).

mod batch;
mod keys;
mod secrets;
mod state;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "llmux",
    version,
    about = "One endpoint for many LLM providers and keys, within their limits"
)]
struct Cli {
    /// Config file (TOML). Default: $LLMUX_CONFIG, else ./llmux.toml.
    #[arg(long, short, global = true, env = "LLMUX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Override `listen` from the config (HOST:PORT).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate the config and list every problem found.
    CheckConfig,
    /// Show capacity, used, reserved, window end and TTL, score and cooldowns of SUBJECT
    /// (`provider` or `provider/key`).
    ShowState {
        subject: String,
        #[arg(long)]
        json: bool,
    },
    /// Clear the counters, cooldowns, disabled flags and scores of SUBJECT.
    ResetState {
        subject: String,
        /// Show what would be reset and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Set how much of RESOURCE is used in the current window (in the resource's unit).
    SetResourceUsed {
        subject: String,
        resource: String,
        value: f64,
    },
    /// Restart the window of RESOURCE now, lasting SECONDS (used and reserved are kept).
    SetResourceTtl {
        subject: String,
        resource: String,
        seconds: u64,
    },
    /// Add DELTA (may be negative) to the used amount of RESOURCE.
    AdjustResourceUsed {
        subject: String,
        resource: String,
        #[arg(allow_negative_numbers = true)]
        delta: f64,
    },
    /// Override the score of SUBJECT (0..=1) until its usage next changes.
    SetScore { subject: String, score: f64 },
    /// Update capacities and windows from config, keeping used and reserved.
    SyncConfig {
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Gateway keys in the store: create, list, revoke, rotate.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Upstream secrets kept encrypted in the store: set, list, delete.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Batch runs paced by the limits: run, status.
    Batch {
        #[command(subcommand)]
        command: batch::BatchCommand,
    },
}

/// "Not found" errors exit 1.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotFound {}

/// mimalloc: the gateway allocates and frees small buffers per request (headers, JSON, bodies);
/// glibc's malloc spent ~12% of its CPU at saturation, measured with `../shared/bench`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("llmux: {e:#}");
            if let Some(end) = e.chain().find_map(|c| c.downcast_ref::<batch::BatchEnd>()) {
                return match end {
                    batch::BatchEnd::Failed(_) => ExitCode::from(4),
                    batch::BatchEnd::Interrupted => ExitCode::from(130),
                };
            }
            if e.chain().any(|c| c.is::<NotFound>()) {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from("llmux.toml"))
}

fn load(cli: &Cli) -> anyhow::Result<llmux::Config> {
    Ok(llmux::load_config(&config_path(cli))?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::CheckConfig => {
            let config = load(&cli)?;
            use std::io::Write;
            writeln!(
                std::io::stdout(),
                "{}: ok ({} providers, {} models, store {})",
                config_path(&cli).display(),
                config.providers.len(),
                config.models.len(),
                match &config.store {
                    llmux::core::config::StoreConfig::Memory => "memory".to_string(),
                    llmux::core::config::StoreConfig::Sqlite { path } =>
                        format!("sqlite at {path}"),
                    llmux::core::config::StoreConfig::Redis { .. } => "redis".to_string(),
                }
            )?;
            Ok(())
        }
        Command::Serve { listen } => {
            let mut config = load(&cli)?;
            if let Some(l) = listen {
                config.listen = l
                    .parse()
                    .with_context(|| format!("--listen: invalid address {l:?}"))?;
            }
            serve(config)
        }
        Command::ShowState { subject, json } => {
            let config = load(&cli)?;
            runtime()?.block_on(state::show(&config, subject, *json))
        }
        Command::ResetState { subject, dry_run } => {
            let config = load(&cli)?;
            runtime()?.block_on(state::reset(&config, subject, *dry_run))
        }
        Command::SetResourceUsed {
            subject,
            resource,
            value,
        } => {
            let config = load(&cli)?;
            let change = state::Change::SetUsed(*value);
            runtime()?.block_on(state::change(&config, subject, resource, change))
        }
        Command::AdjustResourceUsed {
            subject,
            resource,
            delta,
        } => {
            let config = load(&cli)?;
            let change = state::Change::AdjustUsed(*delta);
            runtime()?.block_on(state::change(&config, subject, resource, change))
        }
        Command::SetResourceTtl {
            subject,
            resource,
            seconds,
        } => {
            let config = load(&cli)?;
            let change = state::Change::SetTtl(*seconds);
            runtime()?.block_on(state::change(&config, subject, resource, change))
        }
        Command::SetScore { subject, score } => {
            let config = load(&cli)?;
            runtime()?.block_on(state::set_score(&config, subject, *score))
        }
        Command::SyncConfig { provider } => {
            let config = load(&cli)?;
            runtime()?.block_on(state::sync(&config, provider.as_deref()))
        }
        Command::Keys { command } => {
            let config = load(&cli)?;
            runtime()?.block_on(keys::run(&config, command))
        }
        Command::Secrets { command } => {
            let config = load(&cli)?;
            runtime()?.block_on(secrets::run(&config, command))
        }
        Command::Batch { command } => {
            let config = load(&cli)?;
            init_logs("warn");
            let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let rt = runtime()?;
            let flag = interrupted.clone();
            rt.spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("llmux: interrupted; finishing nothing more (rerun to resume)");
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
            rt.block_on(batch::run(config, command, interrupted))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr, filtered by `LLMUX_LOG` (else `default`).
fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMUX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn serve(config: llmux::Config) -> anyhow::Result<()> {
    init_logs("info");
    runtime()?.block_on(async move {
        let addr = config.listen;
        let policy = config.on_store_error;
        let router = llmux::Router::from_config(config).context("cannot start the router")?;
        if let Err(e) = router.store().ping().await {
            tracing::error!(
                error = %e,
                policy = ?policy,
                "the {} store is unreachable; serving by the on_store_error policy and reconnecting by itself",
                router.store().kind()
            );
        }
        match router.refresh_keys().await {
            Ok(n) if n > 0 => tracing::info!(keys = n, "gateway keys loaded"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the gateway keys in the store yet; refusing requests until they are read"),
        }
        if let Err(e) = router.refresh_secrets().await {
            tracing::error!(error = %e, "cannot read the stored secrets yet; their keys wait until they are read");
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            store = router.store().kind(),
            models = router.models().len(),
            "llmux listening on http://{local}"
        );
        llmux_gateway::serve(router, listener, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
