//! Webhook verification, as each source profile declares it. Always over the
//! raw body bytes, comparing in constant time.

use crate::config::model::{
    HmacAlgorithm, SignatureEncoding, SignedPart, VerifyMethod, VerifySpec,
};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use rsa::signature::Verifier as _;

/// GHL's published Ed25519 key for `x-ghl-signature` (reference ghl-api.md §7.2).
pub const GHL_ED25519_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=\n-----END PUBLIC KEY-----\n";

/// Default tolerance for signed timestamps.
const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// A source's verification, with its secrets resolved.
#[derive(Clone)]
pub struct Verifier {
    spec: VerifySpec,
    secret: Option<Vec<u8>>,
    ed25519: Option<ed25519_dalek::VerifyingKey>,
    /// GHL's legacy `x-wh-signature` key; none is built in, so absent unless configured.
    rsa: Option<rsa::pkcs1v15::VerifyingKey<sha2::Sha256>>,
}

/// Why a webhook was refused: what to fix, and the header (or query
/// parameter, or form field) that was missing or wrong, when one was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
    pub header: Option<String>,
}

impl Refused {
    fn new(message: impl Into<String>) -> Refused {
        Refused {
            message: message.into(),
            header: None,
        }
    }

    /// This refusal, about `header` (a timestamp checked for several methods).
    fn on(mut self, header: &str) -> Refused {
        self.header = Some(header.to_ascii_lowercase());
        self
    }

    fn at(header: &str, message: impl Into<String>) -> Refused {
        Refused {
            message: message.into(),
            header: Some(header.to_ascii_lowercase()),
        }
    }
}

/// Why a source's verification cannot be set up; names the variable to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {variable} is not set (the webhook secret)")]
    Unset { variable: String },
    #[error("{variable} is not a base64 `whsec_…` secret: {reason}")]
    NotBase64 { variable: String, reason: String },
    #[error("the GHL Ed25519 public key is not a PEM public key: {reason}")]
    Ed25519Key { reason: String },
    #[error(
        "{variable} is not an RSA public key in PEM (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY): {reason}"
    )]
    RsaKey { variable: String, reason: String },
}

