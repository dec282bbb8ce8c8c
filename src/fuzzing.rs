//! Entry points of the fuzz targets (`fuzz/`), also replayed on stable by
//! `tests/fuzz_corpus.rs` over the committed corpus. Not an API: each
//! function takes the fuzzer's raw bytes, runs one of the paths hostile
//! input reaches, and panics when a property that must hold for *any*
//! input is broken (the fuzzer reports a panic as a crash). Errors the
//! code reports properly (a diagnostic, a 4xx, a bad export line) are
//! fine; a panic, a hang or a broken property is not.
//!
//! The targets and the layout of their inputs are described in
//! `fuzz/README.md`.

use crate::config::compile::{check_dir, compile_dir};
use crate::config::model::{BodyFormat, VerifyMethod};
use crate::engine::decode;
use crate::engine::plan::PlanInput;
use crate::jsonpath::Selector;
use crate::program::Program;
use crate::server::verify::{Verifier, hmac_md5};
use crate::server::{self, AppState};
use crate::store::{DEFAULT_CONNECTION, Inbox, Store};
use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The export reader is private to `mapper resync`; it is compiled here a
// second time from the same file rather than widening the CLI's modules
// (`cli::resync` is private to `cli`), hence the lint's allowance.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "cli/resync/import.rs"]
mod import;

/// The webhook secrets the receive target signs with (the test suite's).
pub const SECRETS: &[(&str, &str)] = &[
    ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token"),
    ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token"),
    ("SLICKTEXT_WEBHOOK_SECRET", "st-secret"),
    ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token"),
];

/// The Ed25519 key the receive target signs GHL webhooks with; its public
/// half replaces GHL's published key (`GHL_WEBHOOK_PUBLIC_KEY`).
pub fn ghl_test_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

/// The PEM of [`ghl_test_key`]'s public half.
pub fn ghl_test_public_pem() -> String {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    ghl_test_key()
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_default()
}

fn secret(name: &str) -> &'static str {
    SECRETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or("")
}

fn env_of(name: &str) -> Option<String> {
    if name == "GHL_WEBHOOK_PUBLIC_KEY" {
        return Some(ghl_test_public_pem());
    }
    SECRETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

fn compile(mappings: &Path) -> Program {
    let compiled = compile_dir(mappings);
    match compiled.program {
        Some(p) => p,
        None => panic!(
            "the mapping folder {} does not compile: {:?}",
            mappings.display(),
            compiled.diagnostics
        ),
    }
}

// ---------------------------------------------------------------------------
// 1. The loader and `check` on arbitrary YAML.

/// A copy of a mapping folder in a temporary directory, one of whose files
/// each input replaces before `check` runs on the folder.
pub struct CheckTarget {
    _dir: TempDir,
    root: PathBuf,
    files: Vec<(PathBuf, String)>,
}

impl CheckTarget {
    /// Copies the production files and tests of `mappings` (`schemas/` and
    /// `examples/` beside it are linked, as `schemas:` and `payload_file:`
    /// point there).
    pub fn new(mappings: &Path) -> CheckTarget {
        let dir = TempDir::new();
        let root = dir.path().join("mappings");
        let mut files = Vec::new();
        copy_tree(mappings, &root, &mut files);
        let parent = mappings.parent().unwrap_or(Path::new("."));
        for linked in ["schemas", "examples"] {
            link(&parent.join(linked), &dir.path().join(linked));
        }
        files.sort();
        CheckTarget {
            _dir: dir,
            root,
            files,
        }
    }

    /// The first byte picks the file the rest replaces; `check` runs on the
    /// whole folder, and the file is put back.
    pub fn run(&self, data: &[u8]) {
        let Some((&pick, rest)) = data.split_first() else {
            return;
        };
        let (path, original) = &self.files[pick as usize % self.files.len()];
        let _ = std::fs::write(path, rest);
        let compiled = check_dir(&self.root);
        let _ = std::fs::write(path, original);
        // A folder that compiles has no error; one that does not names one.
        assert_eq!(
            compiled.program.is_some(),
            !compiled.has_errors(),
            "a program and errors at once, or neither: {:?}",
            compiled.diagnostics
        );
        for d in &compiled.diagnostics {
            // Rendering (the line and its caret) is what `check` prints: it
            // must not panic on any position either.
            let _ = d.render(compiled.texts.get(&d.file).map(String::as_str));
        }
    }
}

/// A directory of this process's own under the system's temporary one,
/// removed on drop (`tempfile` is only a dev-dependency of the crate).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mapper-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("cannot create {}: {e}", path.display());
        }
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> TempDir {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path, files: &mut Vec<(PathBuf, String)>) {
    let _ = std::fs::create_dir_all(to);
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for entry in entries.flatten() {
        let dest = to.join(entry.file_name());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            copy_tree(&entry.path(), &dest, files);
        } else if let Ok(text) = std::fs::read_to_string(entry.path()) {
            let _ = std::fs::write(&dest, &text);
            files.push((dest, text));
        }
    }
}

