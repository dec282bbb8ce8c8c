//! What the console may show of stored data.
//!
//! Two kinds of masking. Secrets (tokens, signatures, keys, passwords,
//! `Authorization`) are replaced by `***` always: no click reveals them.
//! Personal data (phone numbers and emails) is shortened to a hint unless
//! the operator asked to reveal one event's or one customer's data.
//!
//! Detection is by field name where there is one (`phone`, `email`, …) and
//! by shape in free text (sync-log requests, errors), so a value is caught
//! wherever a payload or a target puts it. A false positive only hides a
//! value; a false negative would show one, so the shapes are generous.

use serde_json::Value;

/// What every masked secret reads as.
pub const SECRET: &str = "***";

/// Field names whose values are secrets (compared in lower case, by substring).
const SECRET_NAMES: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "private_key",
    "cookie",
    "credential",
];

/// Field names whose values are personal data.
const PERSONAL_NAMES: &[&str] = &["phone", "email", "mobile", "e-mail"];

/// Whether a field of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| lower.contains(s))
}

fn is_personal_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    PERSONAL_NAMES.iter().any(|s| lower.contains(s))
}

/// A hint of an email: first letter of the mailbox and of the domain, and the top-level domain.
fn hint_email(email: &str) -> String {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return "•••".into();
    };
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let tld = domain.rsplit_once('.').map(|(_, t)| t).unwrap_or("");
    format!("{}•••@{}•••.{tld}", first(local), first(domain))
}

/// A hint of a phone number: its last two digits.
fn hint_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 4 {
        return "•••".into();
    }
    let tail: String = digits[digits.len() - 2..].iter().collect();
    format!("•••••{tail}")
}

fn hint_other(value: &str) -> String {
    if value.contains('@') {
        hint_email(value)
    } else if value.chars().any(|c| c.is_ascii_digit()) {
        hint_phone(value)
    } else {
        "•••".into()
    }
}

fn looks_like_email(word: &str) -> bool {
    match word.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }
        None => false,
    }
}

fn looks_like_phone(word: &str) -> bool {
    let digits = word.chars().filter(|c| c.is_ascii_digit()).count();
    let only_phone_chars = word
        .chars()
        .all(|c| c.is_ascii_digit() || "+-(). ".contains(c));
    // E.164 (`+15551234567`), or a long run of digits as a national number.
    only_phone_chars
        && ((word.starts_with('+') && (7..=15).contains(&digits))
            || (word.chars().all(|c| c.is_ascii_digit()) && (10..=15).contains(&digits)))
}

/// A JSON value as the console shows it: secrets always masked, personal
/// data masked unless `reveal`.
pub fn value(v: &Value, reveal: bool) -> Value {
    walk(v, None, reveal)
}

fn walk(v: &Value, key: Option<&str>, reveal: bool) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), walk(v, Some(k), reveal)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, key, reveal)).collect()),
        Value::Null | Value::Bool(_) => v.clone(),
        scalar => {
            if key.is_some_and(is_secret_name) {
                return Value::String(SECRET.into());
            }
            let text = match scalar {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !reveal && key.is_some_and(is_personal_name) && !text.is_empty() {
                return Value::String(hint_other(&text));
            }
            match scalar {
                Value::String(s) => Value::String(text_of(s, reveal)),
                other => other.clone(),
            }
        }
    }
}