impl Verifier {
    /// Resolves secrets through `env`; names the variable that is missing.
    pub fn new(
        spec: &VerifySpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Verifier, SecretError> {
        let mut secret = None;
        let mut ed25519 = None;
        let mut rsa = None;
        match spec.method {
            VerifyMethod::None | VerifyMethod::Internal => {}
            VerifyMethod::Token | VerifyMethod::Hmac | VerifyMethod::StandardWebhooks => {
                let var = spec.secret_env.as_deref().unwrap_or("");
                let value =
                    env(var)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| SecretError::Unset {
                            variable: var.to_string(),
                        })?;
                secret = Some(if spec.method == VerifyMethod::StandardWebhooks {
                    let b64 = value.strip_prefix("whsec_").unwrap_or(&value);
                    B64.decode(b64).map_err(|e| SecretError::NotBase64 {
                        variable: var.to_string(),
                        reason: e.to_string(),
                    })?
                } else {
                    value.into_bytes()
                });
            }
            VerifyMethod::Ghl => {
                let pem = spec
                    .public_key_env
                    .as_deref()
                    .and_then(env)
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| GHL_ED25519_PUBLIC_KEY.to_string());
                use ed25519_dalek::pkcs8::DecodePublicKey;
                ed25519 = Some(
                    ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                        SecretError::Ed25519Key {
                            reason: e.to_string(),
                        }
                    })?,
                );
                if let Some(var) = spec.rsa_public_key_env.as_deref()
                    && let Some(pem) = env(var).filter(|v| !v.trim().is_empty())
                {
                    let key = rsa_public_key(&pem).map_err(|reason| SecretError::RsaKey {
                        variable: var.to_string(),
                        reason,
                    })?;
                    rsa = Some(rsa::pkcs1v15::VerifyingKey::new(key));
                }
            }
        }
        Ok(Verifier {
            spec: spec.clone(),
            secret,
            ed25519,
            rsa,
        })
    }

    /// Checks one request. `now` is unix seconds; `form_field` reads a decoded form field of the body.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        body: &[u8],
        now: i64,
        form_field: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), Refused> {
        let spec = &self.spec;
        let secret = self.secret.as_deref().unwrap_or_default();
        match spec.method {
            VerifyMethod::None => Ok(()),
            VerifyMethod::Internal => Err(Refused::new(
                "this source's events are raised by mapper itself (schedules:), not posted over HTTP",
            )),
            VerifyMethod::Token => {
                let from_header = spec
                    .header
                    .as_deref()
                    .and_then(|h| Some((h, header(headers, h)?.to_string())));
                let from_query = spec
                    .query
                    .as_deref()
                    .and_then(|q| Some((q, query_param(query, q)?)));
                let Some((given_in, token)) = from_header.or(from_query) else {
                    return Err(Refused::at(
                        spec.header.as_deref().unwrap_or("token"),
                        format!(
                            "missing token: send it in the {} header or the `{}` query parameter",
                            spec.header.as_deref().unwrap_or("(none)"),
                            spec.query.as_deref().unwrap_or("(none)")
                        ),
                    ));
                };
                if ct_eq(token.as_bytes(), secret) {
                    Ok(())
                } else {
                    Err(Refused::at(given_in, "the webhook token does not match"))
                }
            }
            VerifyMethod::Hmac => {
                let name = spec.header.as_deref().unwrap_or("");
                let Some(given) = header(headers, name) else {
                    return Err(Refused::at(
                        name,
                        format!("missing signature header {name}"),
                    ));
                };
                let given = given.trim();
                let given = spec
                    .prefix
                    .as_deref()
                    .and_then(|p| given.strip_prefix(p))
                    .unwrap_or(given);
                let mut signed = match &spec.signed {
                    Some(SignedPart::FormField(field)) => form_field(field)
                        .ok_or_else(|| {
                            Refused::at(
                                field,
                                format!("the signed form field `{field}` is missing"),
                            )
                        })?
                        .into_bytes(),
                    _ => body.to_vec(),
                };
                if let Some(ts_header) = &spec.timestamp_header {
                    let ts = header(headers, ts_header).ok_or_else(|| {
                        Refused::at(ts_header, format!("missing timestamp header {ts_header}"))
                    })?;
                    check_age(ts, now, spec.tolerance_seconds).map_err(|r| r.on(ts_header))?;
                    let mut with_ts = format!("{ts}.").into_bytes();
                    with_ts.extend_from_slice(&signed);
                    signed = with_ts;
                }
                let mac = match spec.algorithm.unwrap_or(HmacAlgorithm::Sha256) {
                    HmacAlgorithm::Sha256 => hmac_sha256(secret, &signed),
                    HmacAlgorithm::Md5 => hmac_md5(secret, &signed),
                };
                let expected = match spec.encoding.unwrap_or(SignatureEncoding::Hex) {
                    SignatureEncoding::Hex => hex::encode(mac),
                    SignatureEncoding::Base64 => B64.encode(mac),
                };
                let given =
                    if spec.encoding.unwrap_or(SignatureEncoding::Hex) == SignatureEncoding::Hex {
                        given.to_ascii_lowercase()
                    } else {
                        given.to_string()
                    };
                if ct_eq(given.as_bytes(), expected.as_bytes()) {
                    Ok(())
                } else {
                    Err(Refused::at(
                        name,
                        format!("the {name} signature does not match the body"),
                    ))
                }
            }
            VerifyMethod::StandardWebhooks => {
                let id = header(headers, "webhook-id")
                    .ok_or_else(|| Refused::at("webhook-id", "missing webhook-id header"))?;
                let ts = header(headers, "webhook-timestamp").ok_or_else(|| {
                    Refused::at("webhook-timestamp", "missing webhook-timestamp header")
                })?;
                let signatures = header(headers, "webhook-signature").ok_or_else(|| {
                    Refused::at("webhook-signature", "missing webhook-signature header")
                })?;
                check_age(ts, now, spec.tolerance_seconds)
                    .map_err(|r| r.on("webhook-timestamp"))?;
                let mut signed = format!("{id}.{ts}.").into_bytes();
                signed.extend_from_slice(body);
                let expected = B64.encode(hmac_sha256(secret, &signed));
                // Several signatures are allowed while a key is rotated.
                let ok = signatures
                    .split_whitespace()
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .any(|s| ct_eq(s.as_bytes(), expected.as_bytes()));
                if ok {
                    Ok(())
                } else {
                    Err(Refused::at(
                        "webhook-signature",
                        "no webhook-signature matches the body",
                    ))
                }
            }
            VerifyMethod::Ghl => {
                // As GHL's SDK: Ed25519 when x-ghl-signature is there, with no
                // fallback to RSA, else the legacy header would let a forger
                // bypass the current one.
                if let Some(sig) = ghl_signature(headers, "x-ghl-signature") {
                    self.verify_ghl_ed25519(sig, body)?;
                } else if let Some(sig) = ghl_signature(headers, "x-wh-signature") {
                    self.verify_ghl_rsa(sig, body)?;
                } else {
                    return Err(Refused::at(
                        "x-ghl-signature",
                        "missing x-ghl-signature header (and no legacy x-wh-signature)",
                    ));
                }
                // A signed but old delivery is a replay.
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
                    && let Some(ts) = v.get("timestamp").and_then(|t| t.as_str())
                    && let Some(at) = crate::template::filters::parse_timestamp_str(ts, "UTC")
                {
                    let age = now - at.timestamp();
                    let tolerance =
                        spec.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS) as i64;
                    if age > tolerance {
                        return Err(Refused::new(format!(
                            "the webhook timestamp is {age} s old (more than {tolerance} s)"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    fn verify_ghl_ed25519(&self, sig: &str, body: &[u8]) -> Result<(), Refused> {
        let bytes = B64
            .decode(sig)
            .map_err(|_| Refused::at("x-ghl-signature", "x-ghl-signature is not base64"))?;
        let signature = ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| {
            Refused::at(
                "x-ghl-signature",
                "x-ghl-signature is not a 64-byte Ed25519 signature",
            )
        })?;
        let key = self
            .ed25519
            .as_ref()
            .ok_or_else(|| Refused::new("no GHL public key"))?;
        key.verify_strict(body, &signature)
            .map_err(|_| Refused::at("x-ghl-signature", "x-ghl-signature does not match the body"))
    }

    fn verify_ghl_rsa(&self, sig: &str, body: &[u8]) -> Result<(), Refused> {
        let Some(key) = &self.rsa else {
            let set = match self.spec.rsa_public_key_env.as_deref() {
                Some(var) => format!("set {var}"),
                None => "name a variable in the source's `rsa_public_key_env` and set it".into(),
            };
            return Err(Refused::at(
                "x-wh-signature",
                format!(
                    "only the legacy x-wh-signature (RSA) was sent and no GHL RSA public key is \
                 configured: {set} to GHL's published RSA public key (PEM). GHL deprecated \
                 x-wh-signature in 2026 and signs every webhook with x-ghl-signature"
                ),
            ));
        };
        let bytes = B64
            .decode(sig)
            .map_err(|_| Refused::at("x-wh-signature", "x-wh-signature is not base64"))?;
        let signature = rsa::pkcs1v15::Signature::try_from(bytes.as_slice()).map_err(|_| {
            Refused::at(
                "x-wh-signature",
                "x-wh-signature is too long for an RSA signature",
            )
        })?;
        key.verify(body, &signature)
            .map_err(|_| Refused::at("x-wh-signature", "x-wh-signature does not match the body"))
    }
}

/// A GHL signature header; some senders put a literal `N/A` in the header they do not sign with.
fn ghl_signature<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    header(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "N/A")
}

/// GHL documents an SPKI PEM; PKCS#1 is what `openssl rsa -RSAPublicKey_out` gives.
fn rsa_public_key(pem: &str) -> Result<rsa::PublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let pem = pem.trim();
    if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        rsa::PublicKey::from_pkcs1_pem(pem).map_err(|e| e.to_string())
    } else {
        rsa::PublicKey::from_public_key_pem(pem).map_err(|e| e.to_string())
    }
}

fn check_age(ts: &str, now: i64, tolerance: Option<u64>) -> Result<(), Refused> {
    let at: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Refused::new(format!("timestamp `{ts}` is not unix seconds")))?;
    let tolerance = tolerance.unwrap_or(DEFAULT_TOLERANCE_SECONDS) as i64;
    if (now - at).abs() > tolerance {
        return Err(Refused::new(format!(
            "timestamp {at} is more than {tolerance} s away from now ({now})"
        )));
    }
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            urlencoding::decode(v)
                .map(|c| c.into_owned())
                .unwrap_or_default()
        })
    })
}

