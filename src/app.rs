//! The running engine, wired once for every entry point: `mapper serve`,
//! `mapper demo`, `mapper resync`, the integration tests and the benches all
//! call [`App::start`] with an [`AppConfig`] and get a [`Running`] back.
//!
//! Started here: the store, the webhook receiver (when a listen address is
//! given) with its sources' verifiers, the executor that calls the targets,
//! the worker, the scheduled rules and the flusher of held writes (when
//! `background` is on), and the watcher that reloads the mapping folder (when
//! one is given). One [`Metrics`] handle is made for all of them.

use crate::config::compile::compile_dir;
use crate::metrics::Metrics;
use crate::program::Program;
use crate::server::{self, AppState, MissingSecrets};
use crate::store::connections::TokenPolicy;
use crate::store::{DEFAULT_CONNECTION, Inbox, Store, StoreError};
use crate::targets::Executor;
use crate::worker::WorkerConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Running::shutdown`] waits for the server and for the worker.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Where the app reads environment variables: sources' webhook secrets,
/// targets' URLs and credentials. The CLI reads the process's; tests and the
/// demo give a map of their own.
#[derive(Clone)]
pub struct Env(Arc<Lookup>);

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Env {
    /// The process's environment.
    pub fn process() -> Env {
        Env(Arc::new(|name: &str| std::env::var(name).ok()))
    }

    /// Exactly these variables.
    pub fn from_map(vars: BTreeMap<String, String>) -> Env {
        Env(Arc::new(move |name: &str| vars.get(name).cloned()))
    }

    /// The value of `name`, when set.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(vars: I) -> Env {
        Env::from_map(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values are secrets.
        f.write_str("Env")
    }
}

/// A database URL that names a database `mapper` can open:
/// `sqlite://FILE` (created when missing) or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

/// Why a text is not a [`DatabaseUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("`{0}` is not a database URL: use sqlite://FILE or postgres://USER@HOST/DB")]
    Scheme(String),
    #[error("`{0}`: an in-memory SQLite database is not durable; use sqlite://FILE")]
    InMemory(String),
}

impl std::str::FromStr for DatabaseUrl {
    type Err = DatabaseUrlError;
    fn from_str(text: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl(text.to_string()));
        }
        match text.strip_prefix("sqlite:") {
            Some(rest) if rest.contains(":memory:") || rest.contains("mode=memory") => {
                Err(DatabaseUrlError::InMemory(text.to_string()))
            }
            Some(rest) if !rest.trim_start_matches('/').is_empty() => {
                Ok(DatabaseUrl(text.to_string()))
            }
            _ => Err(DatabaseUrlError::Scheme(text.to_string())),
        }
    }
}

