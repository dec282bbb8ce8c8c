//! Production never depends on test fixtures: `serve` starts on a mapping set
//! shipped without `examples/` and with a broken test file beside it.

mod common;
use common::copy_dir;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of `GET path`, once the server answers (or `None` after `wait`).
fn get(port: u16, path: &str, wait: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut out = String::new();
                if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                    return Some(out);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn serve_starts_without_examples_and_with_a_broken_test_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    assert!(!dir.path().join("examples").exists());
    std::fs::write(
        dir.path().join("mappings/stickycards-ghl/broken.test.yaml"),
        "tests:\n  - name: [unclosed\n",
    )
    .unwrap();
    // `check` still sees both: every payload file is missing, one file is broken.
    let check = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["check", dir.path().join("mappings").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(
        said.contains("M019") && said.contains("broken.test.yaml"),
        "{said}"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
            &format!("sqlite://{}", dir.path().join("inbox.db").display()),
            "--mappings",
            "mappings",
        ])
        .env("STICKYCARDS_WEBHOOK_TOKEN", "sc-token")
        .env("SIGNALMIND_WEBHOOK_TOKEN", "sm-token")
        .env("SLICKTEXT_WEBHOOK_SECRET", "st-secret")
        .env("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Killed(child);
    let answer = get(port, "/healthz", Duration::from_secs(60));
    let exited = server.0.try_wait().unwrap();
    assert!(exited.is_none(), "serve stopped: {exited:?}");
    let answer = answer.expect("serve answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