#[cfg(unix)]
fn link(from: &Path, to: &Path) {
    let _ = std::os::unix::fs::symlink(from, to);
}

#[cfg(not(unix))]
fn link(from: &Path, to: &Path) {
    let mut ignored = Vec::new();
    copy_tree(from, to, &mut ignored);
}

// ---------------------------------------------------------------------------
// 2. Selectors and templates on arbitrary JSON payloads.

/// The shipped mapping set, planning arbitrary payloads.
pub struct EvalTarget {
    program: Program,
    sources: Vec<String>,
}

impl EvalTarget {
    pub fn new(mappings: &Path) -> EvalTarget {
        let program = compile(mappings);
        let sources = program.sources.keys().cloned().collect();
        EvalTarget { program, sources }
    }

    /// Byte 0 picks the source; the rest is `SELECTOR \0 PAYLOAD` (a
    /// JSONPath run over the payload as well) or just the payload, decoded
    /// as the source decodes its bodies. Every mapping of the event runs
    /// against it, with the payload also as the customer's mirror.
    pub fn run(&self, data: &[u8]) {
        let Some((&pick, rest)) = data.split_first() else {
            return;
        };
        let source = &self.sources[pick as usize % self.sources.len()];
        let (selector, body) = match rest.iter().position(|&b| b == 0) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let Some(spec) = self.program.sources.get(source) else {
            return;
        };
        let Ok(payload) = decode::decode(body, &spec.body) else {
            return;
        };
        if let Some(text) = selector.and_then(|s| std::str::from_utf8(s).ok())
            && let Ok(sel) = Selector::parse(text)
        {
            let found = sel.query(&payload);
            // A singular path finds at most one value.
            if sel.is_singular() {
                assert!(found.len() <= 1, "singular {text} found {}", found.len());
            }
            let _ = sel.select(&payload);
        }
        let input = PlanInput {
            env: BTreeMap::new(),
            mask_secrets: true,
            known: Value::Null,
            previous: Some(payload.clone()),
        };
        let identified = self.program.identify(source, &payload);
        let planned = self.program.plan(source, &payload, &input);
        // `plan` identifies the event as the receiver does, with the same answer.
        match (&identified, &planned) {
            (Ok(event), Ok(plan)) => assert_eq!(event, &plan.event),
            (Err(_), Err(_)) => {}
            _ => panic!("identify and plan disagree: {identified:?}"),
        }
        if let Ok(plan) = planned {
            // What `mapper plan` prints.
            let _ = serde_json::to_string(&plan);
        }
        let _ = self.program.mirror_values(source, &payload, &Value::Null);
    }
}

// ---------------------------------------------------------------------------
// 3. The receive path through the router, in process.

/// The router `serve` runs, on a SQLite file in a temporary directory,
/// driven in process (no socket).
pub struct ReceiveTarget {
    _dir: TempDir,
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    program: Arc<Program>,
    sources: Vec<String>,
}

/// The `Content-Type` byte 1 of a receive input picks.
const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain"),
    Some("application/json; charset=utf-8"),
    Some("application/xml"),
    Some("multipart/form-data; boundary=x"),
    Some("application/vnd.api+json"),
    Some("APPLICATION/X-WWW-FORM-URLENCODED; charset=ISO-8859-1"),
    Some(""),
];

impl ReceiveTarget {
    pub fn new(mappings: &Path) -> ReceiveTarget {
        let dir = TempDir::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let program = Arc::new(compile(mappings));
        let verifiers =
            server::verifiers(&program, &env_of).unwrap_or_else(|e| panic!("verifiers: {e}"));
        let db = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let router = runtime.block_on(async {
            let store = Store::open(&db)
                .await
                .unwrap_or_else(|e| panic!("store: {e}"));
            let state = AppState::new(
                server::Loaded {
                    tenants: Default::default(),
                    routes: Default::default(),
                    program: program.clone(),
                    verifiers,
                },
                store.clone(),
                Inbox::start(store, 256),
                DEFAULT_CONNECTION.to_string(),
            );
            server::router(Arc::new(state))
        });
        let sources = program.sources.keys().cloned().collect();
        ReceiveTarget {
            _dir: dir,
            runtime,
            router,
            program,
            sources,
        }
    }

