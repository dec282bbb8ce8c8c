//! `mapper connection …`: the tenants of a deployment (see
//! [`crate::store::connections`]). Exit 0 on success, 1 when the database
//! fails, 2 on a usage error (an unknown connection or variable, a location
//! another connection holds, no `MAPPER_SECRET_KEY` for a value).

use super::Format;
use crate::program::Program;
use crate::secrets::{SecretKey, is_secret_name};
use crate::store::connections::{Connection, ConnectionError, LOCATION_VARIABLE, valid_name};
use clap::Subcommand;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `mapper connection …`.
#[derive(Subcommand)]
pub enum ConnectionAction {
    /// Add a connection with values for variables the mappings' profiles declare.
    Add {
        /// Its name: letters, digits, `-`, `_` (it appears in webhook URLs)
        name: String,
        /// A variable and its value (repeatable; several may follow one --set)
        #[arg(long = "set", value_name = "VAR=VALUE", num_args = 1.., value_parser = parse_assignment)]
        set: Vec<(String, String)>,
        #[command(flatten)]
        database: DatabaseArg,
        /// Mapping folder whose source and target profiles declare the variables
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
    },
    /// Set (add or replace) variables of a connection; the others are kept.
    Set {
        /// The connection
        name: String,
        /// VAR=VALUE pairs
        #[arg(value_name = "VAR=VALUE", required = true, value_parser = parse_assignment)]
        assignments: Vec<(String, String)>,
        #[command(flatten)]
        database: DatabaseArg,
        /// Mapping folder whose source and target profiles declare the variables
        #[arg(long, env = "MAPPER_MAPPINGS", default_value = "mappings")]
        mappings: PathBuf,
    },
    /// List connections; secret values are shown as ***.
    List {
        #[command(flatten)]
        database: DatabaseArg,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Disable a connection: its events are kept, not delivered.
    Disable {
        /// The connection
        name: String,
        /// Why (shown by `connection list`)
        #[arg(long, default_value = "disabled by an operator")]
        reason: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Enable a disabled connection.
    Enable {
        /// The connection
        name: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
    /// Remove a connection and its secrets (its events and logs stay).
    Remove {
        /// The connection
        name: String,
        #[command(flatten)]
        database: DatabaseArg,
    },
}

/// `--database`, as every operator command reads it.
#[derive(clap::Args)]
pub struct DatabaseArg {
    /// Database URL: sqlite://FILE or postgres://…
    #[arg(
        long,
        env = "MAPPER_DATABASE_URL",
        default_value = "sqlite://mapper.db"
    )]
    database: String,
}

/// `VAR=VALUE`, both parts non-empty.
fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((var, value)) if !var.trim().is_empty() && !value.is_empty() => {
            Ok((var.trim().to_string(), value.to_string()))
        }
        Some((var, _)) if !var.trim().is_empty() => Err(format!(
            "`{text}` has no value: write {var}=VALUE (a variable cannot be stored empty)"
        )),
        _ => Err(format!(
            "`{text}` is not VAR=VALUE (e.g. GHL_LOCATION_ID=ve9EPM428h8vShlRW1KT)"
        )),
    }
}

/// Runs one `mapper connection` action.
pub fn run(action: ConnectionAction) -> ExitCode {
    super::block_on(async move {
        match action {
            ConnectionAction::Add {
                name,
                set,
                database,
                mappings,
            } => add(&name, set, &database.database, &mappings).await,
            ConnectionAction::Set {
                name,
                assignments,
                database,
                mappings,
            } => set(&name, assignments, &database.database, &mappings).await,
            ConnectionAction::List { database, format } => list(&database.database, format).await,
            ConnectionAction::Disable {
                name,
                reason,
                database,
            } => {
                let Some(store) = super::open_store(&database.database).await else {
                    return ExitCode::from(1);
                };
                done(
                    store.disable_connection(&name, &reason).await,
                    &name,
                    &format!("disabled connection {name}: {reason}"),
                )
            }
            ConnectionAction::Enable { name, database } => {
                let Some(store) = super::open_store(&database.database).await else {
                    return ExitCode::from(1);
                };
                done(
                    store.enable_connection(&name).await,
                    &name,
                    &format!("enabled connection {name}"),
                )
            }
            ConnectionAction::Remove { name, database } => {
                let Some(store) = super::open_store(&database.database).await else {
                    return ExitCode::from(1);
                };
                done(
                    store.remove_connection(&name).await,
                    &name,
                    &format!("removed connection {name}"),
                )
            }
        }
    })
}

