//! Reading the hostile-input corpus (README.md beside this file) and sending
//! its cases over a raw TCP connection. Shared by tests/hostile.rs and
//! tests/secrets.rs.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The SlickText secret serve runs with in the tests (tests/common serve_env).
pub const SLICKTEXT_SECRET: &str = "st-secret";

/// What a case expects of the (last) answer.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub status: u16,
    /// The refusal's `error`, or the 2xx `status` word; `-` for an answer
    /// that is not ours (the router's); `None`: only the status is checked.
    pub word: Option<String>,
    /// A text the answer's `message` contains.
    pub reason: Option<String>,
    /// The answer's `header`.
    pub header: Option<String>,
    /// The answer's `field`.
    pub field: Option<String>,
}

/// One case of the corpus, as written.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub sign: Option<String>,
    /// How many times it is sent, and what changes on the repeats.
    pub send: (usize, Option<String>),
    /// Sent with `Transfer-Encoding: chunked`: the chunk size, or `bad`.
    pub chunked: Option<String>,
    pub nest: Option<(usize, String, String)>,
    pub fill: Option<(usize, String)>,
    pub pad_to: Option<usize>,
    pub expect: Expect,
    pub body: Vec<u8>,
}

/// A request ready to go out.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub chunked: Option<String>,
}

impl Request {
    pub fn get(path: String) -> Request {
        Request {
            method: "GET".into(),
            path,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: None,
        }
    }
}

/// The requests of one case.
pub type Prepared = Vec<Request>;

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// 0: no answer (the connection closed or timed out).
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn text_short(&self) -> String {
        self.text().chars().take(300).collect()
    }
}

impl Case {
    /// Every case under tests/hostile, sorted by name.
    pub fn load_all() -> Vec<Case> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
        let mut out = Vec::new();
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                if file.extension().and_then(|e| e.to_str()) != Some("case") {
                    continue;
                }
                let name = file.strip_prefix(&root).unwrap().display().to_string();
                out.push(Case::parse(&name, &std::fs::read(&file).unwrap()));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Parses a case file: `key: value` lines, then `body:` and the raw
    /// body to the end of the file (less one final newline), or a
    /// `body-base64:` line.
    pub fn parse(name: &str, data: &[u8]) -> Case {
        let mut case = Case {
            name: name.to_string(),
            send: (1, None),
            ..Case::default()
        };
        let mut rest = data;
        loop {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = std::str::from_utf8(&rest[..end])
                .unwrap_or_else(|e| panic!("{name}: a line before the body is not UTF-8: {e}"));
            let next = &rest[(end + 1).min(rest.len())..];
            if line == "body:" {
                case.body = next.strip_suffix(b"\n").unwrap_or(next).to_vec();
                break;
            }
            rest = next;
            if line.starts_with('#') || line.trim().is_empty() {
                if rest.is_empty() {
                    break;
                }
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.split_once(':'))
                .unwrap_or_else(|| panic!("{name}: `{line}` is not `key: value`"));
            match key {
                "request" => {
                    let (m, p) = value.split_once(' ').unwrap();
                    case.method = m.to_string();
                    case.path = p.to_string();
                }
                "header" => {
                    let (n, v) = value.split_once(':').unwrap();
                    // The value as written, bytes over 0x7F included (Latin-1).
                    let v: Vec<u8> = v
                        .strip_prefix(' ')
                        .unwrap_or(v)
                        .chars()
                        .map(|c| c as u32 as u8)
                        .collect();
                    case.headers.push((n.to_string(), v));
                }
                "sign" => case.sign = Some(value.to_string()),
                "send" => {
                    let mut words = value.split_whitespace();
                    case.send = (
                        words.next().unwrap().parse().unwrap(),
                        words.next().map(str::to_string),
                    );
                }
                "chunked" => case.chunked = Some(value.to_string()),
                "nest" => {
                    let w: Vec<&str> = value.split_whitespace().collect();
                    case.nest = Some((w[0].parse().unwrap(), w[1].into(), w[2].into()));
                }
                "fill" => {
                    let (n, text) = value.split_once(' ').unwrap();
                    case.fill = Some((n.parse().unwrap(), text.to_string()));
                }
                "pad-to" => case.pad_to = Some(value.parse().unwrap()),
                "expect" => {
                    let mut w = value.split_whitespace();
                    case.expect.status = w.next().unwrap().parse().unwrap();
                    case.expect.word = w.next().map(str::to_string);
                }
                "reason" => case.expect.reason = Some(value.to_string()),
                "expect-header" => case.expect.header = Some(value.to_string()),
                "expect-field" => case.expect.field = Some(value.to_string()),
                "body-base64" => case.body = B64.decode(value.trim()).unwrap(),
                other => panic!("{name}: unknown key `{other}`"),
            }
            if rest.is_empty() {
                break;
            }
        }
        assert!(
            !case.method.is_empty() && case.expect.status != 0,
            "{name}: needs request: and expect:"
        );
        case
    }

