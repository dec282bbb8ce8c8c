//! The filters an integrator needs on top of minijinja's built-ins:
//! phone numbers to E.164, emails, dates in the shapes the platforms send,
//! numbers from strings, and list helpers.
//!
//! A filter that cannot make sense of its input returns *undefined* rather
//! than a wrong value: the field that uses it is then left out (or the event
//! fails, if the selector said `missing: fail`), never written as garbage.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// Names of the filters added here, for README and `mapper check`.
pub const FILTERS: &[&str] = &[
    "e164",
    "digits",
    "email",
    "datetime",
    "date",
    "unix",
    "format_date",
    "number",
    "compact",
    "split_list",
    "pick",
    "abs_int",
];

/// What a filter gives back, as `mapper check` follows types through
/// templates. Kept beside the registration so a new filter gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterYield {
    /// Text (a string of no particular shape).
    Text,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A point in time, RFC 3339.
    DateTime,
    /// A number.
    Number,
    /// A list.
    List,
    /// Whatever the input holds: not judged.
    Any,
}

/// The yield of each filter of [`FILTERS`] (a filter that cannot read its
/// input yields *missing*, which the checker never holds against a type).
pub const FILTER_YIELDS: &[(&str, FilterYield)] = &[
    ("e164", FilterYield::Text),
    ("digits", FilterYield::Text),
    ("email", FilterYield::Text),
    ("datetime", FilterYield::DateTime),
    ("date", FilterYield::Date),
    ("unix", FilterYield::Number),
    ("format_date", FilterYield::Text),
    ("number", FilterYield::Number),
    ("compact", FilterYield::List),
    ("split_list", FilterYield::List),
    ("pick", FilterYield::Any),
    ("abs_int", FilterYield::Number),
];

/// Registers our filters on an environment.
pub fn register(env: &mut Environment<'_>) {
    env.add_filter("e164", e164);
    env.add_filter("digits", digits);
    env.add_filter("email", email);
    env.add_filter("datetime", datetime);
    env.add_filter("date", date);
    env.add_filter("unix", unix);
    env.add_filter("format_date", format_date);
    env.add_filter("number", number);
    env.add_filter("compact", compact);
    env.add_filter("split_list", split_list);
    env.add_filter("pick", pick);
    env.add_filter("abs_int", abs_int);
}

fn region_of(state: &State, region: Option<String>) -> String {
    region
        .or_else(|| {
            state
                .lookup("defaults")
                .and_then(|d| d.get_attr("phone_region").ok())
                .and_then(|v| v.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| "US".to_string())
}

/// `"(415) 555-2671" | e164` → `"+14155552671"`; `e164("GB")` sets the region
/// for numbers without a country code. Invalid numbers give undefined.
pub fn e164(state: &State, value: Value, region: Option<String>) -> Result<Value, Error> {
    let region = region_of(state, region);
    Ok(e164_with(&value, &region))
}

/// [`e164`] with an explicit default region.
pub fn e164_with(value: &Value, region: &str) -> Value {
    let Some(raw) = scalar_text(value) else {
        return Value::UNDEFINED;
    };
    normalize_phone(&raw, region)
        .map(Value::from)
        .unwrap_or(Value::UNDEFINED)
}

/// Normalises a phone number to E.164, or `None` when it cannot be one.
///
/// A number is kept when libphonenumber finds it valid, or when its length is
/// possible for its country: a number on an area code that is not assigned yet
/// (SlickText's sample `+12222222222`) is still somebody's matching key.
/// Results are memoised: parsing is regex-heavy and the same customers recur.
pub fn normalize_phone(raw: &str, region: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || !trimmed.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let key = (trimmed.to_string(), region.to_string());
    if let Ok(cache) = PHONE_CACHE.lock()
        && let Some(hit) = cache.get(&key)
    {
        return hit.clone();
    }
    let result = parse_phone(trimmed, region);
    if let Ok(mut cache) = PHONE_CACHE.lock() {
        if cache.len() >= PHONE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, result.clone());
    }
    result
}

const PHONE_CACHE_LIMIT: usize = 50_000;

type PhoneCache = std::collections::HashMap<(String, String), Option<String>>;

static PHONE_CACHE: std::sync::LazyLock<std::sync::Mutex<PhoneCache>> =
    std::sync::LazyLock::new(Default::default);

fn parse_phone(trimmed: &str, region: &str) -> Option<String> {
    // With a country code the default region must not be consulted: the
    // phonenumber crate would strip the region's national prefix (GB's `0`)
    // from an international number (+39 06… → +39 6…).
    let id: Option<phonenumber::country::Id> = if trimmed.starts_with('+') {
        None
    } else {
        region.to_ascii_uppercase().parse().ok()
    };
    let parsed = phonenumber::parse(id, trimmed).ok()?;
    if !phonenumber::is_valid(&parsed) {
        let national_digits = parsed.national().to_string().len() as u16;
        // The country's first region carries the lengths of its fixed-line and mobile numbers.
        let possible = phonenumber::metadata::DATABASE
            .by_code(&parsed.code().value())
            .and_then(|metas| metas.first().copied())
            .is_some_and(|meta| {
                let d = meta.descriptors();
                [Some(d.general()), d.fixed_line(), d.mobile()]
                    .into_iter()
                    .flatten()
                    .any(|desc| desc.possible_length().contains(&national_digits))
            });
        if !possible {
            return None;
        }
    }
    let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
    // A match key must be a fixed point: odd numbers (leading zeros in the
    // national part) can format to a string that parses as another number.
    let again = phonenumber::parse(None, &e164).ok()?;
    (again.format().mode(phonenumber::Mode::E164).to_string() == e164).then_some(e164)
}

/// Keeps the digits only (seed 000's rule; not used for matching, see README).
pub fn digits(value: Value) -> Value {
    match scalar_text(&value) {
        Some(s) => Value::from(s.chars().filter(char::is_ascii_digit).collect::<String>()),
        None => Value::UNDEFINED,
    }
}

/// Trims and lowercases an email address; undefined when it is not one.
pub fn email(value: Value) -> Value {
    match scalar_text(&value).and_then(|s| normalize_email(&s)) {
        Some(s) => Value::from(s),
        None => Value::UNDEFINED,
    }
}

/// Normalises an email for matching (trim, lowercase), or `None` when it is not an address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    let (local, domain) = s.split_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || s.contains(char::is_whitespace)
    {
        return None;
    }
    Some(s)
}