/// Free text (a logged request, an error) as the console shows it:
/// secrets in `name=value` pairs, `"name": "value"` pairs and `Bearer`
/// credentials masked always; emails and phone numbers unless `reveal`.
pub fn text_of(text: &str, reveal: bool) -> String {
    let text = mask_bearer(text);
    let text = mask_pairs(&text);
    if reveal {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_email(word) {
            out.push_str(&hint_email(word));
        } else if looks_like_phone(word) {
            out.push_str(&hint_phone(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || "._%+-@".contains(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `Bearer abc` → `Bearer ***`.
fn mask_bearer(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("Bearer ") {
        out.push_str(&rest[..at + "Bearer ".len()]);
        out.push_str(SECRET);
        rest = &rest[at + "Bearer ".len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The values of secret-named `name=value` (query strings, forms) and
/// `"name": "value"` (JSON in text) pairs.
fn mask_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        out.push(chars[i]);
        let separator = chars[i] == '=' || chars[i] == ':';
        i += 1;
        if !separator {
            continue;
        }
        // The name just before the separator (quotes and spaces skipped).
        let mut j = out.chars().count().saturating_sub(1);
        let before: Vec<char> = out.chars().collect();
        while j > 0 && matches!(before[j - 1], '"' | ' ') {
            j -= 1;
        }
        let mut k = j;
        while k > 0 && (before[k - 1].is_alphanumeric() || "_-".contains(before[k - 1])) {
            k -= 1;
        }
        let name: String = before[k..j].iter().collect();
        if name.is_empty() || !is_secret_name(&name) {
            continue;
        }
        // Skip spaces and an opening quote, then mask up to the value's end.
        while i < chars.len() && chars[i] == ' ' {
            out.push(' ');
            i += 1;
        }
        let quoted = i < chars.len() && chars[i] == '"';
        if quoted {
            out.push('"');
            i += 1;
        }
        let start = i;
        while i < chars.len() {
            let c = chars[i];
            let end = if quoted {
                c == '"'
            } else {
                c == '&' || c == ',' || c == '}' || c == '"' || c.is_whitespace()
            };
            if end {
                break;
            }
            i += 1;
        }
        if i > start {
            out.push_str(SECRET);
        }
    }
    out
}

/// The stored request headers as the console shows them: signature,
/// token and authorization headers masked always.
pub fn headers(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if is_secret_name(&k) || k.to_ascii_lowercase().contains("sig") {
                        Value::String(SECRET.into())
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect(),
        ),
        _ => Value::Object(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_even_when_revealing() {
        let v = json!({"token": "abc", "nested": {"apiKey": "k", "Signature": "s"}, "name": "Ann"});
        for reveal in [false, true] {
            let m = value(&v, reveal);
            assert_eq!(m["token"], "***");
            assert_eq!(m["nested"]["apiKey"], "***");
            assert_eq!(m["nested"]["Signature"], "***");
            assert_eq!(m["name"], "Ann");
        }
        assert_eq!(
            text_of("GET /x?token=abc&id=7 Authorization: Bearer xyz", true),
            "GET /x?token=***&id=7 Authorization: *** ***"
        );
        assert_eq!(
            text_of("sent with Bearer xyz.1", true),
            "sent with Bearer ***"
        );
        assert_eq!(
            text_of(r#"{"api_key": "k1", "n": 1}"#, true),
            r#"{"api_key": "***", "n": 1}"#
        );
    }

    #[test]
    fn personal_data_is_hinted_unless_revealed() {
        let v = json!({"email": "ann@example.com", "phoneNumber": "(555) 123-4567",
                       "note": "call +15551234567 or mail bob@example.org"});
        let m = value(&v, false);
        assert_eq!(m["email"], "a•••@e•••.com");
        assert_eq!(m["phoneNumber"], "•••••67");
        assert_eq!(m["note"], "call •••••67 or mail b•••@e•••.org");
        assert_eq!(value(&v, true), v);
    }

    #[test]
    fn ids_and_amounts_are_left_alone() {
        assert_eq!(
            text_of("cus_1001 spent 25.50 at 2025-03-01", false),
            "cus_1001 spent 25.50 at 2025-03-01"
        );
    }

    #[test]
    fn signature_headers_are_masked() {
        let h = headers(
            r#"{"x-wh-signature": "abc", "content-type": "application/json", "webhook-signature": "v1,x"}"#,
        );
        assert_eq!(h["x-wh-signature"], "***");
        assert_eq!(h["webhook-signature"], "***");
        assert_eq!(h["content-type"], "application/json");
    }
}
