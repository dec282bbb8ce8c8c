//! `mapper serve`: the webhook receiver over the durable inbox.

use crate::config::compile::compile_dir;
use crate::server::{self, AppState};
use crate::store::{DEFAULT_CONNECTION, Inbox, Store};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Options of `mapper serve`.
pub struct ServeOptions<'a> {
    pub mappings: &'a Path,
    pub listen: &'a str,
    pub database: &'a str,
    pub log_json: bool,
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

fn init_logging(json: bool) {
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

async fn serve(opts: ServeOptions<'_>) -> ExitCode {
    let compiled = compile_dir(opts.mappings);
    let Some(program) = compiled.program else {
        for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
            eprint!(
                "{}",
                d.render(compiled.texts.get(&d.file).map(String::as_str))
            );
        }
        eprintln!(
            "error: the mapping folder {} has errors; `mapper serve` does not start",
            opts.mappings.display()
        );
        return ExitCode::from(1);
    };
    let verifiers = match server::verifiers(&program, &|name| std::env::var(name).ok()) {
        Ok(v) => v,
        Err(missing) => {
            for m in &missing {
                eprintln!("error: {m}");
            }
            eprintln!(
                "error: set the variables above (or declare `verify: {{ method: none }}`); `mapper serve` does not start"
            );
            return ExitCode::from(1);
        }
    };
    let store = match Store::open(opts.database).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", opts.listen);
            return ExitCode::from(1);
        }
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| opts.listen.to_string());
    let program = Arc::new(program);
    let mut target_env = std::collections::BTreeMap::new();
    for target in program.targets.values() {
        for name in target.env.keys() {
            if let Ok(v) = std::env::var(name) {
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
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(crate::worker::run(
        store.clone(),
        executor,
        crate::worker::WorkerConfig::default(),
        stopped,
    ));
    let state = Arc::new(AppState {
        program,
        inbox: Inbox::start(store.clone(), 256),
        store,
        verifiers,
        connection: DEFAULT_CONNECTION.to_string(),
        metrics: Default::default(),
    });
    tracing::info!(%address, mappings = %opts.mappings.display(), "listening for webhooks on http://{address}/webhooks/{{source}}");
    let app = server::router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("error: the server stopped: {e}");
        return ExitCode::from(1);
    }
    // The worker finishes the event in hand; the rest stays stored for the next start.
    let _ = stop.send(true);
    if tokio::time::timeout(std::time::Duration::from_secs(30), worker)
        .await
        .is_err()
    {
        tracing::warn!(
            "the worker did not finish within 30 s; its event will be retried on the next start"
        );
    }
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
