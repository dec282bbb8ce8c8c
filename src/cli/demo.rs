//! `mapper demo`: the whole pipeline on a fresh machine, with no credentials.
//!
//! Starts the GHL and Sticky Cards simulators, runs `serve` on an embedded
//! SQLite file against them, posts every shipped example payload the way its
//! platform would (tokens, SlickText's form body and HMAC-MD5, GHL's Ed25519
//! signature), waits until the worker has delivered them, and prints what the
//! simulated GHL location and Sticky Cards account now hold.

use super::serve::{init_logging, load_program, shutdown_signal};
use crate::app::{App, AppConfig, DatabaseUrl, Env};
use crate::config::model::VerifyMethod;
use crate::program::Program;
use crate::sandbox::ghl::{GhlConfig, GhlSandbox};
use crate::sandbox::{StickyCardsConfig, StickyCardsSandbox};
use crate::store::Store;
use base64::Engine;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `mapper demo`, checked and typed by the command line.
pub struct DemoOptions {
    pub mappings: PathBuf,
    pub examples: PathBuf,
    /// `None`: a fresh `mapper-demo.db` in the current folder.
    pub database: Option<DatabaseUrl>,
    pub listen: SocketAddr,
    /// How long writes to Sticky Cards are held to merge.
    pub coalesce_window: Duration,
    /// Keep serving after the summary, until Ctrl-C.
    pub keep_running: bool,
}

const TOKEN: &str = "demo-token";
const SLICKTEXT_SECRET: &str = "demo-slicktext-secret";
/// The demo's own file, replaced on each run so that a second run does
/// not find every example already stored (and answer `200 duplicate`).
const DEMO_DATABASE: &str = "mapper-demo.db";
/// How long the demo waits for the worker to deliver what it posted.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

pub fn run(opts: DemoOptions) -> ExitCode {
    init_logging(false);
    super::block_on(demo(opts))
}

