//! `mapper serve`: the webhook receiver over the durable inbox, and the
//! worker that delivers what it stores.

use crate::app::{App, AppConfig, DatabaseUrl, Env};
use crate::config::compile::compile_dir;
use crate::program::Program;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `mapper serve`, checked and typed by the command line.
pub struct ServeOptions {
    pub mappings: PathBuf,
    pub listen: SocketAddr,
    pub database: DatabaseUrl,
    /// Events delivered at once.
    pub workers: usize,
    /// Replaces every coalescing target's window.
    pub coalesce_window: Option<Duration>,
    pub log_json: bool,
}

pub fn run(opts: ServeOptions) -> ExitCode {
    init_logging(opts.log_json);
    super::block_on(serve(opts))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Compiles the mapping folder, printing its errors when it has any.
pub fn load_program(mappings: &Path, command: &str) -> Option<Program> {
    let compiled = compile_dir(mappings);
    if compiled.program.is_none() {
        for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
            eprint!(
                "{}",
                d.render(compiled.texts.get(&d.file).map(String::as_str))
            );
        }
        eprintln!(
            "error: the mapping folder {} has errors; `mapper {command}` does not start",
            mappings.display()
        );
    }
    compiled.program
}

async fn serve(opts: ServeOptions) -> ExitCode {
    let Some(program) = load_program(&opts.mappings, "serve") else {
        return ExitCode::from(1);
    };
    let env = Env::process();
    let ui_token = env.get(crate::server::ui::TOKEN_VARIABLE);
    let mut config = AppConfig::serve(
        program,
        opts.database,
        opts.listen,
        Some(opts.mappings.clone()),
        env,
    );
    if let Some(token) = &ui_token
        && token.len() < 16
    {
        tracing::warn!(
            "MAPPER_UI_TOKEN is {} characters long: use at least 16 random characters (e.g. `openssl rand -hex 32`)",
            token.len()
        );
    }
    let console = ui_token.is_some();
    config.ui_token = ui_token;
    config.worker.concurrency = opts.workers;
    config.coalesce_window = opts.coalesce_window;
    let running = match App::start(config).await {
        Ok(r) => r,
        Err(crate::app::StartError::Secrets(missing)) => {
            for (source, problem) in &missing.0 {
                eprintln!("error: source `{source}`: {problem}");
            }
            eprintln!(
                "error: `mapper serve` does not start (set the variables above, or declare `verify: {{ method: none }}`)"
            );
            return ExitCode::from(1);
        }
        Err(problem) => {
            eprintln!("error: {problem}");
            eprintln!("error: `mapper serve` does not start");
            return ExitCode::from(1);
        }
    };
    let address = running.address.unwrap_or(opts.listen);
    tracing::info!(%address, mappings = %opts.mappings.display(), "listening for webhooks on http://{address}/webhooks/{{source}}");
    if console {
        tracing::info!("operator console on http://{address}/ui (log in with MAPPER_UI_TOKEN)");
    }
    shutdown_signal().await;
    running.shutdown().await;
    tracing::info!("stopped; stored events stay in the database for the next start");
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
