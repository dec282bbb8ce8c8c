//! `mapper demo`: the whole pipeline on a fresh machine, with no credentials.
//!
//! Starts the GHL and Sticky Cards simulators, runs `serve` on an embedded
//! SQLite file against them, posts every shipped example payload the way its
//! platform would (tokens, SlickText's form body and HMAC-MD5, GHL's Ed25519
//! signature), waits until the worker has delivered them, and prints what the
//! simulated GHL location and Sticky Cards account now hold.

use super::serve::{init_logging, load_program, start};
use crate::sandbox::ghl::{GhlConfig, GhlSandbox};
use crate::sandbox::{StickyCardsConfig, StickyCardsSandbox};
use base64::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Options of `mapper demo`.
pub struct DemoOptions<'a> {
    pub mappings: &'a Path,
    pub examples: &'a Path,
    pub database: &'a str,
    pub listen: &'a str,
    /// Keep serving after the summary, until Ctrl-C.
    pub keep_running: bool,
}

const TOKEN: &str = "demo-token";
const SLICKTEXT_SECRET: &str = "demo-slicktext-secret";

pub fn run(opts: DemoOptions) -> ExitCode {
    init_logging(false);
    super::block_on(demo(opts))
}

async fn demo(opts: DemoOptions<'_>) -> ExitCode {
    let Some(program) = load_program(opts.mappings, "demo") else {
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
    // Writes to Sticky Cards are held and merged per customer (5 minutes in
    // production); the demo holds them 2 s, long enough to merge a burst.
    env.insert(
        super::serve::COALESCE_WINDOW_ENV.into(),
        std::env::var(super::serve::COALESCE_WINDOW_ENV).unwrap_or_else(|_| "2s".into()),
    );
    let env = Arc::new(env);
    let lookup = env.clone();
    let running = match start(
        program,
        None,
        opts.database,
        opts.listen,
        Arc::new(move |name: &str| lookup.get(name).cloned()),
        crate::worker::WorkerConfig::default(),
    )
    .await
    {
        Ok(r) => r,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(1);
        }
    };
    let base = format!("http://{}", running.address);
    println!(
        "mapper demo: serving on {base} (GHL simulator {}, Sticky Cards simulator {})",
        ghl.base_url(),
        sc.base_url()
    );

    let http = reqwest::Client::new();
    let mut sent = 0;
    for (source, file) in examples(opts.examples) {
        let Ok(raw) = std::fs::read(&file) else {
            continue;
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
                sent += 1;
                let status = r.status().as_u16();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
                println!("  {status} {source:<13} {name}");
            }
            Err(e) => eprintln!("  failed to post {}: {e}", file.display()),
        }
    }
    // Let the worker drain the inbox.
    for _ in 0..300 {
        let busy = running
            .store
            .counts()
            .await
            .map(|c| {
                c.iter().any(|c| {
                    c.state == "received" || c.state == "retrying" || c.state == "processing"
                })
            })
            .unwrap_or(false);
        let holding = running
            .store
            .pending_writes()
            .await
            .map(|w| w.iter().any(|w| w.state != "failed"))
            .unwrap_or(false);
        if !busy && !holding {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("\nposted {sent} example webhooks; inbox:");
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
    if opts.keep_running {
        println!("\nstill serving on {base}; Ctrl-C stops");
        let _ = tokio::signal::ctrl_c().await;
    }
    running.stop().await;
    ExitCode::SUCCESS
}

/// Example payloads per source, Sticky Cards lifecycle first.
fn examples(dir: &Path) -> Vec<(String, PathBuf)> {
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
                f.value
            );
        }
        for n in ghl.notes_of(&c.id) {
            println!("    note: {}", n.body.lines().next().unwrap_or(""));
        }
        for o in ghl.opportunities().iter().filter(|o| o.contact_id == c.id) {
            println!(
                "    opportunity: {} ({}, {:?})",
                o.name, o.status, o.monetary_value
            );
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