/// Equality whose time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// HMAC-MD5 (SlickText's legacy `X-Slicktext-Signature`).
pub fn hmac_md5(key: &[u8], data: &[u8]) -> Vec<u8> {
    match hmac::Hmac::<md5::Md5>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn spec(method: VerifyMethod) -> VerifySpec {
        VerifySpec {
            method,
            secret_env: Some("SECRET".into()),
            header: None,
            query: None,
            algorithm: None,
            encoding: None,
            prefix: None,
            signed: None,
            timestamp_header: None,
            tolerance_seconds: None,
            public_key_env: None,
            rsa_public_key_env: None,
        }
    }

    fn env(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| (name == "SECRET").then(|| value.to_string())
    }

    #[test]
    fn hmac_vectors() {
        // RFC 4231 test case 2 and RFC 2104's MD5 example.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_md5(b"Jefe", b"what do ya want for nothing?")),
            "750c783e6ab0b503eaa86e310a5db738"
        );
    }

    #[test]
    fn missing_secret_names_the_variable() {
        let e = Verifier::new(&spec(VerifyMethod::Token), &|_| None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn token_in_header_or_query() {
        let mut s = spec(VerifyMethod::Token);
        s.header = Some("X-Webhook-Token".into());
        s.query = Some("token".into());
        let v = Verifier::new(&s, &env("t0k")).unwrap();
        let none = |_: &str| None;
        let mut h = HeaderMap::new();
        assert!(v.verify(&h, Some("token=t0k"), b"{}", 0, &none).is_ok());
        assert!(v.verify(&h, Some("token=bad"), b"{}", 0, &none).is_err());
        assert!(
            v.verify(&h, None, b"{}", 0, &none)
                .unwrap_err()
                .to_string()
                .contains("missing token")
        );
        h.insert("x-webhook-token", HeaderValue::from_static("t0k"));
        assert!(v.verify(&h, None, b"{}", 0, &none).is_ok());
    }

    #[test]
    fn slicktext_md5_over_the_data_field() {
        let mut s = spec(VerifyMethod::Hmac);
        s.header = Some("X-Slicktext-Signature".into());
        s.algorithm = Some(HmacAlgorithm::Md5);
        s.signed = Some(SignedPart::FormField("data".into()));
        let v = Verifier::new(&s, &env("whsecret")).unwrap();
        let data = r#"{"Event":"LoyaltyEventCreated"}"#;
        let sig = hex::encode(hmac_md5(b"whsecret", data.as_bytes()));
        let mut h = HeaderMap::new();
        h.insert(
            "x-slicktext-signature",
            HeaderValue::from_str(&sig.to_uppercase()).unwrap(),
        );
        let field = |name: &str| (name == "data").then(|| data.to_string());
        assert!(v.verify(&h, None, b"ignored", 0, &field).is_ok());
        let other = |_: &str| Some("tampered".to_string());
        assert!(v.verify(&h, None, b"ignored", 0, &other).is_err());
    }

    #[test]
    fn standard_webhooks_with_rotation_and_tolerance() {
        let s = spec(VerifyMethod::StandardWebhooks);
        let key = b"0123456789abcdef0123456789abcdef";
        let secret: &'static str = Box::leak(format!("whsec_{}", B64.encode(key)).into_boxed_str());
        let v = Verifier::new(&s, &env(secret)).unwrap();
        let body = br#"{"a":1}"#;
        let sig = B64.encode(hmac_sha256(
            key,
            &[b"msg_1.1700000000.".as_slice(), body].concat(),
        ));
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&format!("v1,b2xk v1,{sig}")).unwrap(),
        );
        let none = |_: &str| None;
        assert!(v.verify(&h, None, body, 1_700_000_100, &none).is_ok());
        assert!(
            v.verify(&h, None, body, 1_700_000_400, &none)
                .unwrap_err()
                .to_string()
                .contains("more than 300")
        );
        assert!(v.verify(&h, None, b"{}", 1_700_000_100, &none).is_err());
    }

    #[test]
    fn ghl_ed25519_with_a_test_key() {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        use ed25519_dalek::{Signer, SigningKey};
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let pem = signing
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let mut s = spec(VerifyMethod::Ghl);
        s.public_key_env = Some("GHL_KEY".into());
        let v = Verifier::new(&s, &move |n: &str| (n == "GHL_KEY").then(|| pem.clone())).unwrap();
        let body = br#"{"type":"ContactCreate","timestamp":"2025-03-05T09:12:44.517Z"}"#;
        let sig = B64.encode(signing.sign(body).to_bytes());
        let mut h = HeaderMap::new();
        h.insert("x-ghl-signature", HeaderValue::from_str(&sig).unwrap());
        let none = |_: &str| None;
        let at = chrono::DateTime::parse_from_rfc3339("2025-03-05T09:13:00Z")
            .unwrap()
            .timestamp();
        assert!(v.verify(&h, None, body, at, &none).is_ok());
        assert!(
            v.verify(&h, None, body, at + 3600, &none)
                .unwrap_err()
                .to_string()
                .contains("old")
        );
        assert!(v.verify(&h, None, br#"{"type":"x"}"#, at, &none).is_err());
        // The built-in key is GHL's published one and parses.
        assert!(Verifier::new(&spec(VerifyMethod::Ghl), &|_| None).is_ok());
    }

    /// SHA-256 in counter mode: enough entropy-shaped bytes for a throwaway
    /// test key, and the same key on every run.
    struct TestRng(u64);

    impl rsa::rand_core::TryRng for TestRng {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.try_next_u64()? as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            let mut b = [0u8; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            use sha2::Digest;
            for chunk in dst.chunks_mut(32) {
                self.0 += 1;
                let block = sha2::Sha256::digest(self.0.to_le_bytes());
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
            Ok(())
        }
    }

    impl rsa::rand_core::TryCryptoRng for TestRng {}

    /// Key generation takes seconds in a debug build: once per test binary.
    fn rsa_keys() -> &'static (rsa::PrivateKey, rsa::PrivateKey) {
        static KEYS: std::sync::OnceLock<(rsa::PrivateKey, rsa::PrivateKey)> =
            std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            (
                rsa::PrivateKey::new(&mut TestRng(1), 2048).unwrap(),
                rsa::PrivateKey::new(&mut TestRng(1 << 40), 2048).unwrap(),
            )
        })
    }

    fn rsa_sign(key: &rsa::PrivateKey, body: &[u8]) -> String {
        B64.encode(key.pkcs1v15_sign::<sha2::Sha256>(body).unwrap())
    }

    fn spki_pem(key: &rsa::PrivateKey) -> String {
        use rsa::pkcs8::EncodePublicKey;
        key.to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }

    fn ghl_verifier(rsa_pem: Option<String>) -> Verifier {
        let mut s = spec(VerifyMethod::Ghl);
        s.rsa_public_key_env = Some("GHL_WEBHOOK_RSA_PUBLIC_KEY".into());
        Verifier::new(&s, &move |n: &str| {
            (n == "GHL_WEBHOOK_RSA_PUBLIC_KEY")
                .then(|| rsa_pem.clone())
                .flatten()
        })
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const GHL_BODY: &[u8] = br#"{"type":"ContactCreate","timestamp":"2025-03-05T09:12:44.517Z"}"#;

    fn ghl_now() -> i64 {
        chrono::DateTime::parse_from_rfc3339("2025-03-05T09:13:00Z")
            .unwrap()
            .timestamp()
    }

    #[test]
    fn ghl_legacy_rsa_signature() {
        let (key, other) = rsa_keys();
        let v = ghl_verifier(Some(spki_pem(key)));
        let none = |_: &str| None;
        let sig = rsa_sign(key, GHL_BODY);
        let h = headers(&[("x-wh-signature", &sig)]);
        assert_eq!(v.verify(&h, None, GHL_BODY, ghl_now(), &none), Ok(()));
        let tampered = br#"{"type":"ContactCreate","timestamp":"2025-03-05T09:12:44.518Z"}"#;
        assert!(
            v.verify(&h, None, tampered, ghl_now(), &none)
                .unwrap_err()
                .to_string()
                .contains("x-wh-signature does not match")
        );
        let forged = headers(&[("x-wh-signature", &rsa_sign(other, GHL_BODY))]);
        assert!(v.verify(&forged, None, GHL_BODY, ghl_now(), &none).is_err());
        assert!(
            v.verify(
                &headers(&[("x-wh-signature", "@@")]),
                None,
                GHL_BODY,
                ghl_now(),
                &none
            )
            .unwrap_err()
            .to_string()
            .contains("not base64")
        );
        // The replay window applies to RSA-signed deliveries too.
        assert!(
            v.verify(&h, None, GHL_BODY, ghl_now() + 3600, &none)
                .unwrap_err()
                .to_string()
                .contains("old")
        );
    }

    #[test]
    fn ghl_rsa_key_may_be_pkcs1() {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let (key, _) = rsa_keys();
        let pem = key
            .to_public_key()
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        let v = ghl_verifier(Some(pem));
        let h = headers(&[("x-wh-signature", &rsa_sign(key, GHL_BODY))]);
        assert_eq!(v.verify(&h, None, GHL_BODY, ghl_now(), &|_| None), Ok(()));
    }

    #[test]
    fn ghl_ed25519_header_present_means_no_rsa_fallback() {
        let (key, _) = rsa_keys();
        let v = ghl_verifier(Some(spki_pem(key)));
        let bad_ed25519 = B64.encode([0u8; 64]);
        let h = headers(&[
            ("x-ghl-signature", &bad_ed25519),
            ("x-wh-signature", &rsa_sign(key, GHL_BODY)),
        ]);
        assert!(
            v.verify(&h, None, GHL_BODY, ghl_now(), &|_| None)
                .unwrap_err()
                .to_string()
                .contains("x-ghl-signature")
        );
    }

    #[test]
    fn ghl_rsa_without_a_configured_key_says_what_to_do() {
        let (key, _) = rsa_keys();
        let h = headers(&[("x-wh-signature", &rsa_sign(key, GHL_BODY))]);
        for v in [
            ghl_verifier(None),
            ghl_verifier(Some("  \n".into())),
            Verifier::new(&spec(VerifyMethod::Ghl), &|_| None).unwrap(),
        ] {
            let e = v
                .verify(&h, None, GHL_BODY, ghl_now(), &|_| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("GHL's published RSA public key"), "{e}");
            assert!(e.contains("x-ghl-signature"), "{e}");
        }
        let e = ghl_verifier(None)
            .verify(&h, None, GHL_BODY, ghl_now(), &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("set GHL_WEBHOOK_RSA_PUBLIC_KEY"), "{e}");
    }

    #[test]
    fn ghl_na_header_is_absent() {
        let (key, _) = rsa_keys();
        let v = ghl_verifier(Some(spki_pem(key)));
        let none = |_: &str| None;
        let sig = rsa_sign(key, GHL_BODY);
        let h = headers(&[("x-ghl-signature", "N/A"), ("x-wh-signature", &sig)]);
        assert_eq!(v.verify(&h, None, GHL_BODY, ghl_now(), &none), Ok(()));
        let h = headers(&[("x-ghl-signature", "N/A"), ("x-wh-signature", "N/A")]);
        assert!(
            v.verify(&h, None, GHL_BODY, ghl_now(), &none)
                .unwrap_err()
                .to_string()
                .contains("missing x-ghl-signature")
        );
        assert!(
            v.verify(&HeaderMap::new(), None, GHL_BODY, ghl_now(), &none)
                .unwrap_err()
                .to_string()
                .contains("missing x-ghl-signature")
        );
    }

    #[test]
    fn ghl_bad_rsa_pem_names_the_variable() {
        let mut s = spec(VerifyMethod::Ghl);
        s.rsa_public_key_env = Some("GHL_WEBHOOK_RSA_PUBLIC_KEY".into());
        let truncated = "-----BEGIN PUBLIC KEY-----\nMIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC\n-----END PUBLIC KEY-----\n";
        for pem in [truncated, "not a key", GHL_ED25519_PUBLIC_KEY] {
            let e = Verifier::new(&s, &|n: &str| {
                (n == "GHL_WEBHOOK_RSA_PUBLIC_KEY").then(|| pem.to_string())
            })
            .err()
            .unwrap();
            assert!(e.to_string().contains("GHL_WEBHOOK_RSA_PUBLIC_KEY"), "{e}");
        }
    }
}
