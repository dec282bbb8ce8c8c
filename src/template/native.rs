//! Native evaluation of the template shapes mappings use most, so a plan does
//! not run the template VM for `{{ phone | e164 }}` or `/contacts/{{ customer.id }}`.
//!
//! Only the happy path is handled here: whenever a value is of a kind these
//! functions do not expect, evaluation falls back to the compiled minijinja
//! template, so results are always those of minijinja itself (a unit test
//! compares both on many inputs).

use super::filters;
use minijinja::value::{Value, ValueKind};

/// One step of a plain lookup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Attr(String),
    Index(usize),
}

/// A filter argument: a literal or a path.
#[derive(Debug, Clone)]
pub enum Arg {
    Lit(Value),
    Path(Vec<Step>),
}

/// Filters evaluated natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Trim,
    Lower,
    Upper,
    String,
    Number,
    AbsInt,
    Digits,
    Email,
    E164,
    Date,
    Datetime,
    Unix,
    Default,
    Items,
}

/// A filter call of a pipeline.
#[derive(Debug, Clone)]
pub struct Call {
    pub kind: Kind,
    pub args: Vec<Arg>,
}

/// What native evaluation found.
pub enum Outcome {
    Value(Value),
    /// A value the pipeline needs is missing.
    Missing,
    /// Not a shape handled here: run the template.
    Fallback,
}

/// Settings our filters read when called without arguments.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub phone_region: String,
    pub time_zone: String,
}

/// Evaluates `base | f1 | f2(args)`, reading paths through `resolve`.
pub fn pipeline_with(
    resolve: &dyn Fn(&[Step]) -> Option<Value>,
    base: &[Step],
    calls: &[Call],
    defaults: &Defaults,
) -> Outcome {
    let mut cur = resolve(base);
    for call in calls {
        if call.kind == Kind::Default {
            if cur.is_none() {
                cur = match call.args.first() {
                    Some(Arg::Lit(v)) => Some(v.clone()),
                    Some(Arg::Path(p)) => resolve(p),
                    None => return Outcome::Fallback,
                };
            }
            continue;
        }
        let Some(value) = cur.take() else {
            return Outcome::Missing;
        };
        cur = match apply(call, value, resolve, defaults) {
            Applied::Value(v) if v.is_undefined() => return Outcome::Missing,
            Applied::Value(v) => Some(v),
            Applied::Fallback => return Outcome::Fallback,
        };
    }
    match cur {
        None => Outcome::Missing,
        Some(v) if v.is_none() => Outcome::Fallback,
        Some(v) => Outcome::Value(v),
    }
}

enum Applied {
    Value(Value),
    Fallback,
}

fn str_arg(call: &Call, resolve: &dyn Fn(&[Step]) -> Option<Value>) -> Option<Option<String>> {
    match call.args.first() {
        None => Some(None),
        Some(Arg::Lit(v)) => v.as_str().map(|s| Some(s.to_string())),
        Some(Arg::Path(p)) => resolve(p).and_then(|v| v.as_str().map(|s| Some(s.to_string()))),
    }
}

fn apply(
    call: &Call,
    value: Value,
    resolve: &dyn Fn(&[Step]) -> Option<Value>,
    d: &Defaults,
) -> Applied {
    use Applied::{Fallback, Value as V};
    let is_str = value.kind() == ValueKind::String;
    match call.kind {
        Kind::Trim | Kind::Lower | Kind::Upper if !is_str || !call.args.is_empty() => Fallback,
        Kind::Trim => V(Value::from(value.as_str().unwrap_or("").trim())),
        Kind::Lower => V(Value::from(value.as_str().unwrap_or("").to_lowercase())),
        Kind::Upper => V(Value::from(value.as_str().unwrap_or("").to_uppercase())),
        Kind::String => match value.kind() {
            ValueKind::String => V(value),
            ValueKind::Number | ValueKind::Bool => V(Value::from(value.to_string())),
            _ => Fallback,
        },
        Kind::Number => V(filters::number(value)),
        Kind::AbsInt => V(filters::abs_int(value)),
        Kind::Digits => V(filters::digits(value)),
        Kind::Email => V(filters::email(value)),
        Kind::E164 => match str_arg(call, resolve) {
            Some(region) => V(filters::e164_with(
                &value,
                region.as_deref().unwrap_or(&d.phone_region),
            )),
            None => Fallback,
        },
        Kind::Date | Kind::Datetime | Kind::Unix if !call.args.is_empty() => Fallback,
        Kind::Date => V(filters::date_with(&value, &d.time_zone)),
        Kind::Datetime => V(filters::datetime_with(&value, &d.time_zone)),
        Kind::Unix => V(filters::unix_with(&value, &d.time_zone)),
        Kind::Items if value.kind() == ValueKind::Map && call.args.is_empty() => {
            let Ok(keys) = value.try_iter() else {
                return Fallback;
            };
            V(Value::from(
                keys.map(|k| {
                    let v = value.get_item(&k).unwrap_or(Value::UNDEFINED);
                    Value::from(vec![k, v])
                })
                .collect::<Vec<_>>(),
            ))
        }
        Kind::Items | Kind::Default => Fallback,
    }
}