    /// The requests of the case: placeholders filled (`@UNIQ@` unique to
    /// the case number `n`, times relative to now, the GHL location),
    /// generators run, signatures computed.
    pub fn prepare(&self, n: usize, location: &str) -> Prepared {
        let uniq = format!("h{n}x{}", std::process::id());
        let now = chrono::Utc::now();
        let iso = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut body = self.body.clone();
        let mut replace = |from: &str, to: &str| {
            body = replace_bytes(&body, from.as_bytes(), to.as_bytes());
        };
        replace("@UNIQ@", &uniq);
        replace("%40UNIQ%40", &uniq);
        replace("@NOW_ISO@", &iso(now));
        replace("@OLD_ISO@", &iso(now - chrono::Duration::hours(3)));
        replace("@LOCATION@", location);
        if let Some((count, open, close)) = &self.nest {
            let nested = format!("{}{}", open.repeat(*count), close.repeat(*count));
            replace("@NEST@", &nested);
        }
        if let Some((count, text)) = &self.fill {
            replace("@FILL@", &text.repeat(*count));
        }
        if let Some(size) = self.pad_to {
            body.resize(size.max(body.len()), b' ');
        }
        let mut out = Vec::new();
        for i in 0..self.send.0 {
            let mut this = body.clone();
            if i > 0 {
                match self.send.1.as_deref() {
                    Some("reformat") => {
                        let v: serde_json::Value = serde_json::from_slice(&this).unwrap();
                        this = serde_json::to_vec_pretty(&v).unwrap();
                    }
                    Some("attempt") => {
                        this = replace_bytes(
                            &this,
                            b"attemptNumber%22%3A+1",
                            b"attemptNumber%22%3A+2",
                        );
                    }
                    _ => {}
                }
            }
            let mut headers = self.headers.clone();
            if let Some(how) = &self.sign {
                for one in how.split('+') {
                    let (h, b) = sign(one, &this);
                    headers.extend(h);
                    this = b;
                }
            }
            out.push(Request {
                method: self.method.clone(),
                path: self.path.clone(),
                headers,
                body: this,
                chunked: self.chunked.clone(),
            });
        }
        out
    }
}

fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// The first `data` field of a form, as a sender's naive parser reads it
/// (independent of the receiver's own reading, on purpose).
fn naive_form_field(body: &[u8], name: &str) -> Vec<u8> {
    let decode = |s: &[u8]| -> Vec<u8> {
        let s: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%'
                && i + 2 < s.len()
                && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16)
            {
                out.push(v);
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    };
    for pair in body.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if decode(k) == name.as_bytes() {
            return decode(v);
        }
    }
    Vec::new()
}

