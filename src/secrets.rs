//! Secrets at rest: the values of a connection's variables and its OAuth
//! tokens are sealed with a key from `MAPPER_SECRET_KEY` before they reach
//! the database, so a copy of the database file (a backup, a support bundle)
//! does not give away the credentials of every location it serves.
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): its 24-byte nonce
//! is drawn at random for every seal, which is safe at any number of seals
//! under one key (a 12-byte random nonce would not be, past a few billion).
//! A sealed value is text, `v1:` then base64url (no padding) of
//! nonce ‖ ciphertext ‖ tag; the version prefix lets a later format or a
//! key rotation tell old values from new ones.
//!
//! A value can be bound to where it is stored (`seal_for` / `open_for`
//! with a context such as `connection/acme/GHL_API_TOKEN`): the context is
//! authenticated, so a sealed value copied into another connection's row or
//! another variable does not open there.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that holds the key.
pub const SECRET_KEY_VARIABLE: &str = "MAPPER_SECRET_KEY";

/// The prefix of every sealed value of this format.
const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a key could not be read, or a sealed value not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key variable is not set (or empty) where a secret must be sealed or opened.
    #[error(
        "{SECRET_KEY_VARIABLE} is not set: secrets are stored encrypted with it; set it to 32 random bytes as 64 hex characters (e.g. `openssl rand -hex 32`)"
    )]
    NoKey,
    /// The key variable does not hold 32 bytes in hex or base64.
    #[error(
        "{SECRET_KEY_VARIABLE} is not a key: {reason}; it must be 32 bytes as 64 hex characters or as base64 (e.g. `openssl rand -hex 32`)"
    )]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The text is not a sealed value of a known format.
    #[error("a stored secret is not in a known sealed format ({reason})")]
    Format {
        /// What is wrong with it.
        reason: String,
    },
    /// The value does not open with this key (another key sealed it, it
    /// was changed, or it was moved from where it was sealed).
    #[error(
        "a stored secret does not open with {SECRET_KEY_VARIABLE}: it was sealed with another key, or altered"
    )]
    WrongKey,
}

/// The key that seals and opens secrets (32 bytes).
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    // Never print key material, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// Reads a key from the text of `MAPPER_SECRET_KEY`: 32 bytes as 64 hex
    /// characters, or as base64 (standard or URL-safe, padded or not).
    /// Surrounding whitespace is ignored; anything else is refused with an
    /// error naming the variable.
    pub fn from_env_value(text: &str) -> Result<SecretKey, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::NoKey);
        }
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| SecretError::BadKey {
                reason: e.to_string(),
            })?
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| SecretError::BadKey {
                    reason: format!(
                        "{} characters that are neither 64 hex characters nor base64",
                        text.chars().count()
                    ),
                })?
        };
        Self::from_bytes(&bytes)
    }

    /// A key from raw bytes; exactly 32 are required.
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretKey, SecretError> {
        if bytes.len() != 32 {
            return Err(SecretError::BadKey {
                reason: format!("it decodes to {} bytes, not 32", bytes.len()),
            });
        }
        let cipher = XChaCha20Poly1305::new_from_slice(bytes).map_err(|e| SecretError::BadKey {
            reason: e.to_string(),
        })?;
        Ok(SecretKey { cipher })
    }

    /// The key in `MAPPER_SECRET_KEY`: `Ok(None)` when it is unset or empty,
    /// an error when it is set but not a key.
    pub fn from_env() -> Result<Option<SecretKey>, SecretError> {
        match std::env::var(SECRET_KEY_VARIABLE) {
            Ok(v) if !v.trim().is_empty() => Self::from_env_value(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// Seals `plaintext` with a fresh random nonce (two seals of the same
    /// value differ).
    pub fn seal(&self, plaintext: &[u8]) -> String {
        self.seal_for("", plaintext)
    }

    /// Opens a value sealed by [`SecretKey::seal`].
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        self.open_for("", sealed)
    }

    /// Seals `plaintext` bound to `context` (e.g. where it is stored): it
    /// opens only with the same context.
    pub fn seal_for(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // Without an operating-system random source nothing here is safe to
        // run at all; no caller could do anything sensible with the error.
        if let Err(e) = getrandom::fill(&mut nonce) {
            panic!("no random source for a nonce: {e}");
        }
        let nonce = XNonce::from(nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption fails only for messages over 256 GiB.
        let sealed = match self.cipher.encrypt(&nonce, payload) {
            Ok(c) => c,
            Err(e) => panic!("cannot seal a value of {} bytes: {e}", plaintext.len()),
        };
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed by [`SecretKey::seal_for`] with the same context.
    pub fn open_for(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let Some(body) = sealed.strip_prefix(PREFIX) else {
            return Err(SecretError::Format {
                reason: "no `v1:` prefix".to_string(),
            });
        };
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| SecretError::Format {
                reason: e.to_string(),
            })?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Format {
                reason: format!("{} bytes is too short", raw.len()),
            });
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Format {
            reason: "bad nonce".to_string(),
        })?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::WrongKey)
    }

    /// Opens a sealed UTF-8 string bound to `context`.
    pub fn open_string_for(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        String::from_utf8(self.open_for(context, sealed)?).map_err(|_| SecretError::Format {
            reason: "not UTF-8".to_string(),
        })
    }
}