/// Parses a timestamp in any of the shapes the platforms send.
///
/// Accepted: RFC 3339 / ISO-8601 with fractions (up to 9 digits) and offsets;
/// ISO without offset; `YYYY-MM-DD HH:MM:SS`; `YYYY-MM-DD`; unix seconds or
/// milliseconds as number or digit string. Times without an offset are read in
/// `tz` (IANA name, default UTC).
pub fn parse_timestamp(value: &Value, tz: &str) -> Option<DateTime<Utc>> {
    match value.kind() {
        ValueKind::Number => {
            let f = f64::try_from(value.clone()).ok()?;
            from_epoch(f)
        }
        ValueKind::String => parse_timestamp_str(value.as_str()?, tz),
        _ => None,
    }
}

fn from_epoch(f: f64) -> Option<DateTime<Utc>> {
    if !f.is_finite() {
        return None;
    }
    // Values past year 33658 in seconds are taken as milliseconds.
    let millis = if f.abs() >= 1e12 { f } else { f * 1000.0 };
    DateTime::from_timestamp_millis(millis as i64)
}

/// String form of [`parse_timestamp`].
pub fn parse_timestamp_str(raw: &str, tz: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return from_epoch(s.parse::<f64>().ok()?);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(dt.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%m/%d/%Y")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    localize(naive, tz)
}

fn localize(naive: NaiveDateTime, tz: &str) -> Option<DateTime<Utc>> {
    if tz.eq_ignore_ascii_case("utc") || tz.is_empty() {
        return Some(Utc.from_utc_datetime(&naive));
    }
    let zone: chrono_tz::Tz = tz.parse().ok()?;
    // An ambiguous local time (DST fall-back) takes the earlier instant.
    zone.from_local_datetime(&naive)
        .earliest()
        .map(|dt| dt.with_timezone(&Utc))
}

fn tz_of(state: &State, kwargs: &Kwargs) -> Result<String, Error> {
    let explicit: Option<String> = kwargs.get("tz")?;
    Ok(explicit
        .or_else(|| {
            state
                .lookup("defaults")
                .and_then(|d| d.get_attr("time_zone").ok())
                .and_then(|v| v.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| "UTC".into()))
}

/// Timestamp → RFC 3339 in UTC (`2019-07-12T14:59:21Z`). `tz=` names the zone of offset-less input.
pub fn datetime(state: &State, value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_of(state, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(datetime_with(&value, &tz))
}

/// [`datetime`] with an explicit zone.
pub fn datetime_with(value: &Value, tz: &str) -> Value {
    parse_timestamp(value, tz)
        .map(|dt| Value::from(dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
        .unwrap_or(Value::UNDEFINED)
}

/// Timestamp → calendar date `YYYY-MM-DD` (GHL's DATE custom fields and `dateOfBirth`).
pub fn date(state: &State, value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_of(state, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(date_with(&value, &tz))
}

/// [`date`] with an explicit zone.
pub fn date_with(value: &Value, tz: &str) -> Value {
    parse_timestamp(value, tz)
        .map(|dt| Value::from(dt.format("%Y-%m-%d").to_string()))
        .unwrap_or(Value::UNDEFINED)
}

/// Timestamp → unix seconds (a number).
pub fn unix(state: &State, value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = tz_of(state, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(unix_with(&value, &tz))
}

/// [`unix`] with an explicit zone.
pub fn unix_with(value: &Value, tz: &str) -> Value {
    parse_timestamp(value, tz)
        .map(|dt| Value::from(dt.timestamp()))
        .unwrap_or(Value::UNDEFINED)
}

/// Timestamp → text in a strftime format, e.g. `format_date("%m/%d/%Y")`.
pub fn format_date(
    state: &State,
    value: Value,
    fmt: String,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let tz = tz_of(state, &kwargs)?;
    kwargs.assert_all_used()?;
    let Some(dt) = parse_timestamp(&value, &tz) else {
        return Ok(Value::UNDEFINED);
    };
    let items: Vec<chrono::format::Item> = chrono::format::StrftimeItems::new(&fmt).collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("format_date: invalid format string {fmt:?}"),
        ));
    }
    Ok(Value::from(
        dt.format_with_items(items.into_iter()).to_string(),
    ))
}

/// `"12"` → 12, `"12.5"` → 12.5, `" 7 "` → 7; numbers pass through; anything else is undefined.
pub fn number(value: Value) -> Value {
    match value.kind() {
        ValueKind::Number => value,
        ValueKind::Bool => Value::UNDEFINED,
        ValueKind::String => {
            let s = value.as_str().unwrap_or("").trim().replace(',', "");
            if let Ok(i) = s.parse::<i64>() {
                Value::from(i)
            } else {
                match s.parse::<f64>() {
                    Ok(f) if f.is_finite() => {
                        if f.fract() == 0.0 && f.abs() < 9.0e15 {
                            Value::from(f as i64)
                        } else {
                            Value::from(f)
                        }
                    }
                    _ => Value::UNDEFINED,
                }
            }
        }
        _ => Value::UNDEFINED,
    }
}

/// Absolute value as an integer (`-15.0` → 15); balance deltas are sent as a sign plus a magnitude.
pub fn abs_int(value: Value) -> Value {
    let n = number(value);
    match f64::try_from(n) {
        Ok(f) => Value::from(f.abs().round() as i64),
        Err(_) => Value::UNDEFINED,
    }
}

/// Drops undefined, null and empty-string items from a list.
pub fn compact(value: Value) -> Result<Value, Error> {
    let items = value.try_iter()?;
    Ok(Value::from(
        items
            .filter(|v| {
                !(v.is_undefined()
                    || v.is_none()
                    || v.as_str().is_some_and(|s| s.trim().is_empty()))
            })
            .collect::<Vec<_>>(),
    ))
}

/// `"vip, gold,,"` | split_list → `["vip", "gold"]` (trimmed, empties dropped). Separator defaults to `,`.
pub fn split_list(value: Value, sep: Option<String>) -> Value {
    let Some(s) = value.as_str() else {
        return match value.kind() {
            ValueKind::Seq => value,
            _ => Value::UNDEFINED,
        };
    };
    let sep = sep.unwrap_or_else(|| ",".into());
    Value::from(
        s.split(sep.as_str())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Value::from)
            .collect::<Vec<_>>(),
    )
}

/// From a list of objects, the `attr` of the first whose `key` equals `wanted`:
/// `customFields | pick("id", field_id, "value")`.
pub fn pick(list: Value, key: String, wanted: Value, attr: Option<String>) -> Result<Value, Error> {
    if wanted.is_undefined() || list.is_undefined() {
        return Ok(Value::UNDEFINED);
    }
    for item in list.try_iter()? {
        if item.get_attr(&key).ok().as_ref() == Some(&wanted) {
            return Ok(match &attr {
                Some(a) => item.get_attr(a).unwrap_or(Value::UNDEFINED),
                None => item,
            });
        }
    }
    Ok(Value::UNDEFINED)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::String => value.as_str().map(str::to_string),
        ValueKind::Number => Some(value.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn env() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        register(&mut env);
        env
    }

    fn eval(expr: &str, ctx: Value) -> Value {
        env().compile_expression(expr).unwrap().eval(ctx).unwrap()
    }

    #[test]
    fn e164_normalises_and_rejects() {
        let ctx = context!(defaults => context!(phone_region => "US"));
        assert_eq!(
            eval("'(415) 555-2671' | e164", ctx.clone()),
            Value::from("+14155552671")
        );
        assert_eq!(
            eval("'+1-415-555-2671' | e164", ctx.clone()),
            Value::from("+14155552671")
        );
        assert_eq!(
            eval("'14155552671' | e164", ctx.clone()),
            Value::from("+14155552671")
        );
        assert_eq!(
            eval("'020 7946 0958' | e164('GB')", ctx.clone()),
            Value::from("+442079460958")
        );
        assert!(eval("'test phone' | e164", ctx.clone()).is_undefined());
        // An unassigned area code is still a possible number (SlickText's sample).
        assert_eq!(
            eval("'+12222222222' | e164", ctx.clone()),
            Value::from("+12222222222")
        );
        assert!(eval("'+1222222222' | e164", ctx.clone()).is_undefined());
        assert!(eval("'12345' | e164", ctx).is_undefined());
    }

    #[test]
    fn digits_and_email() {
        assert_eq!(
            eval("'+1-555-1234' | digits", context!()),
            Value::from("15551234")
        );
        assert_eq!(
            eval("' Ana.Lima@Example.COM ' | email", context!()),
            Value::from("ana.lima@example.com")
        );
        assert!(eval("'Email' | email", context!()).is_undefined());
    }

    #[test]
    fn dates_in_every_seed_shape() {
        let c = context!();
        assert_eq!(
            eval("'2019-07-12 07:59:21' | datetime", c.clone()),
            Value::from("2019-07-12T07:59:21Z")
        );
        assert_eq!(
            eval(
                "'2019-07-12 07:59:21' | datetime(tz='America/Los_Angeles')",
                c.clone()
            ),
            Value::from("2019-07-12T14:59:21Z")
        );
        assert_eq!(
            eval("'2014-09-19T20:01:42.1566603Z' | date", c.clone()),
            Value::from("2014-09-19")
        );
        assert_eq!(
            eval("'2014-09-19T23:01:42.1756614+03:00' | datetime", c.clone()),
            Value::from("2014-09-19T20:01:42.175661400Z")
        );
        assert_eq!(
            eval("1765579011 | datetime", c.clone()),
            Value::from("2025-12-12T22:36:51Z")
        );
        assert_eq!(
            eval("'1765579011' | unix", c.clone()),
            Value::from(1765579011)
        );
        assert_eq!(
            eval("1765579011000 | date", c.clone()),
            Value::from("2025-12-12")
        );
        assert_eq!(
            eval(
                "'2014-10-01T11:20:40.2131887Z' | format_date('%m/%d/%Y')",
                c.clone()
            ),
            Value::from("10/01/2014")
        );
        assert!(eval("'yesterday' | date", c).is_undefined());
    }

    #[test]
    fn numbers_from_strings() {
        let c = context!();
        assert_eq!(eval("'12' | number", c.clone()), Value::from(12));
        assert_eq!(eval("'12.5' | number", c.clone()), Value::from(12.5));
        assert_eq!(eval("6 | number", c.clone()), Value::from(6));
        assert!(eval("'' | number", c.clone()).is_undefined());
        assert!(eval("'abc' | number", c.clone()).is_undefined());
        assert_eq!(eval("-15 | abs_int", c), Value::from(15));
    }

    #[test]
    fn lists() {
        let c = context!();
        assert_eq!(
            eval("'vip, gold,,' | split_list", c.clone()),
            Value::from(vec!["vip", "gold"])
        );
        assert_eq!(
            eval("['a', none, '', 'b'] | compact", c.clone()),
            Value::from(vec!["a", "b"])
        );
        assert_eq!(
            eval(
                "[{'id': 'x', 'value': 1}, {'id': 'y', 'value': 2}] | pick('id', 'y', 'value')",
                c.clone()
            ),
            Value::from(2)
        );
        assert_eq!(eval("['a', 'b'] | join(', ')", c), Value::from("a, b"));
    }
}