/// The exit of enable, disable and remove.
fn done(result: Result<bool, crate::store::StoreError>, name: &str, message: &str) -> ExitCode {
    match result {
        Ok(true) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Ok(false) => usage(&ConnectionError::NotFound(name.to_string()).to_string()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// The exit for a refused or failed change: 1 for the database, else 2.
fn refused(e: &ConnectionError) -> ExitCode {
    match e {
        ConnectionError::Store(_) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        _ => usage(&e.to_string()),
    }
}

/// Every variable the active source and target profiles of `program`
/// declare: the targets' `env:` and the sources' verification secrets and
/// key overrides.
pub fn declared_variables(program: &Program) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for target in program.targets.values() {
        names.extend(target.env.keys().cloned());
    }
    for source in program.sources.values() {
        let v = &source.verify;
        for var in [&v.secret_env, &v.public_key_env, &v.rsa_public_key_env]
            .into_iter()
            .flatten()
        {
            names.insert(var.clone());
        }
    }
    names
}

/// Checks a command's variables against the mapping folder and reads the
/// key; the exit code when something is refused.
fn prepare(
    name: &str,
    assignments: Vec<(String, String)>,
    mappings: &Path,
    command: &str,
) -> Result<(BTreeMap<String, String>, Option<SecretKey>), ExitCode> {
    if !valid_name(name) {
        return Err(usage(
            &ConnectionError::BadName(name.to_string()).to_string(),
        ));
    }
    let Some(program) = super::serve::load_program(mappings, command) else {
        return Err(usage(&format!(
            "the variables are checked against the mapping folder {}: fix it, or name another with --mappings",
            mappings.display()
        )));
    };
    let declared = declared_variables(&program);
    let vars: BTreeMap<String, String> = assignments.into_iter().collect();
    if let Some(unknown) = vars.keys().find(|v| !declared.contains(*v)) {
        let close = declared
            .iter()
            .filter(|d| strsim::jaro_winkler(d, unknown) > 0.85)
            .map(String::as_str)
            .collect::<Vec<_>>();
        let hint = if close.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {}?)", close.join(", "))
        };
        return Err(usage(&format!(
            "no source or target profile of {} declares the variable {unknown}{hint}; declared: {}",
            mappings.display(),
            declared.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let key = match SecretKey::from_env() {
        Ok(key) => key,
        Err(e) => return Err(usage(&e.to_string())),
    };
    if key.is_none()
        && let Some(variable) = vars.keys().next()
    {
        return Err(refused(&ConnectionError::NoKey {
            variable: variable.clone(),
        }));
    }
    Ok((vars, key))
}

async fn add(
    name: &str,
    assignments: Vec<(String, String)>,
    database: &str,
    mappings: &Path,
) -> ExitCode {
    let (vars, key) = match prepare(name, assignments, mappings, "connection add") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(store) = super::open_store(database).await else {
        return ExitCode::from(1);
    };
    match store.add_connection(name, &vars, key.as_ref()).await {
        Ok(c) => {
            println!(
                "added connection {name} ({} variable(s){})",
                c.sealed_vars.len(),
                names_suffix(&c)
            );
            ExitCode::SUCCESS
        }
        Err(e) => refused(&e),
    }
}

async fn set(
    name: &str,
    assignments: Vec<(String, String)>,
    database: &str,
    mappings: &Path,
) -> ExitCode {
    let (vars, key) = match prepare(name, assignments, mappings, "connection set") {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(store) = super::open_store(database).await else {
        return ExitCode::from(1);
    };
    match store.set_connection_vars(name, &vars, key.as_ref()).await {
        Ok(_) => {
            println!(
                "updated connection {name}: {}",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => refused(&e),
    }
}

fn names_suffix(c: &Connection) -> String {
    if c.sealed_vars.is_empty() {
        String::new()
    } else {
        format!(": {}", c.var_names().collect::<Vec<_>>().join(", "))
    }
}

/// A connection's variables as `list` shows them: secrets as `***`; other
/// values in clear when the key opens them (`GHL_LOCATION_ID` always).
fn shown_vars(
    c: &Connection,
    key: Option<&SecretKey>,
) -> Result<BTreeMap<String, String>, crate::secrets::SecretError> {
    let opened = match key {
        Some(key) => Some(c.vars(key)?),
        None => None,
    };
    Ok(c.var_names()
        .map(|var| {
            let value = if is_secret_name(var) {
                "***".to_string()
            } else if var == LOCATION_VARIABLE
                && let Some(l) = &c.location_id
            {
                l.clone()
            } else {
                opened
                    .as_ref()
                    .and_then(|o| o.get(var).cloned())
                    .unwrap_or_else(|| "***".to_string())
            };
            (var.to_string(), value)
        })
        .collect())
}

async fn list(database: &str, format: Format) -> ExitCode {
    let key = match SecretKey::from_env() {
        Ok(key) => key,
        Err(e) => return usage(&e.to_string()),
    };
    let Some(store) = super::open_store(database).await else {
        return ExitCode::from(1);
    };
    let connections = match store.connections().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut rows = Vec::new();
    for c in &connections {
        match shown_vars(c, key.as_ref()) {
            Ok(vars) => rows.push((c, vars)),
            Err(e) => return usage(&format!("connection {}: {e}", c.name)),
        }
    }
    match format {
        Format::Json => {
            let out: Vec<serde_json::Value> = rows
                .iter()
                .map(|(c, vars)| {
                    serde_json::json!({
                        "name": c.name,
                        "enabled": c.enabled,
                        "disabled_reason": c.disabled_reason,
                        "location_id": c.location_id,
                        "vars": vars,
                        "oauth": c.sealed_tokens.as_ref().map(|t| serde_json::json!({
                            "access_expires_at": crate::store::format_ms(t.access_expires_at),
                            "token_version": c.token_version,
                        })),
                        "created_at": crate::store::format_ms(c.created_at),
                        "updated_at": crate::store::format_ms(c.updated_at),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Text => {
            if rows.is_empty() {
                println!(
                    "no connections: the environment is the connection `default` (add one with `mapper connection add NAME --set VAR=VALUE…`)"
                );
            }
            for (c, vars) in &rows {
                let state = if c.enabled {
                    "enabled".to_string()
                } else {
                    format!(
                        "disabled: {}",
                        c.disabled_reason.as_deref().unwrap_or("no reason given")
                    )
                };
                println!("{} ({state})", c.name);
                for (var, value) in vars {
                    println!("  {var}={value}");
                }
                if let Some(t) = &c.sealed_tokens {
                    println!(
                        "  oauth: access token until {} (rotation {})",
                        crate::store::format_ms(t.access_expires_at),
                        c.token_version
                    );
                }
            }
        }
    }
    if key.is_none() && rows.iter().any(|(c, _)| c.sealed_vars.len() > 1) {
        eprintln!(
            "note: MAPPER_SECRET_KEY is not set, so values other than GHL_LOCATION_ID are shown as ***"
        );
    }
    ExitCode::SUCCESS
}
