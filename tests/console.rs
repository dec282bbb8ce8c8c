//! The operator console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`) against the app
//! `mapper serve` runs, wired to the simulators, on a real SQLite file.
//!
//! The walk: the wrong token is refused; log in; the overview counts the
//! posted batch; open a dead event and read its error; a replay without the
//! CSRF token is refused; fix the simulator, replay from the page and see
//! the event delivered; count and confirm a filtered replay; the list
//! refreshes itself. Each view is
//! photographed on the way, into `MAPPER_SCREENSHOTS` (default
//! `target/console-screenshots`; `docs/console` refreshes README's).
//!
//! Without chromedriver the test fails under CI (`CI` set: `.ci/run`
//! installs it) and is skipped with a printed reason elsewhere.

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::sandbox::{Fault, GhlSandbox, StickyCardsSandbox};
use mapper::store::Store;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{serve_env, settle, simulators};

const TOKEN: &str = "browser-test-token-5f2c9a7e";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver this test started; stopped when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(names: &[&str], variable: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Starts chromedriver, or says why not (`None` after printing the reason).
async fn driver() -> Option<Driver> {
    let Some(binary) = find_program(&["chromedriver"], "CHROMEDRIVER") else {
        let reason =
            "chromedriver is not installed (Debian: apt-get install chromium chromium-driver)";
        if std::env::var_os("CI").is_some() {
            panic!("{reason}; .ci/run installs it, so CI must have it");
        }
        eprintln!("skipped: {reason}");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new(&binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{}/status", driver.base)).await
            && r.status().is_success()
        {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer within 20 s");
}

/// One browser session, spoken to in W3C WebDriver.
struct Browser {
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver) -> Browser {
        let chromium = find_program(&["chromium", "chromium-browser"], "CHROMIUM")
            .map(|p| p.display().to_string());
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1400", "--lang=en-US"]
        });
        if let Some(binary) = chromium {
            options["binary"] = json!(binary);
        }
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!("{}/session", driver.base))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_string();
        let shots = PathBuf::from(
            std::env::var("MAPPER_SCREENSHOTS")
                .unwrap_or_else(|_| "target/console-screenshots".into()),
        );
        std::fs::create_dir_all(&shots).unwrap();
        let browser = Browser {
            http,
            session: format!("{}/session/{session}", driver.base),
            shots,
        };
        // Elements looked for are waited for (a submitted form's next page).
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 5000})),
            )
            .await;
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits (up to 10 s) until the page's address contains `part`: a
    /// click that submits a form returns before the next page is there.
    async fn wait_url(&self, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if url.contains(part) {
                return;
            }
            assert!(Instant::now() < deadline, "at {url}, never at …{part}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn attribute(&self, css: &str, name: &str) -> String {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/property/{name}"),
            None,
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs `script` in the page (an async function body; `resolve` is its last argument).
    async fn run_async(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
    }

    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

struct Serve {
    base: String,
    db: String,
    _running: Running,
    ghl: GhlSandbox,
    _sc: StickyCardsSandbox,
    _dir: tempfile::TempDir,
}

async fn serve() -> Serve {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("console.db").display());
    let program = mapper::config::compile::compile_dir(std::path::Path::new("mappings"))
        .program
        .expect("the mappings check clean");
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Some("mappings".into()),
        Env::from_map(serve_env(&ghl, &sc)),
    );
    config.coalesce_window = Some(std::time::Duration::ZERO);
    config.ui_token = Some(TOKEN.into());
    let running = App::start(config).await.expect("the app starts");
    Serve {
        base: running.url().unwrap(),
        db,
        _running: running,
        ghl,
        _sc: sc,
        _dir: dir,
    }
}

