//! `mapper demo` as a newcomer runs it: the real binary, twice in one folder.

use std::path::Path;
use std::process::{Command, Output};

fn demo(folder: &Path, args: &[&str]) -> Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    command
        .arg("demo")
        .arg("--mappings")
        .arg(repo.join("mappings"));
    if !args.contains(&"--examples") {
        command
            .arg("--examples")
            .arg(repo.join("examples/payloads"));
    }
    command
        .args(args)
        .current_dir(folder)
        .env_remove("MAPPER_COALESCE_WINDOW")
        .env_remove("MAPPER_MAPPINGS")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// The line `delivered N, unmapped N (…), dead N, still pending N`, as numbers.
fn outcome(stdout: &str) -> (u64, u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("delivered "))
        .unwrap_or_else(|| panic!("no outcome line in:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1], numbers[2], numbers[3])
}

/// Finding of issue #12: a second run reused `mapper-demo.db`, every post
/// came back `200 duplicate` and nothing was delivered, with exit 0.
#[test]
fn two_demo_runs_in_one_folder_both_deliver_everything() {
    let folder = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = demo(folder.path(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs.push(stdout);
    }
    assert!(folder.path().join("mapper-demo.db").is_file());
    for stdout in &runs {
        let accepted = stdout.lines().filter(|l| l.starts_with("  202 ")).count();
        assert!(accepted > 40, "{stdout}");
        let (delivered, _unmapped, dead, pending) = outcome(stdout);
        assert_eq!((dead, pending), (0, 0), "{stdout}");
        assert!(delivered > 30, "{stdout}");
        assert!(stdout.contains("(fresh for this run)"), "{stdout}");
        assert!(
            stdout.contains("GHL location loc_demo: 4 contacts"),
            "{stdout}"
        );
        // What a person needs to post their own webhooks and look at the simulators.
        assert!(
            stdout.contains("/webhooks/stickycards?token=demo-token"),
            "{stdout}"
        );
        assert!(stdout.contains("demo-slicktext-secret"), "{stdout}");
        assert!(stdout.contains("token sandbox-token"), "{stdout}");
        assert!(stdout.contains("API key sandbox-key"), "{stdout}");
        assert!(
            !stdout.contains("Some("),
            "no Rust debug formatting: {stdout}"
        );
    }
    assert_eq!(
        runs[0].lines().filter(|l| l.starts_with("  202 ")).count(),
        runs[1].lines().filter(|l| l.starts_with("  202 ")).count(),
        "the second run is answered as the first"
    );
}

#[test]
fn demo_usage_errors_exit_2() {
    let folder = tempfile::tempdir().unwrap();
    let out = demo(folder.path(), &["--examples", "no/such/folder"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such/folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = demo(folder.path(), &["--database", "mapper-demo.db"]);
    assert_eq!(out.status.code(), Some(2), "not a database URL");
}