impl DatabaseUrl {
    /// A SQLite file.
    pub fn sqlite(file: &Path) -> DatabaseUrl {
        DatabaseUrl(format!("sqlite://{}", file.display()))
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The database the app works on: opened by [`App::start`], or already open
/// (a command that wrote to it before starting delivery).
#[derive(Debug, Clone)]
pub enum Database {
    Url(DatabaseUrl),
    Open(Store),
}

impl From<DatabaseUrl> for Database {
    fn from(url: DatabaseUrl) -> Database {
        Database::Url(url)
    }
}

impl From<Store> for Database {
    fn from(store: Store) -> Database {
        Database::Open(store)
    }
}

/// Everything [`App::start`] needs, as typed values: the CLI builds it from
/// its flags once, tests and benches build it directly.
pub struct AppConfig {
    /// The checked mapping set to serve.
    pub program: Program,
    pub database: Database,
    /// Receive webhooks on this address (port 0: any free port); `None`
    /// delivers only (`mapper resync`), and then no webhook secret is needed.
    pub listen: Option<SocketAddr>,
    /// Reload the mapping set when this folder changes.
    pub watch: Option<PathBuf>,
    pub env: Env,
    /// Retries, and how many events are delivered at once.
    pub worker: WorkerConfig,
    /// Replaces every coalescing target's window; zero sends each write at once.
    pub coalesce_window: Option<Duration>,
    /// Run the scheduled rules and send held writes when due.
    pub background: bool,
    /// Serve the operator console at `/ui` with this token (`MAPPER_UI_TOKEN`);
    /// `None` leaves `/ui` answering 404. Needs `listen`.
    pub ui_token: Option<String>,
    /// When connections installed through GHL OAuth refresh their access
    /// token (tests shorten GHL's day-long tokens to seconds).
    pub token_policy: TokenPolicy,
}

impl AppConfig {
    /// `program` on `database`, delivering only, with the process's
    /// environment and the default worker; set the other fields to taste.
    pub fn new(program: Program, database: impl Into<Database>) -> AppConfig {
        AppConfig {
            program,
            database: database.into(),
            listen: None,
            watch: None,
            env: Env::process(),
            worker: WorkerConfig::default(),
            coalesce_window: None,
            background: false,
            ui_token: None,
            token_policy: TokenPolicy::default(),
        }
    }

    /// What `mapper serve` runs: receiver on `listen`, worker, schedules and
    /// held writes, and a reload when `watch` changes.
    pub fn serve(
        program: Program,
        database: impl Into<Database>,
        listen: SocketAddr,
        watch: Option<PathBuf>,
        env: Env,
    ) -> AppConfig {
        AppConfig {
            listen: Some(listen),
            watch,
            env,
            background: true,
            ..AppConfig::new(program, database)
        }
    }
}

/// Why the app did not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Webhook secrets or keys that are unset or do not parse.
    #[error("{0}")]
    Secrets(MissingSecrets),
    #[error("{0}")]
    Database(#[from] StoreError),
    #[error("cannot listen on {address}: {error}")]
    Listen {
        address: SocketAddr,
        error: std::io::Error,
    },
    /// The operator console cannot be served (`MAPPER_UI_TOKEN`).
    #[error("{0}")]
    Console(#[from] server::ui::ConsoleError),
    /// Connections are stored with sealed values and `MAPPER_SECRET_KEY`
    /// is unset, or is not the key that sealed them.
    #[error("{0}")]
    SecretKey(String),
    #[error("cannot watch the mapping folder {}: {error}", folder.display())]
    Watch {
        folder: PathBuf,
        error: notify::Error,
    },
}

/// Starts the engine; see [`App::start`].
pub struct App;

impl App {
    /// Opens the store and starts what `config` asks for. Returns once the
    /// receiver is listening: posting to [`Running::address`] works at once.
    pub async fn start(config: AppConfig) -> Result<Running, StartError> {
        let AppConfig {
            program,
            database,
            listen,
            watch,
            env,
            worker,
            coalesce_window,
            background,
            ui_token,
            token_policy,
        } = config;
        let verifiers = match listen {
            Some(_) => {
                server::verifiers(&program, &|name| env.get(name)).map_err(StartError::Secrets)?
            }
            None => Default::default(),
        };
        let store = match database {
            Database::Url(url) => Store::open(url.as_str()).await?,
            Database::Open(store) => store,
        };
        if let Some((free, wanted)) = store.session_room().await
            && free < wanted
        {
            tracing::warn!(
                free,
                wanted,
                "PostgreSQL has {free} free sessions and this process may open {wanted}: \
                 deliveries that create a person may wait for one and time out; raise the \
                 server's max_connections or run fewer replicas"
            );
        }
        let listener = match listen {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|error| StartError::Listen { address, error })?,
            ),
            None => None,
        };
        let address = match &listener {
            Some(l) => Some(l.local_addr().map_err(|error| StartError::Listen {
                address: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                error,
            })?),
            None => None,
        };
        let metrics = Metrics::new();
        let tenants = load_tenants(&store, &env).await?;
        if tenants.iter().any(|t| t.oauth.is_some())
            && let Err(missing) =
                crate::targets::oauth::OAuthClient::from_env(&|name| env.get(name))
        {
            tracing::warn!(
                "{missing}: connections installed through GHL OAuth use their access tokens until they expire, and cannot refresh them"
            );
        }
        let delivery = Delivery {
            store: store.clone(),
            env: env.clone(),
            coalesce_window,
            metrics: metrics.clone(),
            tenants: Arc::new(arc_swap::ArcSwap::from_pointee(tenants)),
            token_policy,
        };
        let program = Arc::new(program);
        let executor = delivery.executor(program.clone(), None);
        for missing in executor.unset_variables() {
            tracing::warn!("{missing} is not set: deliveries to that target will fail until it is");
        }
        let executor = Arc::new(arc_swap::ArcSwap::from_pointee(executor));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            store
                .clone()
                .checkpoints(Duration::from_millis(500), stopped.clone()),
        ));
        if background {
            tasks.push(tokio::spawn(crate::worker::schedule::run(
                store.clone(),
                executor.clone(),
                DEFAULT_CONNECTION.to_string(),
                stopped.clone(),
            )));
            tasks.push(tokio::spawn(crate::worker::coalesce::run(
                store.clone(),
                executor.clone(),
                worker.clone(),
                stopped.clone(),
            )));
        }
        let worker = tokio::spawn(crate::worker::run(
            store.clone(),
            executor.clone(),
            worker,
            stopped.clone(),
        ));
        let state = listener.as_ref().map(|_| {
            Arc::new(
                AppState::new(
                    server::Loaded {
                        routes: delivery.routes(&program),
                        tenants: delivery.tenant_verifiers(&program),
                        program: program.clone(),
                        verifiers,
                    },
                    store.clone(),
                    Inbox::start(store.clone(), 256),
                    DEFAULT_CONNECTION.to_string(),
                )
                .with_metrics(metrics.clone()),
            )
        });
        if background {
            tasks.push(tokio::spawn(watch_connections(
                delivery.clone(),
                state.clone(),
                executor.clone(),
                stopped.clone(),
            )));
        }
        let watcher = match watch {
            Some(folder) => match watch_mappings(&folder, state.clone(), executor, delivery) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    // The tasks already started end on their own.
                    let _ = stop.send(true);
                    return Err(StartError::Watch { folder, error });
                }
            },
            None => None,
        };
        let console = match (&state, ui_token.as_deref()) {
            (Some(state), Some(token)) => match server::ui::router(state.clone(), token) {
                Ok(console) => Some(console),
                Err(e) => {
                    let _ = stop.send(true);
                    return Err(e.into());
                }
            },
            _ => None,
        };
        let server = match (listener, state) {
            (Some(listener), Some(state)) => {
                // The GHL OAuth callback reads the app's client credentials
                // and MAPPER_SECRET_KEY from the process's environment.
                let lookup = env.clone();
                let install = server::oauth::router(
                    state.clone(),
                    Arc::new(move |name: &str| lookup.get(name)),
                );
                let app = match console {
                    Some(console) => server::router(state).merge(install).merge(console),
                    None => server::router(state).merge(install),
                };
                let mut until = stopped;
                Some(tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = until.wait_for(|stop| *stop).await;
                    };
                    if let Err(e) = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!(error = %e, "the server stopped");
                    }
                }))
            }
            _ => None,
        };
        Ok(Running {
            address,
            store,
            metrics,
            stop,
            server,
            worker: Some(worker),
            tasks,
            _watcher: watcher,
        })
    }
}

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// A started app. Dropping it stops it without waiting; [`Running::shutdown`] waits.
pub struct Running {
    /// Where webhooks are received, when they are.
    pub address: Option<SocketAddr>,
    /// The app's database.
    pub store: Store,
    /// What `/metrics` shows.
    pub metrics: Metrics,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<Watcher>,
}