    /// Byte 0 picks the source (one past the last: an unknown one), byte 1
    /// the content type, byte 2 how the request is signed (0 as the source
    /// signs, 1 not at all, 2 with a wrong secret, else only with the
    /// headers given); the rest is `HEADER LINES \n\n BODY`, or the body.
    pub fn run(&self, data: &[u8]) {
        let [pick, ct, sign, rest @ ..] = data else {
            return;
        };
        let source = self.sources.get(*pick as usize % (self.sources.len() + 1));
        let (head, body) = match find(rest, b"\n\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (&[][..], rest),
        };
        let mut request = Request::post(format!(
            "/webhooks/{}",
            source.map(String::as_str).unwrap_or("nosuch")
        ));
        if let Some(Some(ct)) = CONTENT_TYPES.get(*ct as usize % CONTENT_TYPES.len()) {
            request = request.header("content-type", *ct);
        }
        for line in head.split(|&b| b == b'\n') {
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let name = &line[..colon];
                let value = line[colon + 1..].trim_ascii();
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(name),
                    axum::http::HeaderValue::from_bytes(value),
                ) {
                    request = request.header(n, v);
                }
            }
        }
        let spec = source.and_then(|s| self.program.sources.get(s));
        let mut query = String::new();
        if let Some(spec) = spec
            && *sign < 3
        {
            let (headers, q) = sign_as(spec, body, *sign);
            for (n, v) in headers {
                request = request.header(n, v);
            }
            query = q;
        }
        let uri = request
            .uri_ref()
            .map(|u| format!("{}{query}", u.path()))
            .unwrap_or_default();
        let Ok(request) = request.uri(uri).body(Body::from(body.to_vec())) else {
            return;
        };
        let (status, answer) = self.runtime.block_on(async {
            let Some(response) = call(self.router.clone(), request).await else {
                panic!("the router failed without an answer");
            };
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            (status, bytes)
        });
        check_answer(status, &answer);
        // Unsigned or wrongly signed, a verified source never stores.
        if let Some(spec) = spec
            && (*sign == 1 || *sign == 2)
            && spec.verify.method != VerifyMethod::None
        {
            assert!(
                !(200..300).contains(&status),
                "{} accepted a request signed {}: {}",
                spec.name,
                if *sign == 1 { "not at all" } else { "wrongly" },
                String::from_utf8_lossy(&answer)
            );
        }
    }
}

/// Headers and query (`?…`) signing `body` as `spec` verifies: `mode` 0
/// with the right secret, 1 not at all, 2 with a wrong one.
pub fn sign_as(
    spec: &crate::program::Source,
    body: &[u8],
    mode: u8,
) -> (Vec<(String, String)>, String) {
    if mode == 1 {
        return (Vec::new(), String::new());
    }
    let v = &spec.verify;
    let wrong = mode == 2;
    match v.method {
        VerifyMethod::Token => {
            let token = if wrong {
                "not-the-token"
            } else {
                secret(v.secret_env.as_deref().unwrap_or(""))
            };
            match (&v.query, &v.header) {
                (Some(q), _) => (Vec::new(), format!("?{q}={token}")),
                (None, Some(h)) => (vec![(h.clone(), token.to_string())], String::new()),
                _ => (Vec::new(), String::new()),
            }
        }
        VerifyMethod::Hmac => {
            let key = if wrong {
                "not-the-secret"
            } else {
                secret(v.secret_env.as_deref().unwrap_or(""))
            };
            let signed = match &v.signed {
                Some(crate::config::model::SignedPart::FormField(f)) => {
                    decode::form_field(std::str::from_utf8(body).unwrap_or(""), f)
                        .unwrap_or_default()
                        .into_bytes()
                }
                _ => body.to_vec(),
            };
            let sig = hex::encode(hmac_md5(key.as_bytes(), &signed));
            let name = v.header.clone().unwrap_or_default();
            (vec![(name, sig)], String::new())
        }
        VerifyMethod::Ghl => {
            let key = if wrong {
                ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
            } else {
                ghl_test_key()
            };
            let sig = B64.encode(key.sign(body).to_bytes());
            (vec![("x-ghl-signature".into(), sig)], String::new())
        }
        _ => (Vec::new(), String::new()),
    }
}

/// One request through a service, as the server would send it.
/// `axum::ServiceExt` has tower's `Service` as its supertrait, whose methods
/// the bound brings in (tower itself is not a dependency of the crate).
async fn call<S>(mut service: S, request: Request<Body>) -> Option<axum::response::Response>
where
    S: axum::ServiceExt<Request<Body>, Response = axum::response::Response>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .ok()?;
    service.call(request).await.ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What README promises of every answer to `POST /webhooks/{source}`.
