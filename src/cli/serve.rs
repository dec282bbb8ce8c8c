//! `mapper serve`: the webhook receiver over the durable inbox, and the
//! worker that delivers what it stores.

use crate::config::compile::compile_dir;
use crate::engine::program::Program;
use crate::server::{self, AppState};
use crate::store::{DEFAULT_CONNECTION, Inbox, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Options of `mapper serve`.
pub struct ServeOptions<'a> {
    pub mappings: &'a Path,
    pub listen: &'a str,
    pub database: &'a str,
    /// Events delivered at once.
    pub workers: usize,
    /// Replaces every coalescing target's window.
    pub coalesce_window: Option<String>,
    pub log_json: bool,
}

/// A running receiver and worker.
pub struct Running {
    pub address: String,
    pub store: Store,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    worker: JoinHandle<()>,
    _watcher: Option<Watcher>,
}

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

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

/// How `serve` reads environment variables (sources' secrets, targets' URLs and credentials).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An executor over `program` with the targets' variables read from `env`.
pub(crate) fn executor_for(
    program: Arc<Program>,
    store: &Store,
    env: &Env,
) -> crate::targets::Executor {
    let mut target_env = BTreeMap::new();
    for target in program.targets.values() {
        for name in target.env.keys() {
            if let Some(v) = env(name) {
                target_env.insert(name.clone(), v);
            }
        }
    }
    let executor = crate::targets::Executor::new(program, store.clone(), target_env);
    // The operator's window, when set, replaces every target's own.
    match env(COALESCE_WINDOW_ENV).and_then(|w| crate::config::compile::parse_duration(&w)) {
        Some(window) => executor.with_coalesce_window(window),
        None => executor,
    }
}

/// Overrides the `coalesce.window` of every target (`serve --coalesce-window`).
pub const COALESCE_WINDOW_ENV: &str = "MAPPER_COALESCE_WINDOW";

/// Starts the receiver and the worker, and (with `watch`) reloads the mapping
/// folder when it changes.
pub async fn start(
    program: Program,
    mappings: Option<PathBuf>,
    database: &str,
    listen: &str,
    env: Env,
    worker: crate::worker::WorkerConfig,
) -> Result<Running, Vec<String>> {
    let verifiers = server::verifiers(&program, &*env)?;
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
    let executor = executor_for(program.clone(), &store, &env);
    for missing in executor.unset_variables() {
        tracing::warn!("{missing} is not set: deliveries to that target will fail until it is");
    }
    let executor = Arc::new(arc_swap::ArcSwap::from_pointee(executor));
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(crate::worker::schedule::run(
        store.clone(),
        executor.clone(),
        DEFAULT_CONNECTION.to_string(),
        stopped.clone(),
    ));
    tokio::spawn(crate::worker::coalesce::run(
        store.clone(),
        executor.clone(),
        worker.clone(),
        stopped.clone(),
    ));
    let worker = tokio::spawn(crate::worker::run(
        store.clone(),
        executor.clone(),
        worker,
        stopped.clone(),
    ));
    let state = Arc::new(AppState::new(
        server::Loaded { program, verifiers },
        store.clone(),
        Inbox::start(store.clone(), 256),
        DEFAULT_CONNECTION.to_string(),
    ));
    let watcher = match mappings {
        Some(dir) => Some(
            watch_mappings(dir, state.clone(), executor, store.clone(), env)
                .map_err(|e| vec![format!("cannot watch the mapping folder: {e}")])?,
        ),
        None => None,
    };
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
        _watcher: watcher,
    })
}

/// Watches the mapping folder; every change re-reads the whole folder, and a
/// set that checks clean replaces the running one at once. A set with errors
/// is refused with the same diagnostics as `mapper check`, and the old one
/// keeps serving.
fn watch_mappings(
    dir: PathBuf,
    state: Arc<AppState>,
    executor: Arc<arc_swap::ArcSwap<crate::targets::Executor>>,
    store: Store,
    env: Env,
) -> Result<Watcher, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Editors save by writing a temporary file and renaming it: watch the folder
    // and treat any event as "something changed", never trust its paths.
    let mut debouncer = notify_debouncer_full::new_debouncer(
        std::time::Duration::from_millis(300),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            // Reading the files (our own reload does) is no change.
            let changed = result.is_ok_and(|events| {
                events.iter().any(|e| {
                    use notify::EventKind;
                    use notify::event::ModifyKind;
                    matches!(
                        e.event.kind,
                        EventKind::Create(_)
                            | EventKind::Remove(_)
                            | EventKind::Modify(
                                ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any
                            )
                            | EventKind::Any
                    )
                })
            });
            if changed {
                let _ = tx.send(());
            }
        },
    )?;
    debouncer.watch(&dir, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        let mut loaded = fingerprint(&dir);
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            // Saving a file unchanged, or touching it, reloads nothing.
            let now = fingerprint(&dir);
            if now == loaded {
                continue;
            }
            loaded = now;
            let compiled = compile_dir(&dir);
            let outcome = match compiled.program {
                Some(program) => match server::verifiers(&program, &*env) {
                    Ok(verifiers) => Ok((program, verifiers)),
                    Err(missing) => Err(missing.join("; ")),
                },
                None => Err(compiled
                    .diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| d.render(compiled.texts.get(&d.file).map(String::as_str)))
                    .collect::<Vec<_>>()
                    .join("\n")),
            };
            match outcome {
                Ok((program, verifiers)) => {
                    let program = Arc::new(program);
                    let next = executor_for(program.clone(), &store, &env)
                        .sharing_limits_with(&executor.load());
                    executor.store(Arc::new(next));
                    let mappings = program.mappings.len();
                    state
                        .loaded
                        .store(Arc::new(server::Loaded { program, verifiers }));
                    if let Ok(mut r) = state.reload.lock() {
                        r.ok += 1;
                        r.last_error = None;
                    }
                    tracing::info!(mappings, "reloaded the mapping folder");
                }
                Err(error) => {
                    tracing::error!(
                        "the changed mapping folder is refused; the previous set keeps serving:\n{error}"
                    );
                    if let Ok(mut r) = state.reload.lock() {
                        r.failed += 1;
                        r.last_error = Some(error);
                    }
                }
            }
        }
    });
    Ok(debouncer)
}

/// A digest of every file under `dir` (paths and contents).
fn fingerprint(dir: &Path) -> Vec<u8> {
    use sha2::Digest;
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut hasher = sha2::Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).unwrap_or_default());
        hasher.update([0]);
    }
    hasher.finalize().to_vec()
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

async fn serve(opts: ServeOptions<'_>) -> ExitCode {
    let Some(program) = load_program(opts.mappings, "serve") else {
        return ExitCode::from(1);
    };
    let window = opts.coalesce_window.clone();
    let env: Env = Arc::new(move |name: &str| match (name, &window) {
        (COALESCE_WINDOW_ENV, Some(w)) => Some(w.clone()),
        _ => std::env::var(name).ok(),
    });
    let running = match start(
        program,
        Some(opts.mappings.to_path_buf()),
        opts.database,
        opts.listen,
        env,
        crate::worker::WorkerConfig {
            concurrency: opts.workers,
            ..Default::default()
        },
    )
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