impl Running {
    /// `http://ADDRESS`, the base of every route, when receiving.
    pub fn url(&self) -> Option<String> {
        self.address.map(|a| format!("http://{a}"))
    }

    /// Stops accepting, lets the requests in flight and the worker's events
    /// in hand finish, and waits for them (30 s each at most; an event not
    /// finished by then is retried on the next start).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(STOP_WAIT, server).await;
        }
        if let Some(worker) = self.worker.take()
            && tokio::time::timeout(STOP_WAIT, worker).await.is_err()
        {
            tracing::warn!(
                "the worker did not finish within 30 s; its event will be retried on the next start"
            );
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(STOP_WAIT, task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Tasks see the signal and end on their own; nothing waits here.
        let _ = self.stop.send(true);
    }
}

/// What every executor of this app shares, the first and each reloaded one.
#[derive(Clone)]
struct Delivery {
    store: Store,
    env: Env,
    coalesce_window: Option<Duration>,
    metrics: Metrics,
    /// The stored connections, read at start and again when they change
    /// (`watch_connections`).
    tenants: Arc<arc_swap::ArcSwap<Vec<StoredTenant>>>,
    /// When OAuth access tokens are refreshed.
    token_policy: TokenPolicy,
}

/// A stored connection, its values opened.
struct StoredTenant {
    name: String,
    /// Why its events wait instead of being delivered, when it is disabled.
    disabled: Option<String>,
    env: Env,
    /// Installed through GHL OAuth and without a PIT: the key its tokens
    /// open with (its `GHL_API_TOKEN` is the access token's placeholder).
    oauth: Option<crate::secrets::SecretKey>,
}

