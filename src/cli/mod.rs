//! The `mapper` command line.

mod check;
mod connection;
mod demo;
mod explain;
mod new;
mod ops;
mod plan;
mod resync;
mod serve;
mod test;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Keeps loyalty platforms and GoHighLevel in sync, driven by YAML mappings.
#[derive(Parser)]
#[command(name = "mapper", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate mapping folders (or files inside one); exit 0 valid, 1 invalid, 2 usage.
    Check {
        /// Mapping folders or files [default: mappings]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show, as JSON, what one payload would do: mappings fired, customer keys, requests.
    Plan {
        /// Source the payload comes from (e.g. stickycards)
        #[arg(long)]
        source: String,
        /// Payload file (the raw webhook body), or - for standard input
        payload: PathBuf,
        /// Mapping folder
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
    },
    /// Run the mapping tests (`tests:` files) of mapping folders.
    Test {
        /// Mapping folders, or test files inside one [default: mappings]
        paths: Vec<PathBuf>,
        /// Print the actual plan of failing cases
        #[arg(short, long)]
        verbose: bool,
        /// Run the cases under this profile: NAME=PROFILE (stickycards=boomerangme), or a profile name
        #[arg(long, value_name = "NAME=PROFILE", value_parser = test::parse_profile)]
        profile: Vec<(String, String)>,
        /// Rewrite the expected plan of failing cases with the actual one, after showing it
        #[arg(long)]
        update: bool,
    },
    /// Print the JSON Schema of mapping files (schemas/mapping.schema.json),
    /// or infer a payload schema from samples (`schema infer`).
    Schema {
        #[command(subcommand)]
        action: Option<SchemaAction>,
    },
    /// Print the long form of a diagnostic code (what it means, a wrong and a right example).
    Explain {
        /// A code such as M012
        code: String,
    },
    /// Write a new event from real payloads: its payload schema, a mapping
    /// skeleton, a mapping test (and the source profile of a new source).
    New {
        /// Source the samples come from (an existing one, or a new one to write)
        #[arg(long)]
        source: String,
        /// Event name (the payload schema's file name)
        #[arg(long)]
        event: String,
        /// Sample webhook bodies of the event
        #[arg(long = "from", value_name = "SAMPLE", required = true, num_args = 1..)]
        from: Vec<PathBuf>,
        /// Target the mapping writes to
        #[arg(long, default_value = "ghl", value_parser = ["ghl", "stickycards"])]
        target: String,
        /// Mapping folder
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
        /// Where a new source's event type is (a selector) [default: guessed from keys such as event_type, type]
        #[arg(long, value_name = "SELECTOR")]
        event_type: Option<String>,
        /// Overwrite files that exist
        #[arg(long)]
        force: bool,
    },
    /// Counts of stored events by state, per connection, source and event,
    /// the held writes, the latest errors and the stored connections.
    Status {
        /// Database URL
        #[arg(
            long,
            env = "MAPPER_DATABASE_URL",
            default_value = "sqlite://mapper.db"
        )]
        database: String,
        /// Only this connection (a stored one, `default`, or one that events carry)
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Re-queue dead or unmapped events (all, by id, by source/event, since a time).
    Replay {
        /// Database URL
        #[arg(
            long,
            env = "MAPPER_DATABASE_URL",
            default_value = "sqlite://mapper.db"
        )]
        database: String,
        /// Only this delivery id
        #[arg(long)]
        id: Option<i64>,
        /// Only this source
        #[arg(long)]
        source: Option<String>,
        /// Only this event type
        #[arg(long)]
        event: Option<String>,
        /// Only events received since this time (2025-03-01, RFC 3339 or unix seconds)
        #[arg(long, value_parser = ops::parse_since)]
        since: Option<i64>,
        /// Only events in this state (dead or unmapped; default both)
        #[arg(long, value_parser = ops::parse_state)]
        state: Vec<crate::store::EventState>,
        /// Only this connection's events (a stored one, `default`, or one that events carry)
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
        /// Re-queue the held (coalesced) writes that failed, instead of events
        /// (only `--connection`'s when given)
        #[arg(long, conflicts_with_all = ["id", "source", "event", "since", "state"])]
        held: bool,
    },
    /// The sync log (every delivery attempt) of one event or one customer.
    Log {
        /// Database URL
        #[arg(
            long,
            env = "MAPPER_DATABASE_URL",
            default_value = "sqlite://mapper.db"
        )]
        database: String,
        /// Delivery id of the event
        #[arg(long)]
        event: Option<i64>,
        /// Customer id on the target (e.g. the GHL contact id)
        #[arg(long)]
        customer: Option<String>,
        /// Only the attempts made for this connection (a stored one, `default`, or one that events carry)
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run everything on this machine with no credentials: simulated GHL and
    /// Sticky Cards, the shipped mappings, every example payload, a summary.
    Demo {
        /// Mapping folder
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
        /// Folder of example payloads (one subfolder per source)
        #[arg(long, default_value = "examples/payloads")]
        examples: PathBuf,
        /// Database URL [default: a fresh mapper-demo.db in this folder, replaced on each run]
        #[arg(long)]
        database: Option<crate::app::DatabaseUrl>,
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_listen)]
        listen: std::net::SocketAddr,
        /// Hold writes to Sticky Cards this long, merged per customer (0s: send each at once)
        #[arg(long, env = "MAPPER_COALESCE_WINDOW", default_value = "2s", value_parser = parse_window)]
        coalesce_window: std::time::Duration,
        /// Keep serving after the summary (send your own webhooks), until Ctrl-C
        #[arg(long)]
        keep_running: bool,
    },
    /// Rebuild a target from the mirror of a source, or import a customer
    /// export (CSV or JSON lines), through the inbox; resumable with --run.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["from_mirror", "import"])))]
    Resync {
        /// Target to write to (e.g. ghl)
        #[arg(long)]
        target: String,
        /// Rebuild from the mirror of this source's customers (e.g. stickycards)
        #[arg(long, value_name = "SOURCE")]
        from_mirror: Option<String>,
        /// Import this export: CSV with a header of mirror names, or JSON lines
        #[arg(long, value_name = "FILE", requires = "source")]
        import: Option<PathBuf>,
        /// Format of the export [default: from its extension]
        #[arg(long, value_enum, requires = "import")]
        format: Option<resync::ImportFormat>,
        /// The source whose mirror names the export uses (e.g. stickycards)
        #[arg(long, conflicts_with = "from_mirror")]
        source: Option<String>,
        /// Run name; an existing run is continued [default: the interrupted
        /// run of the same command, else TARGET-from-SOURCE-TIME]
        #[arg(long)]
        run: Option<String>,
        /// Send every value, whatever the target is known to hold
        #[arg(long)]
        force: bool,
        /// Forget the customers' links to the target first (its records are
        /// gone): match them again by phone and email; implies --force
        #[arg(long)]
        relink: bool,
        /// Only the first N customers (rows of an export)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Mapping folder
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
        /// Database URL: sqlite://FILE or postgres://…
        #[arg(
            long,
            env = "MAPPER_DATABASE_URL",
            default_value = "sqlite://mapper.db"
        )]
        database: String,
        /// Snapshots delivered at once (each a different customer)
        #[arg(long, env = "MAPPER_WORKERS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
    },
    /// Manage connections (tenants: one GHL location with its source
    /// accounts) stored in the database, their values encrypted with MAPPER_SECRET_KEY.
    Connection {
        #[command(subcommand)]
        action: connection::ConnectionAction,
    },
    /// Receive webhooks: verify, store durably in the inbox, acknowledge.
    Serve {
        /// Mapping folder
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
        /// Address to listen on
        #[arg(long, env = "MAPPER_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
        listen: std::net::SocketAddr,
        /// Database URL: sqlite://FILE (created) or postgres://…
        #[arg(
            long,
            env = "MAPPER_DATABASE_URL",
            default_value = "sqlite://mapper.db"
        )]
        database: crate::app::DatabaseUrl,
        /// Events delivered at once; one customer's events always go one at a time, in order
        #[arg(long, env = "MAPPER_WORKERS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
        /// Hold writes to coalescing targets (Sticky Cards) this long, merged per customer: 0s sends each at once [default: each target's `coalesce.window`, 5m for Sticky Cards]
        #[arg(long, env = "MAPPER_COALESCE_WINDOW", value_parser = parse_window)]
        coalesce_window: Option<std::time::Duration>,
        /// Log as JSON lines instead of text
        #[arg(long)]
        log_json: bool,
    },
}