/// Whether a variable's value is a secret, by its name: anything whose name
/// contains `TOKEN`, `SECRET`, `KEY` or `PASSWORD` (case-insensitive).
/// Lists and logs show such values as `***`.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["TOKEN", "SECRET", "KEY", "PASSWORD"]
        .iter()
        .any(|word| upper.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_env_value(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn a_key_is_64_hex_characters_or_base64_of_32_bytes() {
        assert!(SecretKey::from_env_value(&"0f".repeat(32)).is_ok());
        assert!(SecretKey::from_env_value(&format!("  {}\n", "0F".repeat(32))).is_ok());
        let b64 = STANDARD.encode([7u8; 32]);
        assert!(SecretKey::from_env_value(&b64).is_ok());
        assert!(SecretKey::from_env_value(&URL_SAFE_NO_PAD.encode([250u8; 32])).is_ok());
        for bad in [
            "short",
            &"ab".repeat(31),
            &STANDARD.encode([1u8; 16]),
            "   ",
        ] {
            let e = SecretKey::from_env_value(bad).unwrap_err().to_string();
            assert!(e.contains(SECRET_KEY_VARIABLE), "{e}");
        }
    }

    #[test]
    fn a_sealed_value_opens_and_each_seal_differs() {
        let k = key();
        let a = k.seal(b"pit-123");
        let b = k.seal(b"pit-123");
        assert_ne!(a, b);
        assert!(a.starts_with("v1:"));
        assert!(!a.contains("pit-123"));
        assert_eq!(k.open(&a).unwrap(), b"pit-123");
        assert_eq!(k.open(&b).unwrap(), b"pit-123");
    }

    #[test]
    fn another_key_another_context_or_a_changed_byte_does_not_open() {
        let k = key();
        let other = SecretKey::from_bytes(&[9; 32]).unwrap();
        let sealed = k.seal_for("connection/a/GHL_API_TOKEN", b"secret");
        assert_eq!(
            other.open_for("connection/a/GHL_API_TOKEN", &sealed),
            Err(SecretError::WrongKey)
        );
        assert_eq!(
            k.open_for("connection/b/GHL_API_TOKEN", &sealed),
            Err(SecretError::WrongKey)
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(k.open_for("connection/a/GHL_API_TOKEN", &tampered).is_err());
        assert!(matches!(k.open("plain"), Err(SecretError::Format { .. })));
        assert!(matches!(k.open("v1:AAAA"), Err(SecretError::Format { .. })));
    }

    #[test]
    fn secret_names() {
        for name in [
            "GHL_API_TOKEN",
            "SLICKTEXT_WEBHOOK_SECRET",
            "STICKYCARDS_API_KEY",
            "DB_PASSWORD",
            "ghl_oauth_client_secret",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "GHL_LOCATION_ID",
            "GHL_API_BASE_URL",
            "STICKYCARDS_BASE_URL",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }
}
