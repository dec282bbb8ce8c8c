//! Who may use the console: one operator token (`MAPPER_UI_TOKEN`),
//! presented once to the login form for a session cookie, or on every
//! request as `Authorization: Bearer <token>` by scripts.
//!
//! Sessions live in this process's memory: a restart logs everyone out,
//! which is acceptable for an operator's tool and makes logout real (the
//! id is forgotten, not merely expired). Each session has its own CSRF
//! token; scripts using the bearer token get the process's CSRF token from
//! `GET /ui/csrf`, so every state-changing request carries one either way.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "mapper_ui";
/// How long a session lasts without a new login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first (a login storm cannot grow memory).
const MAX_SESSIONS: usize = 1000;

struct Session {
    csrf: String,
    expires_at: Instant,
}

/// The token check and the open sessions.
pub struct Auth {
    token_digest: [u8; 32],
    bearer_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A caller the console has recognised, with the CSRF token its
/// state-changing requests must carry.
#[derive(Debug, Clone)]
pub struct Operator {
    pub csrf: String,
    /// The session id, for a browser; `None` for a bearer-token script.
    pub session: Option<String>,
}

/// 32 random bytes as hex, or `None` when the system has no randomness to give.
pub fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Whether two secrets are equal, in time that depends on neither: both
/// are hashed first, so not even their lengths leak.
pub fn same_secret(a: &str, b: &str) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

impl Auth {
    /// The console's auth for `token`; `None` when no randomness is available.
    pub fn new(token: &str) -> Option<Auth> {
        Some(Auth {
            token_digest: digest(token),
            bearer_csrf: random_hex()?,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `given` is the operator token (constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        digest(given).ct_eq(&self.token_digest).into()
    }

    /// A new session: (its id, its CSRF token).
    pub fn login(&self) -> Option<(String, String)> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().ok()?;
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires_at: now + SESSION_LIFETIME,
            },
        );
        Some((id, csrf))
    }

    /// The operator of a live session.
    pub fn session(&self, id: &str) -> Option<Operator> {
        let sessions = self.sessions.lock().ok()?;
        // Looked up by its hash map key: the id is 256 random bits, so
        // timing reveals nothing an attacker could build on.
        let s = sessions.get(id)?;
        (s.expires_at > Instant::now()).then(|| Operator {
            csrf: s.csrf.clone(),
            session: Some(id.to_string()),
        })
    }

    /// The operator of a request that presented the token itself.
    pub fn bearer(&self) -> Operator {
        Operator {
            csrf: self.bearer_csrf.clone(),
            session: None,
        }
    }

    /// Forgets a session.
    pub fn logout(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(id);
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_tokens() {
        let auth = Auth::new("s3cret-token").unwrap();
        assert!(auth.token_matches("s3cret-token"));
        assert!(!auth.token_matches("s3cret-toke"));
        assert!(!auth.token_matches(""));
        let (id, csrf) = auth.login().unwrap();
        let op = auth.session(&id).unwrap();
        assert_eq!(op.csrf, csrf);
        assert_ne!(auth.bearer().csrf, csrf);
        auth.logout(&id);
        assert!(auth.session(&id).is_none());
        assert!(auth.session("nope").is_none());
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie("a=1; mapper_ui=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("mapper_uix=1", COOKIE), None);
    }
}