/// `mapper schema …`.
#[derive(Subcommand)]
enum SchemaAction {
    /// Infer a payload JSON Schema from samples; with --merge, widen that
    /// schema with them (in place) and print what was added and removed.
    Infer {
        /// Sample webhook bodies (JSON, single-quoted JSON, or a form with a JSON field)
        #[arg(required = true)]
        samples: Vec<PathBuf>,
        /// An existing payload schema to widen
        #[arg(long, value_name = "SCHEMA")]
        merge: Option<PathBuf>,
    },
}

/// A duration for `--coalesce-window`, checked now rather than ignored later.
fn parse_window(text: &str) -> Result<std::time::Duration, String> {
    crate::config::compile::parse_duration(text)
        .ok_or_else(|| format!("`{text}` is not a duration: a number and a unit, e.g. 0s, 30s, 5m"))
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` resolved now (its first address).
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}` is not an address to listen on (e.g. 127.0.0.1:8080): {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// Runs the command line; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { paths, format } => check::run(&default_paths(paths), format),
        Command::Plan {
            source,
            payload,
            mappings,
        } => plan::run(&mappings, &source, &payload),
        Command::Test {
            paths,
            verbose,
            profile,
            update,
        } => test::run(&test::TestOptions {
            paths: &default_paths(paths),
            verbose,
            profiles: &profile,
            update,
        }),
        Command::Serve {
            mappings,
            listen,
            database,
            workers,
            coalesce_window,
            log_json,
        } => serve::run(serve::ServeOptions {
            mappings,
            listen,
            database,
            workers: usize::from(workers),
            coalesce_window,
            log_json,
        }),
        Command::Resync {
            target,
            from_mirror,
            import,
            format,
            source,
            run,
            force,
            relink,
            limit,
            mappings,
            database,
            workers,
        } => resync::run(resync::ResyncOptions {
            target: &target,
            from_mirror: from_mirror.as_deref(),
            import: import.as_deref(),
            format,
            source: source.as_deref(),
            run: run.as_deref(),
            force,
            relink,
            limit,
            mappings: &mappings,
            database: &database,
            workers: usize::from(workers),
        }),
        Command::Status {
            database,
            connection,
            format,
        } => ops::status(&database, connection.as_deref(), format),
        Command::Log {
            database,
            event,
            customer,
            connection,
            format,
        } => ops::log(
            &database,
            event,
            customer.as_deref(),
            connection.as_deref(),
            format,
        ),
        Command::Replay {
            database,
            id,
            source,
            event,
            since,
            state,
            connection,
            held,
        } => ops::replay(
            &database,
            crate::store::ReplayFilter {
                states: state,
                id,
                source,
                event_type: event,
                since_ms: since,
            },
            connection.as_deref(),
            held,
        ),
        Command::Demo {
            mappings,
            examples,
            database,
            listen,
            coalesce_window,
            keep_running,
        } => demo::run(demo::DemoOptions {
            mappings,
            examples,
            database,
            listen,
            coalesce_window,
            keep_running,
        }),
        Command::Schema { action: None } => {
            print!("{}", crate::schema::schema_json());
            ExitCode::SUCCESS
        }
        Command::Schema {
            action: Some(SchemaAction::Infer { samples, merge }),
        } => new::run_infer(&samples, merge.as_deref()),
        Command::Explain { code } => explain::run(&code),
        Command::Connection { action } => connection::run(action),
        Command::New {
            source,
            event,
            from,
            target,
            mappings,
            event_type,
            force,
        } => new::run_new(&new::NewOptions {
            source: &source,
            event: &event,
            samples: &from,
            target: &target,
            mappings: &mappings,
            event_type: event_type.as_deref(),
            force,
        }),
    }
}

fn default_paths(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if paths.is_empty() {
        vec![PathBuf::from("mappings")]
    } else {
        paths
    }
}

/// The mapping folder a path belongs to: the path itself when it is a folder,
/// else the nearest ancestor holding `mapper.yaml`, else the file's folder.
pub(crate) fn set_root(path: &std::path::Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.join("mapper.yaml").is_file() {
            return d.to_path_buf();
        }
        dir = d.parent();
    }
    path.parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Whether two paths name the same file.
pub(crate) fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Runs an async command on a multi-threaded runtime; exit 1 when none can start.
pub(crate) fn block_on<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(future),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Opens the database for an operator command, printing why it cannot.
pub(crate) async fn open_store(database: &str) -> Option<crate::store::Store> {
    match crate::store::Store::open(database).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}
