//! `mapper serve`: the webhook receiver over the durable inbox, and the
//! worker that delivers what it stores.

use crate::config::compile::compile_dir;
use crate::engine::program::Program;
use crate::server::{self, AppState};
use crate::store::{DEFAULT_CONNECTION, Inbox, Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Options of `mapper serve`.
pub struct ServeOptions<'a> {
    pub mappings: &'a Path,
    pub listen: &'a str,
    pub database: &'a str,
    pub log_json: bool,
}

/// A running receiver and worker.
pub struct Running {
    pub address: String,
    pub store: Store,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets the worker finish the event in hand, and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.server).await;
        if tokio::time::timeout(std::time::Duration::from_secs(30), self.worker)
            .await
            .is_err()
        {
            tracing::warn!(
                "the worker did not finish within 30 s; its event will be retried on the next start"
            );
        }
    }
}

/// Starts the receiver and the worker. `env` answers the environment
/// variables of sources (secrets) and targets (URLs, credentials).
pub async fn start(
    program: Program,
    database: &str,
    listen: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Running, Vec<String>> {
    let verifiers = server::verifiers(&program, env)?;
    let store = Store::open(database)
        .await
        .map_err(|e| vec![e.to_string()])?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| vec![format!("cannot listen on {listen}: {e}")])?;
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| listen.to_string());
    let program = Arc::new(program);
    let mut target_env = BTreeMap::new();
    for target in program.targets.values() {
        for name in target.env.keys() {
            if let Some(v) = env(name) {
                target_env.insert(name.clone(), v);
            }
        }
    }
    let executor = Arc::new(crate::targets::Executor::new(
        program.clone(),
        store.clone(),
        target_env,
    ));
    for missing in executor.unset_variables() {
        tracing::warn!("{missing} is not set: deliveries to that target will fail until it is");
    }
    let (stop, stopped) = watch::channel(false);
    let worker = tokio::spawn(crate::worker::run(
        store.clone(),
        executor,
        crate::worker::WorkerConfig::default(),
        stopped.clone(),
    ));
    let state = Arc::new(AppState {
        program,
        inbox: Inbox::start(store.clone(), 256),
        store: store.clone(),
        verifiers,
        connection: DEFAULT_CONNECTION.to_string(),
        metrics: Default::default(),
    });
    let app = server::router(state);
    let mut until = stopped;
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = until.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the server stopped");
        }
    });
    Ok(Running {
        address,
        store,
        stop,
        server,
        worker,
    })
}

pub fn run(opts: ServeOptions) -> ExitCode {
    init_logging(opts.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(opts))
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

async fn serve(opts: ServeOptions<'_>) -> ExitCode {
    let Some(program) = load_program(opts.mappings, "serve") else {
        return ExitCode::from(1);
    };
    let running = match start(program, opts.database, opts.listen, &|name| {
        std::env::var(name).ok()
    })
    .await
    {
        Ok(r) => r,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "error: `mapper serve` does not start (set the variables above, or declare `verify: {{ method: none }}`)"
            );
            return ExitCode::from(1);
        }
    };
    let address = running.address.clone();
    tracing::info!(%address, mappings = %opts.mappings.display(), "listening for webhooks on http://{address}/webhooks/{{source}}");
    shutdown_signal().await;
    running.stop().await;
    tracing::info!("stopped; stored events stay in the database for the next start");
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
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