/// Posts a Sticky Cards scan of `customer`; its delivery id.
async fn post_scan(app: &Serve, customer: &str) -> i64 {
    let body = std::fs::read_to_string("examples/payloads/stickycards/CardScannedEvent.json")
        .unwrap()
        .replace("cus_1001", customer);
    let status = reqwest::Client::new()
        .post(format!("{}/webhooks/stickycards", app.base))
        .header("content-type", "application/json")
        .header("X-Webhook-Token", "sc-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 202);
    let answer: Value = status.json().await.unwrap();
    answer["delivery_id"].as_i64().unwrap()
}

async fn count(store: &Store, state: &str) -> i64 {
    store
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.state == state)
        .map(|c| c.count)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_dead_event_and_replays_it_from_the_browser() {
    let Some(driver) = driver().await else { return };
    let app = serve().await;
    let store = Store::open(&app.db).await.unwrap();

    // A batch that goes through, then two customers GHL refuses.
    for i in 0..4 {
        let _ = post_scan(&app, &format!("cus_ok{i}")).await;
    }
    settle(&app.db).await;
    app.ghl.inject(Fault::Status(400), 100_000);
    let _ = post_scan(&app, "cus_dead").await;
    let _ = post_scan(&app, "cus_dead2").await;
    settle(&app.db).await;
    let delivered = count(&store, "delivered").await;
    assert_eq!(count(&store, "dead").await, 2);
    assert!(delivered >= 4);

    let b = Browser::open(&driver).await;

    // A stranger is sent to the login form; the wrong token is refused.
    b.go(&format!("{}/ui", app.base)).await;
    assert!(b.url().await.ends_with("/ui/login"));
    b.screenshot("login").await;
    b.type_into("#token", "not-the-token").await;
    b.click("#login").await;
    assert!(b.text("#login-error").await.contains("refused"));
    assert!(b.url().await.ends_with("/ui/login"));
    b.go(&format!("{}/ui/events", app.base)).await;
    assert!(
        b.url().await.ends_with("/ui/login"),
        "the wrong token let the browser in"
    );

    // The right one opens the overview, which counts the batch.
    b.type_into("#token", TOKEN).await;
    b.click("#login").await;
    b.wait_url("/ui").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.url().await.ends_with("/ui/login") {
        assert!(Instant::now() < deadline, "the right token did not log in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.url().await.ends_with("/ui"), "{}", b.url().await);
    assert_eq!(
        b.text("a[data-state=delivered] .n").await,
        delivered.to_string()
    );
    assert_eq!(b.text("a[data-state=dead] .n").await, "2");
    b.screenshot("overview").await;

    // The dead events, and one of them with its error.
    b.go(&format!("{}/ui/events?state=dead", app.base)).await;
    let rows = b.source().await.matches("<tr class=\"state-dead\"").count();
    assert_eq!(rows, 2);
    b.screenshot("events").await;
    let href = b
        .attribute("#rows tr.state-dead:last-child a", "href")
        .await;
    let id: i64 = href.rsplit('/').next().unwrap().parse().unwrap();
    b.go(&href).await;
    assert_eq!(b.text("#event-state").await, "dead");
    let error = b.text("#last-error").await;
    assert!(error.contains("simulated failure"), "{error}");
    assert!(
        b.text("#payload").await.contains("•••"),
        "personal data shown by default"
    );
    b.screenshot("event-dead").await;

    // The page's own session, without the CSRF token, cannot replay.
    let status = b
        .run_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/events/{id}/replay', {{method: 'POST', body: new URLSearchParams({{x: '1'}})}})
               .then(r => done(r.status), e => done(String(e)));"
        ))
        .await;
    assert_eq!(status, json!(403));
    assert_eq!(store.event(id).await.unwrap().unwrap().0, "dead");

    // Fixed: the replay button delivers it.
    app.ghl.clear_faults();
    b.click("#replay").await;
    b.wait_url("replayed=1").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = b.text("#event-state").await;
        if state == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "still {state} after the replay");
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.go(&format!("{}/ui/events/{id}", app.base)).await;
    }
    b.go(&format!("{}/ui/events/{id}?reveal=1", app.base)).await;
    assert!(b.text("#payload").await.contains("Ana.Lima@Example.com"));
    b.go(&format!("{}/ui/events/{id}", app.base)).await;
    b.screenshot("event-delivered").await;

    let customer = store
        .event_record(id)
        .await
        .unwrap()
        .unwrap()
        .row
        .customer_key
        .unwrap();
    let customer = customer.rsplit(':').next().unwrap().to_string();
    b.go(&format!("{}/ui/customers/{customer}", app.base)).await;
    assert!(b.source().await.contains("webhook in"));
    b.screenshot("customer").await;

    b.go(&format!("{}/ui/mappings", app.base)).await;
    assert!(b.text("#reload-state").await.starts_with("ok"));
    b.screenshot("mappings").await;

    // The other dead event, through a counted and confirmed filtered replay.
    b.go(&format!("{}/ui/actions", app.base)).await;
    b.screenshot("actions").await;
    b.click("#count").await;
    b.find("#confirm").await;
    assert!(b.source().await.contains("Replay 1 event(s)?"));
    b.screenshot("replay-confirm").await;
    b.click("#confirm").await;
    b.wait_url("/ui/actions?replayed=1").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&store, "dead").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the filtered replay delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    settle(&app.db).await;
    b.go(&format!("{}/ui", app.base)).await;
    assert_eq!(b.text("a[data-state=dead] .n").await, "0");

    // The list refreshes itself (the vendored script runs under the page's
    // Content-Security-Policy): a webhook posted now appears without a reload.
    b.go(&format!("{}/ui/events", app.base)).await;
    let late = post_scan(&app, "cus_late").await;
    let marker = format!("data-id=\"{late}\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.source().await.contains(&marker) {
        assert!(
            Instant::now() < deadline,
            "event #{late} never appeared in the list"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.close().await;
}