/// A usage error: the message, and exit 2.
fn usage(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

async fn demo(opts: DemoOptions) -> ExitCode {
    if !opts.mappings.is_dir() {
        return usage(format!(
            "the mapping folder {} does not exist (--mappings)",
            opts.mappings.display()
        ));
    }
    if !opts.examples.is_dir() {
        return usage(format!(
            "the folder of example payloads {} does not exist (--examples)",
            opts.examples.display()
        ));
    }
    let Some(program) = load_program(&opts.mappings, "demo") else {
        return ExitCode::from(1);
    };
    let (ghl, sc) = match (
        GhlSandbox::start(GhlConfig::default()).await,
        StickyCardsSandbox::start(StickyCardsConfig::default()).await,
    ) {
        (Ok(g), Ok(s)) => (g, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot start the simulators: {e}");
            return ExitCode::from(1);
        }
    };
    // A key of our own stands in for GHL's webhook signing key.
    let signing = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let pem = {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        match signing
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot encode the demo signing key: {e}");
                return ExitCode::from(1);
            }
        }
    };
    let (database, fresh) = match opts.database.clone() {
        Some(url) => (url, false),
        None => match fresh_database() {
            Ok(url) => (url, true),
            Err(e) => {
                eprintln!("error: cannot replace {DEMO_DATABASE} with a fresh one: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in [
        "STICKYCARDS_WEBHOOK_TOKEN",
        "SIGNALMIND_WEBHOOK_TOKEN",
        "GHL_WORKFLOW_WEBHOOK_TOKEN",
    ] {
        env.insert(var.into(), TOKEN.into());
    }
    env.insert("SLICKTEXT_WEBHOOK_SECRET".into(), SLICKTEXT_SECRET.into());
    env.insert("GHL_WEBHOOK_PUBLIC_KEY".into(), pem);
    env.insert("GHL_API_BASE_URL".into(), ghl.base_url());
    env.insert("GHL_API_TOKEN".into(), ghl.token().to_string());
    env.insert("GHL_LOCATION_ID".into(), ghl.location_id().to_string());
    env.insert("STICKYCARDS_API_BASE_URL".into(), sc.base_url());
    env.insert("STICKYCARDS_API_KEY".into(), sc.api_key().to_string());
    let webhooks = webhook_urls(&program);
    let mut config = AppConfig::serve(
        program,
        database.clone(),
        opts.listen,
        // Edited mappings apply at once under --keep-running, as with `serve`.
        Some(opts.mappings.clone()),
        Env::from_map(env),
    );
    // Writes to Sticky Cards are held and merged per customer (5 minutes in
    // production); the demo holds them briefly, long enough to merge a burst.
    config.coalesce_window = Some(opts.coalesce_window);
    // The console is on in the demo: the operator's token when set, else one of its own.
    let ui_token = std::env::var(crate::server::ui::TOKEN_VARIABLE)
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(crate::server::ui::random_token);
    config.ui_token = ui_token.clone();
    let running = match App::start(config).await {
        Ok(r) => r,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(1);
        }
    };
    let Some(base) = running.url() else {
        eprintln!("error: the demo's receiver did not start");
        return ExitCode::from(1);
    };
    println!(
        "mapper demo: serving on {base} with the mappings of {} (reloaded when they change)",
        opts.mappings.display()
    );
    println!(
        "database: {database}{}",
        if fresh { " (fresh for this run)" } else { "" }
    );
    if let Some(token) = &ui_token {
        println!("console: {base}/ui (log in with the token {token})");
    }
    println!("\nwebhook URLs (demo secrets):");
    for (source, how) in &webhooks {
        println!("  {source:<13} POST {base}/webhooks/{source}{how}");
    }
    println!("\nsimulators:");
    println!(
        "  GHL           {}  location {}, token {} (Authorization: Bearer …, Version: 2021-07-28)",
        ghl.base_url(),
        ghl.location_id(),
        ghl.token()
    );
    println!(
        "  Sticky Cards  {}  API key {} (Authorization: Bearer … on the seed API, X-API-Key on Boomerangme v2)",
        sc.base_url(),
        sc.api_key()
    );
    println!();

    let posts = post_examples(&opts.examples, &base, &signing).await;
    let drained = drain(&running.store).await;
    let outcome = Outcome::read(&running.store, &posts).await;
    let accepted = posts.iter().filter(|p| p.status == Some(202)).count();
    let duplicate = posts.iter().filter(|p| p.status == Some(200)).count();
    println!(
        "\nposted {} example webhooks: {accepted} accepted, {duplicate} duplicate; inbox:",
        posts.len()
    );
    if let Ok(counts) = running.store.counts().await {
        for c in counts {
            println!(
                "  {:<13} {:<36} {:<10} {}",
                c.source, c.event_type, c.state, c.count
            );
        }
    }
    print_ghl(&ghl);
    print_stickycards(&sc);
    let failed = outcome.report(drained);
    if opts.keep_running {
        println!("\nstill serving on {base}; Ctrl-C stops");
        if ui_token.is_some() {
            println!("console: {base}/ui");
        }
        shutdown_signal().await;
    }
    running.shutdown().await;
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Removes the previous run's `mapper-demo.db` (and SQLite's side files).
fn fresh_database() -> std::io::Result<DatabaseUrl> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        match std::fs::remove_file(format!("{DEMO_DATABASE}{suffix}")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(DatabaseUrl::sqlite(Path::new(DEMO_DATABASE)))
}

/// Each source that takes webhooks, with how the demo's secret goes along.
fn webhook_urls(program: &Program) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, source) in &program.sources {
        let verify = &source.verify;
        let how = match verify.method {
            VerifyMethod::Internal => continue,
            VerifyMethod::None => String::new(),
            VerifyMethod::Token => match (&verify.query, &verify.header) {
                (Some(q), _) => format!("?{q}={TOKEN}"),
                (None, Some(h)) => format!("  ({h}: {TOKEN})"),
                (None, None) => String::new(),
            },
            VerifyMethod::Hmac => format!(
                "  ({}: hex HMAC of {} with the secret {SLICKTEXT_SECRET})",
                verify.header.as_deref().unwrap_or("signature"),
                match &verify.signed {
                    Some(crate::config::model::SignedPart::FormField(f)) => {
                        format!("the `{f}` form field")
                    }
                    _ => "the body".to_string(),
                }
            ),
            VerifyMethod::StandardWebhooks => "  (Standard Webhooks signature)".to_string(),
            VerifyMethod::Ghl => {
                "  (x-ghl-signature: Ed25519, signed with the demo's own key; its public half is the demo's GHL_WEBHOOK_PUBLIC_KEY)"
                    .to_string()
            }
        };
        out.push((name.clone(), how));
    }
    out
}

/// One example posted, and the answer.
struct Posted {
    source: String,
    file: String,
    /// The status; `None` when the request itself failed.
    status: Option<u16>,
    error: Option<String>,
}