pub fn check_answer(status: u16, answer: &[u8]) {
    let json: Value = serde_json::from_slice(answer).unwrap_or_else(|e| {
        panic!(
            "answer {status} is not JSON ({e}): {}",
            String::from_utf8_lossy(answer)
        )
    });
    if status == 200 || status == 202 {
        assert!(json["delivery_id"].is_i64(), "{status} {json}");
        let word = json["status"].as_str().unwrap_or("");
        let allowed: &[&str] = if status == 200 {
            &["duplicate"]
        } else {
            &["accepted", "unmapped"]
        };
        assert!(allowed.contains(&word), "{status} {json}");
        return;
    }
    let code = json["error"].as_str().unwrap_or("");
    let expected: &[u16] = match code {
        "unknown_source" => &[404],
        "too_large" => &[413],
        "content_type" => &[415],
        "signature" => &[401],
        "malformed" | "no_event_type" => &[400],
        "store_failed" => &[503, 429],
        _ => &[],
    };
    assert!(
        expected.contains(&status),
        "status {status} with error `{code}`: {json}"
    );
    assert!(json["message"].is_string(), "{json}");
}

// ---------------------------------------------------------------------------
// 4. SlickText's form body.

/// SlickText's source: its form body decoded and verified as `serve` does.
pub struct FormTarget {
    program: Program,
    verifier: Verifier,
}

impl FormTarget {
    pub fn new(mappings: &Path) -> FormTarget {
        let program = compile(mappings);
        let verifier = match program.sources.get("slicktext") {
            Some(s) => Verifier::new(&s.verify, &env_of)
                .unwrap_or_else(|e| panic!("slicktext verifier: {e}")),
            None => panic!("no slicktext source in {}", mappings.display()),
        };
        FormTarget { program, verifier }
    }

    /// The input is the body. It is signed as SlickText signs (HMAC-MD5
    /// of the `data` field as the receiver reads it), then verified and
    /// decoded: when verification passes, the payload processed must be
    /// the JSON that was signed, whatever the rest of the body says.
    pub fn run(&self, body: &[u8]) {
        let Some(source) = self.program.sources.get("slicktext") else {
            return;
        };
        let text = std::str::from_utf8(body).unwrap_or("");
        let field = source.body.field.as_deref().unwrap_or("data");
        let form_field = |name: &str| decode::form_field(text, name);
        let signed = form_field(field);
        let (headers, _) = sign_as(source, body, 0);
        let mut map = axum::http::HeaderMap::new();
        for (n, v) in headers {
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::from_bytes(n.as_bytes()),
                axum::http::HeaderValue::from_str(&v),
            ) {
                map.insert(n, v);
            }
        }
        let verified = self.verifier.verify(&map, None, body, 0, &form_field);
        let decoded = decode::decode(body, &source.body);
        assert_eq!(source.body.format, BodyFormat::Form);
        if verified.is_ok()
            && let Ok(payload) = &decoded
        {
            // The bytes that were verified are the payload that is stored.
            let signed_json = signed
                .as_deref()
                .map(|s| decode::decode(s.as_bytes(), &Default::default()));
            assert!(
                matches!(&signed_json, Some(Ok(v)) if v == payload),
                "verified `{signed:?}` but decoded {payload}"
            );
        }
        if let Ok(payload) = decoded {
            let _ = self.program.identify("slicktext", &payload);
            let _ = self
                .program
                .plan("slicktext", &payload, &PlanInput::default());
            let _ = self
                .program
                .mirror_values("slicktext", &payload, &Value::Null);
        }
    }
}

// ---------------------------------------------------------------------------
// 5. `mapper resync --import`: CSV and JSON lines.

/// Byte 0 picks CSV (even) or JSON lines (odd); the rest is the file.
pub fn resync_import(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // `resync` refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if pick % 2 == 0 {
        import::ImportFormat::Csv
    } else {
        import::ImportFormat::Jsonl
    };
    let lines = text.lines().count().max(1);
    if let Ok(export) = import::parse(text, format, "US") {
        let mut seen = std::collections::BTreeSet::new();
        for row in &export.rows {
            assert!(!row.customer_id.is_empty(), "row {} has no id", row.line);
            assert!(
                row.line >= 1 && row.line <= lines + 1,
                "row line {} of {lines}",
                row.line
            );
            seen.insert(row.line);
        }
        for bad in &export.bad {
            assert!(
                bad.line >= 1 && bad.line <= lines + 1,
                "bad line {}",
                bad.line
            );
            // A line is a customer or a bad line, never both.
            assert!(!seen.contains(&bad.line), "line {} is both", bad.line);
        }
    }
}