/// Reads the stored connections and opens their values with
/// `MAPPER_SECRET_KEY`. A connection's variables are its own: of the
/// process's environment it sees only the base URLs (`…_URL`) it does not set
/// itself, never another tenant's credentials or location.
async fn load_tenants(store: &Store, env: &Env) -> Result<Vec<StoredTenant>, StartError> {
    let stored = store.connections().await?;
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let key = match env.get("MAPPER_SECRET_KEY") {
        Some(text) => Some(
            crate::secrets::SecretKey::from_env_value(&text)
                .map_err(|e| StartError::SecretKey(e.to_string()))?,
        ),
        None => None,
    };
    let mut tenants = Vec::with_capacity(stored.len());
    for connection in stored {
        let mut vars = if connection.sealed_vars.is_empty() {
            BTreeMap::new()
        } else {
            let key = key_for(
                &key,
                &connection.name,
                "values",
                "the connections were added",
            )?;
            connection
                .vars(key)
                .map_err(|e| cannot_open(&connection.name, "values", e))?
        };
        // A PIT (`GHL_API_TOKEN`) stays the simple option and wins; without
        // one, stored OAuth tokens give the bearer, fetched at send time.
        let oauth = match &connection.sealed_tokens {
            Some(_) if !vars.contains_key(crate::targets::oauth::ACCESS_TOKEN_VARIABLE) => {
                let key = key_for(
                    &key,
                    &connection.name,
                    "OAuth tokens",
                    "the connection was installed",
                )?;
                // Opened once here so that a wrong key stops the start (or
                // this reload) instead of every delivery.
                connection
                    .tokens(key)
                    .map_err(|e| cannot_open(&connection.name, "OAuth tokens", e))?;
                vars.insert(
                    crate::targets::oauth::ACCESS_TOKEN_VARIABLE.to_string(),
                    crate::targets::oauth::ACCESS_TOKEN_PLACEHOLDER.to_string(),
                );
                Some(key.clone())
            }
            _ => None,
        };
        let process = env.clone();
        let own = Env::from_map(vars);
        let tenant_env = Env(Arc::new(move |name: &str| {
            own.get(name)
                .or_else(|| name.ends_with("_URL").then(|| process.get(name)).flatten())
        }));
        tenants.push(StoredTenant {
            disabled: (!connection.enabled).then(|| {
                connection
                    .disabled_reason
                    .clone()
                    .unwrap_or_else(|| "disabled".to_string())
            }),
            name: connection.name,
            env: tenant_env,
            oauth,
        });
    }
    Ok(tenants)
}

/// The key that opens a connection's encrypted `what`, or why `serve`
/// cannot start without it (`when`: with which key they were sealed).
fn key_for<'k>(
    key: &'k Option<crate::secrets::SecretKey>,
    connection: &str,
    what: &str,
    when: &str,
) -> Result<&'k crate::secrets::SecretKey, StartError> {
    key.as_ref().ok_or_else(|| {
        StartError::SecretKey(format!(
            "connection `{connection}` has encrypted {what} and MAPPER_SECRET_KEY is not set: \
             set it to the key {when} with"
        ))
    })
}

/// A connection's encrypted `what` that the key does not open.
fn cannot_open(connection: &str, what: &str, e: impl std::fmt::Display) -> StartError {
    StartError::SecretKey(format!(
        "cannot open the {what} of connection `{connection}` with MAPPER_SECRET_KEY: {e}"
    ))
}

impl Delivery {
    /// An executor over `program` with the targets' variables read from
    /// `env`, and one for each stored connection with its own. `previous`:
    /// the executor it replaces after a reload, whose rate-limit windows
    /// (the default connection's and each tenant's) it keeps counting in.
    fn executor(&self, program: Arc<Program>, previous: Option<&Executor>) -> Executor {
        let mut executor = self.one_executor(program.clone(), &self.env, DEFAULT_CONNECTION);
        if let Some(previous) = previous {
            executor = executor.sharing_limits_with(previous);
        }
        let mut tenants = std::collections::HashMap::new();
        for tenant in self.tenants.load().iter() {
            let entry = match &tenant.disabled {
                Some(reason) => crate::targets::Tenant::Disabled(reason.clone()),
                None => {
                    let mut one = self
                        .one_executor(program.clone(), &tenant.env, &tenant.name)
                        .sharing_journal_with(&executor);
                    if let Some(key) = &tenant.oauth {
                        one = one.with_oauth(Arc::new(self.bearer(&program, tenant, key)));
                    }
                    if let Some(limits) = previous.and_then(|p| p.tenant_limits(&tenant.name)) {
                        one = one.with_limits(limits);
                    }
                    crate::targets::Tenant::Ready(Arc::new(one))
                }
            };
            tenants.insert(tenant.name.clone(), entry);
        }
        executor.with_tenants(tenants)
    }