/// Headers (and the body, when the scheme tampers with it) for one way of
/// signing: see README.md for the names.
fn sign(how: &str, body: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    use mapper::server::verify::{hmac_md5, hmac_sha256};
    let st = |v: String| vec![("x-slicktext-signature".to_string(), v.into_bytes())];
    let data = naive_form_field(body, "data");
    let md5 = |key: &str, what: &[u8]| hmac_md5(key.as_bytes(), what);
    let ghl_key = mapper::fuzzing::ghl_test_key();
    let ghl = |v: String| vec![("x-ghl-signature".to_string(), v.into_bytes())];
    match how {
        "slicktext" => (st(hex::encode(md5(SLICKTEXT_SECRET, &data))), body.to_vec()),
        "slicktext-wrong-secret" => (st(hex::encode(md5("nope", &data))), body.to_vec()),
        "slicktext-base64" => (st(B64.encode(md5(SLICKTEXT_SECRET, &data))), body.to_vec()),
        "slicktext-upper" => (
            st(hex::encode_upper(md5(SLICKTEXT_SECRET, &data))),
            body.to_vec(),
        ),
        "slicktext-whole-body" => (st(hex::encode(md5(SLICKTEXT_SECRET, body))), body.to_vec()),
        "slicktext-sha256" => (
            st(hex::encode(hmac_sha256(SLICKTEXT_SECRET.as_bytes(), &data))),
            body.to_vec(),
        ),
        "slicktext-truncated" => (
            st(hex::encode(md5(SLICKTEXT_SECRET, &data))[..16].to_string()),
            body.to_vec(),
        ),
        "slicktext-spaced" => (
            st(format!("  {}  ", hex::encode(md5(SLICKTEXT_SECRET, &data)))),
            body.to_vec(),
        ),
        "slicktext-tampered" => (
            st(hex::encode(md5(SLICKTEXT_SECRET, &data))),
            replace_bytes(body, b"credit", b"debit"),
        ),
        "ghl" => (
            ghl(B64.encode(ghl_key.sign(body).to_bytes())),
            body.to_vec(),
        ),
        "ghl-other-key" => {
            let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
            (ghl(B64.encode(other.sign(body).to_bytes())), body.to_vec())
        }
        "ghl-tampered" => (
            ghl(B64.encode(ghl_key.sign(body).to_bytes())),
            replace_bytes(body, b"Ana", b"Eve"),
        ),
        "ghl-base64url" => (
            ghl(URL_SAFE_NO_PAD.encode(ghl_key.sign(body).to_bytes())),
            body.to_vec(),
        ),
        "ghl-hex" => (
            ghl(hex::encode(ghl_key.sign(body).to_bytes())),
            body.to_vec(),
        ),
        "ghl-truncated" => (
            ghl(B64.encode(&ghl_key.sign(body).to_bytes()[..40])),
            body.to_vec(),
        ),
        "ghl-na" => (ghl("N/A".into()), body.to_vec()),
        "ghl-empty" => (ghl(B64.encode(ghl_key.sign(b"").to_bytes())), body.to_vec()),
        "rsa" | "ghl-rsa-only" => (
            vec![(
                "x-wh-signature".to_string(),
                B64.encode([7u8; 256]).into_bytes(),
            )],
            body.to_vec(),
        ),
        other => panic!("unknown signing `{other}`"),
    }
}

/// Sends one request on its own connection and reads the answer (up to 30 s).
pub async fn send(address: SocketAddr, request: &Request) -> Answer {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n",
        request.method, request.path
    )
    .into_bytes();
    let mut has_length = false;
    for (n, v) in &request.headers {
        has_length |= n.eq_ignore_ascii_case("content-length");
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    let mut wire = head;
    match &request.chunked {
        Some(size) => {
            wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            match size.parse::<usize>() {
                Ok(size) => {
                    for chunk in request.body.chunks(size.max(1)) {
                        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        wire.extend_from_slice(chunk);
                        wire.extend_from_slice(b"\r\n");
                    }
                    wire.extend_from_slice(b"0\r\n\r\n");
                }
                // Broken framing: a chunk size that is not hex.
                Err(_) => {
                    wire.extend_from_slice(b"zz\r\n");
                    wire.extend_from_slice(&request.body);
                    wire.extend_from_slice(b"\r\n0\r\n\r\n");
                }
            }
        }
        None => {
            if !has_length && (request.method != "GET" || !request.body.is_empty()) {
                wire.extend_from_slice(
                    format!("content-length: {}\r\n", request.body.len()).as_bytes(),
                );
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&request.body);
        }
    }
    let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
        return Answer::default();
    };
    let (mut read, mut write) = stream.into_split();
    // Written beside the read: a server that answers before reading the
    // whole body (413) must not leave this side blocked on a full socket.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&wire).await;
        let _ = write.flush().await;
        write
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = vec![0u8; 65536];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drop(writer);
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer::default();
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = line_end + 2;
            out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = &rest[(start + size + 2).min(rest.len())..];
        }
        body = out;
    }
    Answer { status, body }
}
