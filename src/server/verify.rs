//! Webhook verification, as each source profile declares it. Always over the
//! raw body bytes, comparing in constant time.

use crate::config::model::{
    HmacAlgorithm, SignatureEncoding, SignedPart, VerifyMethod, VerifySpec,
};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};

/// GHL's published Ed25519 key for `x-ghl-signature` (reference ghl-api.md §7.2).
pub const GHL_ED25519_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=\n-----END PUBLIC KEY-----\n";

/// Default tolerance for signed timestamps.
const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// A source's verification, with its secrets resolved.
pub struct Verifier {
    spec: VerifySpec,
    secret: Option<Vec<u8>>,
    ed25519: Option<ed25519_dalek::VerifyingKey>,
}

/// Why a webhook was refused; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl Verifier {
    /// Resolves secrets through `env`; names the variable that is missing.
    pub fn new(
        spec: &VerifySpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Verifier, String> {
        let mut secret = None;
        let mut ed25519 = None;
        match spec.method {
            VerifyMethod::None => {}
            VerifyMethod::Token | VerifyMethod::Hmac | VerifyMethod::StandardWebhooks => {
                let var = spec.secret_env.as_deref().unwrap_or("");
                let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!("environment variable {var} is not set (the webhook secret)")
                })?;
                secret = Some(if spec.method == VerifyMethod::StandardWebhooks {
                    let b64 = value.strip_prefix("whsec_").unwrap_or(&value);
                    B64.decode(b64)
                        .map_err(|e| format!("{var} is not a base64 `whsec_…` secret: {e}"))?
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
                        format!("the GHL Ed25519 public key is not a PEM public key: {e}")
                    })?,
                );
            }
        }
        Ok(Verifier {
            spec: spec.clone(),
            secret,
            ed25519,
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
            VerifyMethod::Token => {
                let from_header = spec
                    .header
                    .as_deref()
                    .and_then(|h| header(headers, h))
                    .map(str::to_string);
                let from_query = spec.query.as_deref().and_then(|q| query_param(query, q));
                let Some(token) = from_header.or(from_query) else {
                    return Err(Refused(format!(
                        "missing token: send it in the {} header or the `{}` query parameter",
                        spec.header.as_deref().unwrap_or("(none)"),
                        spec.query.as_deref().unwrap_or("(none)")
                    )));
                };
                if ct_eq(token.as_bytes(), secret) {
                    Ok(())
                } else {
                    Err(Refused("the webhook token does not match".into()))
                }
            }
            VerifyMethod::Hmac => {
                let name = spec.header.as_deref().unwrap_or("");
                let Some(given) = header(headers, name) else {
                    return Err(Refused(format!("missing signature header {name}")));
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
                            Refused(format!("the signed form field `{field}` is missing"))
                        })?
                        .into_bytes(),
                    _ => body.to_vec(),
                };
                if let Some(ts_header) = &spec.timestamp_header {
                    let ts = header(headers, ts_header)
                        .ok_or_else(|| Refused(format!("missing timestamp header {ts_header}")))?;
                    check_age(ts, now, spec.tolerance_seconds)?;
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
                    Err(Refused(format!(
                        "the {name} signature does not match the body"
                    )))
                }
            }
            VerifyMethod::StandardWebhooks => {
                let id = header(headers, "webhook-id")
                    .ok_or_else(|| Refused("missing webhook-id header".into()))?;
                let ts = header(headers, "webhook-timestamp")
                    .ok_or_else(|| Refused("missing webhook-timestamp header".into()))?;
                let signatures = header(headers, "webhook-signature")
                    .ok_or_else(|| Refused("missing webhook-signature header".into()))?;
                check_age(ts, now, spec.tolerance_seconds)?;
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
                    Err(Refused("no webhook-signature matches the body".into()))
                }
            }
            VerifyMethod::Ghl => {
                let Some(sig) = header(headers, "x-ghl-signature") else {
                    return Err(Refused(if header(headers, "x-wh-signature").is_some() {
                        "only the legacy x-wh-signature (RSA) was sent; mapper verifies x-ghl-signature (Ed25519), which GHL sends with every webhook".into()
                    } else {
                        "missing x-ghl-signature header".into()
                    }));
                };
                let bytes = B64
                    .decode(sig.trim())
                    .map_err(|_| Refused("x-ghl-signature is not base64".into()))?;
                let signature = ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| {
                    Refused("x-ghl-signature is not a 64-byte Ed25519 signature".into())
                })?;
                let key = self
                    .ed25519
                    .as_ref()
                    .ok_or_else(|| Refused("no GHL public key".into()))?;
                key.verify_strict(body, &signature)
                    .map_err(|_| Refused("x-ghl-signature does not match the body".into()))?;
                // A signed but old delivery is a replay.
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
                    && let Some(ts) = v.get("timestamp").and_then(|t| t.as_str())
                    && let Some(at) = crate::engine::filters::parse_timestamp_str(ts, "UTC")
                {
                    let age = now - at.timestamp();
                    let tolerance =
                        spec.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS) as i64;
                    if age > tolerance {
                        return Err(Refused(format!(
                            "the webhook timestamp is {age} s old (more than {tolerance} s)"
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

fn check_age(ts: &str, now: i64, tolerance: Option<u64>) -> Result<(), Refused> {
    let at: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Refused(format!("timestamp `{ts}` is not unix seconds")))?;
    let tolerance = tolerance.unwrap_or(DEFAULT_TOLERANCE_SECONDS) as i64;
    if (now - at).abs() > tolerance {
        return Err(Refused(format!(
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
        assert!(e.contains("SECRET"), "{e}");
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
                .0
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
                .0
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
                .0
                .contains("old")
        );
        assert!(v.verify(&h, None, br#"{"type":"x"}"#, at, &none).is_err());
        // The built-in key is GHL's published one and parses.
        assert!(Verifier::new(&spec(VerifyMethod::Ghl), &|_| None).is_ok());
    }
}