    /// The stored connections' webhook verifiers over `program`.
    fn tenant_verifiers(
        &self,
        program: &Program,
    ) -> std::collections::HashMap<
        String,
        std::collections::HashMap<String, Result<server::verify::Verifier, String>>,
    > {
        server::tenant_verifiers(
            program,
            self.tenants.load().iter().map(|t| {
                let lookup: &dyn Fn(&str) -> Option<String> = &*t.env.0;
                (t.name.as_str(), lookup)
            }),
        )
    }

    /// For each variable a source routes by: which connection has which
    /// value (the environment's is `default`'s).
    fn routes(
        &self,
        program: &Program,
    ) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
        let mut routes = std::collections::HashMap::new();
        for variable in program
            .sources
            .values()
            .filter_map(|s| s.route.as_ref().map(|r| r.variable.clone()))
        {
            let mut owners = std::collections::HashMap::new();
            if let Some(value) = self.env.get(&variable) {
                owners.insert(value, DEFAULT_CONNECTION.to_string());
            }
            for tenant in self.tenants.load().iter() {
                if let Some(value) = tenant.env.get(&variable) {
                    owners.insert(value, tenant.name.clone());
                }
            }
            routes.insert(variable, owners);
        }
        routes
    }

    /// The OAuth bearer of a connection installed through GHL OAuth: its
    /// refreshes go to its own `GHL_API_BASE_URL` (where its calls go),
    /// with the app's client credentials from the process's environment.
    fn bearer(
        &self,
        program: &Program,
        tenant: &StoredTenant,
        key: &crate::secrets::SecretKey,
    ) -> crate::targets::oauth::Bearer {
        use crate::targets::oauth::{Bearer, OAuthClient, TokenEndpoint, base_url};
        let base = base_url(program, &|name| tenant.env.get(name)).unwrap_or_default();
        Bearer::new(
            &tenant.name,
            self.store.clone(),
            key.clone(),
            OAuthClient::from_env(&|name| self.env.get(name)),
            TokenEndpoint::new(&base),
            self.token_policy,
        )
    }

    /// `connection`'s executor. On PostgreSQL its rate-limit windows are
    /// kept in the database, so that replicas delivering the same
    /// connection's events share them.
    fn one_executor(&self, program: Arc<Program>, env: &Env, connection: &str) -> Executor {
        let mut target_env = BTreeMap::new();
        for target in program.targets.values() {
            for name in target.env.keys() {
                if let Some(v) = env.get(name) {
                    target_env.insert(name.clone(), v);
                }
            }
        }
        let mut executor = Executor::new(program, self.store.clone(), target_env)
            .with_metrics(self.metrics.clone())
            .for_connection_named(connection);
        if self.store.is_postgres() {
            executor = executor.with_limits(Arc::new(crate::targets::limiter::Limiter::shared(
                self.store.clone(),
                connection,
            )));
        }
        match self.coalesce_window {
            Some(window) => executor.with_coalesce_window(window),
            None => executor,
        }
    }
}

/// How often `serve` looks for added, changed, enabled or disabled connections.
const CONNECTIONS_POLL: Duration = Duration::from_secs(5);

/// One connection as far as its executor and verifiers depend on it.
type ConnectionPrint = (String, bool, Option<String>, BTreeMap<String, String>, bool);

/// What of the stored connections makes a running app rebuild its tenants:
/// names, enabled and why not, the (sealed) values, and whether OAuth tokens are
/// stored. Not `updated_at`: a token rotation changes it, and a rotated
/// token is read from the store at send time, so it needs no new executor
/// (whose id caches would start over at every refresh).
async fn connections_fingerprint(store: &Store) -> Option<Vec<ConnectionPrint>> {
    let stored = store.connections().await.ok()?;
    Some(
        stored
            .into_iter()
            .map(|c| {
                let has_tokens = c.sealed_tokens.is_some();
                (
                    c.name,
                    c.enabled,
                    c.disabled_reason,
                    c.sealed_vars,
                    has_tokens,
                )
            })
            .collect(),
    )
}