/// Parses `a.b | f1 | f2('x', c.d)` when every filter is native and every
/// argument a literal or a path; `None` otherwise.
pub fn parse_pipeline(expr: &str) -> Option<(Vec<Step>, Vec<Call>)> {
    let parts = split_top_level(expr, '|')?;
    let mut iter = parts.into_iter();
    let base = plain_path(iter.next()?.trim())?;
    let mut calls = Vec::new();
    for part in iter {
        let part = part.trim();
        let (name, args) = match part.split_once('(') {
            Some((name, rest)) => (name.trim(), Some(rest.strip_suffix(')')?)),
            None => (part, None),
        };
        let kind = match name {
            "trim" => Kind::Trim,
            "lower" => Kind::Lower,
            "upper" => Kind::Upper,
            "string" => Kind::String,
            "number" => Kind::Number,
            "abs_int" => Kind::AbsInt,
            "digits" => Kind::Digits,
            "email" => Kind::Email,
            "e164" => Kind::E164,
            "date" => Kind::Date,
            "datetime" => Kind::Datetime,
            "unix" => Kind::Unix,
            "default" | "d" => Kind::Default,
            "items" => Kind::Items,
            _ => return None,
        };
        let mut parsed_args = Vec::new();
        if let Some(args) = args.filter(|a| !a.trim().is_empty()) {
            for arg in split_top_level(args, ',')? {
                parsed_args.push(parse_arg(arg.trim())?);
            }
        }
        if kind == Kind::Default && parsed_args.len() != 1 {
            return None;
        }
        calls.push(Call {
            kind,
            args: parsed_args,
        });
    }
    if calls.is_empty() {
        return None;
    }
    Some((base, calls))
}

fn parse_arg(arg: &str) -> Option<Arg> {
    for q in ['\'', '"'] {
        if let Some(inner) = arg.strip_prefix(q).and_then(|a| a.strip_suffix(q)) {
            if inner.contains(q) || inner.contains('\\') {
                return None;
            }
            return Some(Arg::Lit(Value::from(inner)));
        }
    }
    if let Ok(i) = arg.parse::<i64>() {
        return Some(Arg::Lit(Value::from(i)));
    }
    if arg.contains('=') {
        return None;
    }
    plain_path(arg).map(Arg::Path)
}

/// Splits on `sep` outside quotes and brackets; `None` on unbalanced input.
fn split_top_level(text: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                c if c == sep && depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            },
        }
    }
    if depth != 0 || quote.is_some() {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// A template identifier.
pub fn is_ident(p: &str) -> bool {
    let mut chars = p.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `a.b[1].c` → steps, when the expression is only names, dots and integer indexes.
pub fn plain_path(expr: &str) -> Option<Vec<Step>> {
    let reserved = ["true", "false", "none", "True", "False", "None"];
    if reserved.contains(&expr) {
        return None;
    }
    let mut steps = Vec::new();
    for part in expr.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !is_ident(name) {
            return None;
        }
        steps.push(Step::Attr(name.to_string()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            steps.push(Step::Index(index.trim().parse().ok()?));
            rest = match after.strip_prefix('[') {
                Some(next) => next,
                None if after.is_empty() => "",
                None => return None,
            };
        }
    }
    Some(steps)
}

/// A piece of text interpolation.
#[derive(Debug, Clone)]
pub enum Piece {
    Text(String),
    Path(Vec<Step>),
}

/// Parses `"/contacts/{{ customer.id }}/tags"` into pieces when every
/// `{{ }}` holds a plain path and there is no `{% %}` or `{# #}`.
pub fn parse_interpolation(text: &str) -> Option<Vec<Piece>> {
    if text.contains("{%") || text.contains("{#") {
        return None;
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        pieces.push(Piece::Path(plain_path(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Some(pieces)
}

/// Renders interpolation pieces as minijinja prints them, reading paths through `resolve`.
pub fn interpolate_with(resolve: &dyn Fn(&[Step]) -> Option<Value>, pieces: &[Piece]) -> Outcome {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Path(p) => match resolve(p) {
                None => return Outcome::Missing,
                Some(v) => match v.kind() {
                    ValueKind::String | ValueKind::Number | ValueKind::Bool => {
                        out.push_str(&v.to_string())
                    }
                    _ => return Outcome::Fallback,
                },
            },
        }
    }
    Outcome::Value(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelines() {
        let (base, calls) = parse_pipeline("card_status | default('installed') | lower").unwrap();
        assert_eq!(base, vec![Step::Attr("card_status".into())]);
        assert_eq!(
            calls.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![Kind::Default, Kind::Lower]
        );
        assert!(parse_pipeline("installed | default(occurred_at) | date").is_some());
        assert!(parse_pipeline("phone | e164('GB')").is_some());
        assert!(parse_pipeline("x | date(tz='America/Los_Angeles')").is_none());
        assert!(parse_pipeline("x | join(', ')").is_none());
        assert!(parse_pipeline("x + 1 | lower").is_none());
        assert!(parse_pipeline("x").is_none());
    }

    #[test]
    fn parses_interpolations() {
        let p = parse_interpolation("/contacts/{{ customer.id }}/tags").unwrap();
        assert_eq!(p.len(), 3);
        assert!(parse_interpolation("{{ a | lower }}x").is_none());
        assert!(parse_interpolation("{% if a %}x{% endif %}").is_none());
    }
}
