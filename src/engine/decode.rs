//! Turning a webhook body into JSON, as the source profile says it is encoded.

use crate::program::{BodyFormat, BodySpec};
use serde_json::Value;
use std::fmt;

/// Default largest body: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// Why a body could not be decoded. Each says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// Malformed JSON, with the parser's 1-based line and column.
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A form body without the field that holds the JSON.
    MissingFormField {
        field: String,
    },
    NotUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { size, limit } => {
                write!(f, "body is {size} bytes, over the limit of {limit} bytes")
            }
            DecodeError::Json {
                line,
                column,
                message,
            } => {
                write!(
                    f,
                    "malformed JSON at line {line}, column {column}: {message}"
                )
            }
            DecodeError::MissingFormField { field } => write!(
                f,
                "form-encoded body has no field `{field}` (the source sends its JSON there)"
            ),
            DecodeError::NotUtf8 => write!(f, "body is not UTF-8 text"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a raw body.
pub fn decode(body: &[u8], spec: &BodySpec) -> Result<Value, DecodeError> {
    let limit = spec.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if body.len() as u64 > limit {
        return Err(DecodeError::TooLarge {
            size: body.len() as u64,
            limit,
        });
    }
    match spec.format {
        // A form source that posts plain JSON (some SlickText setups do) is read as JSON.
        BodyFormat::Form if !reads_as_json(body) => {
            let field = spec.field.as_deref().unwrap_or("data");
            let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
            let value = form_field(text, field).ok_or_else(|| DecodeError::MissingFormField {
                field: field.to_string(),
            })?;
            parse_json(value.as_bytes(), spec.lenient)
        }
        _ => parse_json(body, spec.lenient),
    }
}

/// Whether a form source's body is read as JSON rather than as a form.
fn reads_as_json(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()).copied() == Some(b'{')
}

/// The decoded value of one field of an `application/x-www-form-urlencoded`
/// body; none when [`decode`] reads the body as JSON. Verification signs
/// this field, so it must be the very text that is decoded: a JSON body
/// carrying a captured `&data=…&` pair inside one of its strings would
/// otherwise pass with that pair's signature while its own JSON is stored.
pub fn form_field(body: &str, field: &str) -> Option<String> {
    if reads_as_json(body.as_bytes()) {
        return None;
    }
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k)? == field)
            .then(|| decode_component(v))
            .flatten()
    })
}

fn decode_component(s: &str) -> Option<String> {
    urlencoding::decode(&s.replace('+', " "))
        .ok()
        .map(|c| c.into_owned())
}

fn parse_json(bytes: &[u8], lenient: bool) -> Result<Value, DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => Ok(v),
        Err(e) => {
            if lenient
                && let Ok(text) = std::str::from_utf8(bytes)
                && let Some(fixed) = single_to_double_quotes(text)
                && let Ok(v) = serde_json::from_str::<Value>(&fixed)
            {
                return Ok(v);
            }
            Err(DecodeError::Json {
                line: e.line(),
                column: e.column(),
                message: e
                    .to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            })
        }
    }
}

/// Rewrites `'text'` strings to `"text"` outside double-quoted strings.
/// Returns `None` when there was nothing to rewrite.
pub fn single_to_double_quotes(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut in_double = false;
    let mut in_single = false;
    let mut changed = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_double || in_single => {
                if let Some(n) = chars.next() {
                    if in_single && n == '\'' {
                        out.push('\'');
                    } else {
                        out.push('\\');
                        out.push(n);
                    }
                }
            }
            '"' if in_single => out.push_str("\\\""),
            '"' => {
                in_double = !in_double;
                out.push(c);
            }
            '\'' if !in_double => {
                in_single = !in_single;
                changed = true;
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_errors_have_positions() {
        let spec = BodySpec::default();
        let e = decode(b"{\n  \"a\": 1,\n  oops\n}", &spec).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Json {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn lenient_accepts_single_quotes() {
        let spec = BodySpec {
            lenient: true,
            ..Default::default()
        };
        let v = decode(br#"{"Email": 'it''s@x.com', "b": "say 'hi'"}"#, &spec);
        assert!(v.is_err(), "adjacent quotes are not valid even leniently");
        let v = decode(br#"{"Email": 'test@test.com', "b": "say 'hi'"}"#, &spec).unwrap();
        assert_eq!(v, json!({"Email": "test@test.com", "b": "say 'hi'"}));
        let strict = BodySpec::default();
        assert!(decode(br#"{"Email": 'x'}"#, &strict).is_err());
    }

    #[test]
    fn form_field_holds_json() {
        let spec = BodySpec {
            format: BodyFormat::Form,
            field: Some("data".into()),
            ..Default::default()
        };
        let v = decode(
            b"data=%7B%22Event%22%3A%22LoyaltyEventCreated%22%2C%22n%22%3A+1%7D&x=1",
            &spec,
        )
        .unwrap();
        assert_eq!(v, json!({"Event": "LoyaltyEventCreated", "n": 1}));
        assert_eq!(
            decode(b"x=1", &spec),
            Err(DecodeError::MissingFormField {
                field: "data".into()
            })
        );
        assert_eq!(decode(br#"{"a":1}"#, &spec).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn a_json_body_has_no_form_fields() {
        // The signed `data` pair of a real delivery, smuggled into a string
        // of a JSON body that says something else.
        let body = r#"{"Event":"LoyaltyEventDeleted","x":"&data=%7B%22Event%22%3A%22LoyaltyEventCreated%22%7D&"}"#;
        assert_eq!(form_field(body, "data"), None);
        assert_eq!(form_field(&format!(" \n{body}"), "data"), None);
        // A form body still has them, whatever its values hold.
        assert_eq!(
            form_field("data=%7B%7D&x=%7B", "data").as_deref(),
            Some("{}")
        );
    }

    #[test]
    fn size_limit() {
        let spec = BodySpec {
            max_bytes: Some(4),
            ..Default::default()
        };
        assert!(matches!(
            decode(b"[1,2,3]", &spec),
            Err(DecodeError::TooLarge { size: 7, limit: 4 })
        ));
    }
}