/// Re-reads the stored connections when they change (`mapper connection
/// add`, `set`, `enable`, `disable`, `remove`, from any process), and swaps
/// in executors and verifiers for them: no restart needed. A set that cannot
/// be opened (the key changed) is refused with the reason, and the
/// connections read before keep serving.
async fn watch_connections(
    delivery: Delivery,
    state: Option<Arc<AppState>>,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = connections_fingerprint(&delivery.store).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CONNECTIONS_POLL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = connections_fingerprint(&delivery.store).await;
        if now.is_none() || now == seen {
            continue;
        }
        match load_tenants(&delivery.store, &delivery.env).await {
            Ok(tenants) => {
                let count = tenants.len();
                delivery.tenants.store(Arc::new(tenants));
                let current = executor.load_full();
                let program = current.program().clone();
                executor.store(Arc::new(delivery.executor(program, Some(&current))));
                if let Some(state) = &state {
                    let loaded = state.loaded.load_full();
                    state.loaded.store(Arc::new(server::Loaded {
                        program: loaded.program.clone(),
                        verifiers: loaded.verifiers.clone(),
                        tenants: delivery.tenant_verifiers(&loaded.program),
                        routes: delivery.routes(&loaded.program),
                    }));
                }
                tracing::info!(
                    connections = count,
                    "the stored connections changed; serving them"
                );
                seen = now;
            }
            Err(e) => {
                tracing::error!(error = %e, "the stored connections changed but cannot be read; the previous ones keep serving");
                seen = now;
            }
        }
    }
}

/// Watches the mapping folder; every change re-reads the whole folder, and a
/// set that checks clean replaces the running one at once. A set with errors
/// is refused with the same diagnostics as `mapper check`, and the old one
/// keeps serving.
fn watch_mappings(
    dir: &Path,
    state: Option<Arc<AppState>>,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    delivery: Delivery,
) -> Result<Watcher, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Editors save by writing a temporary file and renaming it: watch the folder
    // and treat any event as "something changed", never trust its paths.
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(300),
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
    debouncer.watch(dir, notify::RecursiveMode::Recursive)?;
    let dir = dir.to_path_buf();
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
                Some(program) if state.is_none() => Ok((program, Default::default())),
                Some(program) => match server::verifiers(&program, &|n| delivery.env.get(n)) {
                    Ok(verifiers) => Ok((program, verifiers)),
                    Err(missing) => Err(missing.to_string()),
                },
                None => Err(compiled
                    .diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| d.render(compiled.texts.get(&d.file).map(String::as_str)))
                    .collect::<Vec<_>>()
                    .join("\n")),
            };
            delivery.metrics.config_reloaded(outcome.is_ok());
            match outcome {
                Ok((program, verifiers)) => {
                    let program = Arc::new(program);
                    let next = delivery.executor(program.clone(), Some(&executor.load()));
                    executor.store(Arc::new(next));
                    let mappings = program.mappings.len();
                    if let Some(state) = &state {
                        state.loaded.store(Arc::new(server::Loaded {
                            routes: delivery.routes(&program),
                            tenants: delivery.tenant_verifiers(&program),
                            program,
                            verifiers,
                        }));
                        if let Ok(mut r) = state.reload.lock() {
                            r.ok += 1;
                            r.last_error = None;
                        }
                    }
                    tracing::info!(mappings, "reloaded the mapping folder");
                }
                Err(error) => {
                    tracing::error!(
                        "the changed mapping folder is refused; the previous set keeps serving:\n{error}"
                    );
                    if let Some(state) = &state
                        && let Ok(mut r) = state.reload.lock()
                    {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_checked_once() {
        assert!("sqlite://mapper.db".parse::<DatabaseUrl>().is_ok());
        assert!("postgres://u@h/db".parse::<DatabaseUrl>().is_ok());
        assert!(matches!(
            "sqlite::memory:".parse::<DatabaseUrl>(),
            Err(DatabaseUrlError::InMemory(_))
        ));
        assert!(matches!(
            "mysql://x".parse::<DatabaseUrl>(),
            Err(DatabaseUrlError::Scheme(_))
        ));
        assert!(matches!(
            "mapper.db".parse::<DatabaseUrl>(),
            Err(DatabaseUrlError::Scheme(_))
        ));
    }
}