/// Posts every example the way its platform would, printing each answer.
async fn post_examples(
    examples: &Path,
    base: &str,
    signing: &ed25519_dalek::SigningKey,
) -> Vec<Posted> {
    let http = reqwest::Client::new();
    let mut posts = Vec::new();
    for (source, file) in examples_in(examples) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let raw = match std::fs::read(&file) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("  cannot read {}: {e}", file.display());
                posts.push(Posted {
                    source,
                    file: name,
                    status: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let request = match source.as_str() {
            "slicktext" => {
                // SlickText posts a form with the JSON in `data`, signed with HMAC-MD5.
                let data = match file.extension().and_then(|e| e.to_str()) {
                    Some("form") => String::from_utf8_lossy(&raw)
                        .trim()
                        .strip_prefix("data=")
                        .map(|d| {
                            urlencoding::decode(&d.replace('+', " "))
                                .map(|c| c.into_owned())
                                .unwrap_or_default()
                        })
                        .unwrap_or_default(),
                    _ => String::from_utf8_lossy(&raw).into_owned(),
                };
                let signature = hex::encode(crate::server::verify::hmac_md5(
                    SLICKTEXT_SECRET.as_bytes(),
                    data.as_bytes(),
                ));
                http.post(format!("{base}/webhooks/slicktext"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("X-Slicktext-Signature", signature)
                    .body(format!("data={}", urlencoding::encode(&data)))
            }
            "ghl" => {
                let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
                v["timestamp"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
                let body = serde_json::to_vec(&v).unwrap_or_default();
                use ed25519_dalek::Signer;
                let sig = base64::engine::general_purpose::STANDARD
                    .encode(signing.sign(&body).to_bytes());
                http.post(format!("{base}/webhooks/ghl"))
                    .header("content-type", "application/json")
                    .header("x-ghl-signature", sig)
                    .body(body)
            }
            other => http
                .post(format!("{base}/webhooks/{other}?token={TOKEN}"))
                .header("content-type", "application/json")
                .body(raw),
        };
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                println!("  {status} {source:<13} {name}");
                let error = if r.status().is_success() {
                    None
                } else {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    Some(body["message"].as_str().unwrap_or("refused").to_string())
                };
                posts.push(Posted {
                    source,
                    file: name,
                    status: Some(status),
                    error,
                });
            }
            Err(e) => {
                eprintln!("  failed to post {}: {e}", file.display());
                posts.push(Posted {
                    source,
                    file: name,
                    status: None,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    posts
}

/// Waits until no event is waiting or being delivered and no write is held;
/// false when that did not happen within `DRAIN_LIMIT`.
async fn drain(store: &Store) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < DRAIN_LIMIT {
        let busy = store
            .counts()
            .await
            .map(|c| {
                c.iter().any(|c| {
                    c.state == "received" || c.state == "retrying" || c.state == "processing"
                })
            })
            .unwrap_or(true);
        let holding = store
            .pending_writes()
            .await
            .map(|w| w.iter().any(|w| w.state != "failed"))
            .unwrap_or(true);
        if !busy && !holding {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What did not reach its target.
struct Outcome {
    refused: Vec<String>,
    delivered: i64,
    unmapped: i64,
    /// The latest errors of dead events (the count may be larger).
    dead: Vec<String>,
    dead_count: i64,
    pending: i64,
    held_failed: Vec<String>,
}

impl Outcome {
    async fn read(store: &Store, posts: &[Posted]) -> Outcome {
        let refused = posts
            .iter()
            .filter(|p| !p.status.is_some_and(|s| (200..300).contains(&s)))
            .map(|p| {
                format!(
                    "{} {}: {}",
                    p.source,
                    p.file,
                    match (p.status, &p.error) {
                        (Some(s), Some(e)) => format!("answered {s}: {e}"),
                        (Some(s), None) => format!("answered {s}"),
                        (None, Some(e)) => e.clone(),
                        (None, None) => "not sent".to_string(),
                    }
                )
            })
            .collect();
        let counts = store.counts().await.unwrap_or_default();
        let count = |states: &[&str]| -> i64 {
            counts
                .iter()
                .filter(|c| states.contains(&c.state.as_str()))
                .map(|c| c.count)
                .sum()
        };
        let dead = store
            .last_errors(100)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, _, _, state, _)| state == "dead")
            .map(|(id, source, event, _, error)| {
                format!("{source} {event} (delivery {id}): {error}")
            })
            .collect::<Vec<_>>();
        let dead_count = count(&["dead"]);
        let held_failed = store
            .pending_writes()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|w| w.state == "failed")
            .map(|w| {
                format!(
                    "held write {} to {} {}: {}",
                    w.op,
                    w.target,
                    w.record_id,
                    w.last_error.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        Outcome {
            refused,
            delivered: count(&["delivered", "echo", "stale"]),
            unmapped: count(&["unmapped"]),
            dead,
            dead_count,
            pending: count(&["received", "retrying", "processing"]),
            held_failed,
        }
    }

    /// Prints the outcome; true when something did not reach its target.
    fn report(&self, drained: bool) -> bool {
        println!(
            "\ndelivered {}, unmapped {} (no mapping handles them; kept for `mapper replay`), dead {}, still pending {}",
            self.delivered, self.unmapped, self.dead_count, self.pending
        );
        let failed = !self.refused.is_empty()
            || self.dead_count > 0
            || !self.held_failed.is_empty()
            || self.pending > 0
            || !drained;
        if failed {
            eprintln!("error: not everything the demo posted reached its target:");
            for line in self
                .refused
                .iter()
                .chain(&self.dead)
                .chain(&self.held_failed)
            {
                eprintln!("  {line}");
            }
            if self.pending > 0 || !drained {
                eprintln!(
                    "  {} event(s) still waiting after {} s",
                    self.pending,
                    DRAIN_LIMIT.as_secs()
                );
            }
        }
        failed
    }
}

/// Example payloads per source, Sticky Cards lifecycle first.
fn examples_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for source in [
        "stickycards",
        "slicktext",
        "signalmind",
        "ghl",
        "ghl-workflow",
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(source)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        let rank = |p: &PathBuf| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let order = [
                "CustomerCreatedEvent",
                "CardIssuedEvent",
                "CardInstalledEvent",
                "LoyaltyEventCreated.joined",
                "UserSignup",
                "ContactCreate",
            ];
            order
                .iter()
                .position(|o| name.starts_with(o))
                .unwrap_or(order.len())
        };
        files.sort_by(|a, b| (rank(a), a).cmp(&(rank(b), b)));
        for f in files {
            let json_like = matches!(
                f.extension().and_then(|e| e.to_str()),
                Some("json") | Some("txt") | Some("form")
            );
            // The .form body of SlickText repeats a .json example; post one of them.
            let duplicate_form =
                source == "slicktext" && f.extension().and_then(|e| e.to_str()) == Some("form");
            if json_like && !duplicate_form {
                out.push((source.to_string(), f));
            }
        }
    }
    out
}

fn print_ghl(ghl: &GhlSandbox) {
    let fields: BTreeMap<String, String> = ghl
        .custom_fields()
        .into_iter()
        .map(|f| (f.id, f.field_key.trim_start_matches("contact.").to_string()))
        .collect();
    let mut contacts = ghl.contacts();
    // Workers deliver different customers in parallel: creation order varies from run to run.
    contacts.sort_by(|a, b| {
        (&a.first_name, &a.last_name, &a.email).cmp(&(&b.first_name, &b.last_name, &b.email))
    });
    println!(
        "\nGHL location {}: {} contacts",
        ghl.location_id(),
        contacts.len()
    );
    for c in &contacts {
        let name = [c.first_name.as_deref(), c.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "- {} {} <{}> {}",
            if name.is_empty() { "(no name)" } else { &name },
            c.phone.as_deref().unwrap_or("-"),
            c.email.as_deref().unwrap_or("-"),
            if c.tags.is_empty() {
                String::new()
            } else {
                format!("tags: {}", c.tags.join(", "))
            }
        );
        for f in &c.custom_fields {
            println!(
                "    {} = {}",
                fields.get(&f.id).map(String::as_str).unwrap_or(&f.id),
                plain(&f.value)
            );
        }
        for n in ghl.notes_of(&c.id) {
            println!("    note: {}", n.body.lines().next().unwrap_or(""));
        }
        for o in ghl.opportunities().iter().filter(|o| o.contact_id == c.id) {
            match o.monetary_value {
                Some(value) => println!("    opportunity: {} ({}, {value})", o.name, o.status),
                None => println!("    opportunity: {} ({})", o.name, o.status),
            }
        }
    }
}

fn print_stickycards(sc: &StickyCardsSandbox) {
    let customers = sc.customers();
    println!("\nSticky Cards: {} customers", customers.len());
    for c in &customers {
        println!(
            "- {} {} <{}> segments: [{}]",
            c.first_name.as_deref().unwrap_or("(no name)"),
            c.phone.as_deref().unwrap_or("-"),
            c.email.as_deref().unwrap_or("-"),
            c.segments.join(", ")
        );
        for card in sc
            .cards()
            .iter()
            .filter(|k| k.customer_id.as_deref() == Some(c.id.as_str()))
        {
            println!("    card {} balance {}", card.id, card.balance);
        }
        for p in sc
            .pushes()
            .iter()
            .filter(|p| p.customer_id.as_deref() == Some(c.id.as_str()))
        {
            println!("    push: {}", p.message);
        }
    }
}

/// A value as a person reads it: text without JSON's quotes.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
