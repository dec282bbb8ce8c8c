//! Reading a customer export for `mapper resync --import`: CSV whose header
//! names the source's mirror fields (one customer per row), or JSON lines
//! (one object of mirror fields per line).
//!
//! A row that cannot be read is reported with its line and left out; only a
//! file that cannot be read at all (no header, a broken header) is an error.

use serde_json::{Map, Value};

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated, a header of mirror names first (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ImportFormat {
    /// The format a file name says (`.csv`; `.jsonl`, `.ndjson`, `.json`).
    pub fn of_path(path: &std::path::Path) -> Option<ImportFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(ImportFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(ImportFormat::Jsonl),
            _ => None,
        }
    }
}

/// One customer of the export.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The line it starts on (1-based).
    pub line: usize,
    /// Its id on the source: the `customer_id` column, else derived from the
    /// email (`email:<address>`) or phone (`phone:<E.164>`).
    pub customer_id: String,
    /// Its values by mirror name; empty values are left out.
    pub fields: Map<String, Value>,
}

/// A line of the export that is not a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line it starts on (1-based).
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// What an export holds.
#[derive(Debug, Default)]
pub struct Export {
    /// The CSV header (the JSON lines' keys are per line).
    pub columns: Vec<String>,
    /// The customers, in line order.
    pub rows: Vec<Row>,
    /// The lines that are not customers, in line order.
    pub bad: Vec<BadLine>,
}

/// An export that cannot be read at all (a bad line is reported, not this).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(pub String);

/// Reads an export. `phone_region` is for deriving an id from a phone
/// written without a country code.
pub fn parse(text: &str, format: ImportFormat, phone_region: &str) -> Result<Export, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (columns, raw) = match format {
        ImportFormat::Csv => csv(text).map_err(ImportError)?,
        ImportFormat::Jsonl => (Vec::new(), jsonl(text)),
    };
    let mut export = Export {
        columns,
        ..Export::default()
    };
    for (line, values) in raw {
        match values.and_then(|v| customer(v, phone_region)) {
            Ok((customer_id, fields)) => export.rows.push(Row {
                line,
                customer_id,
                fields,
            }),
            Err(reason) => export.bad.push(BadLine { line, reason }),
        }
    }
    Ok(export)
}

type RawRow = (usize, Result<Map<String, Value>, String>);

fn csv(text: &str) -> Result<(Vec<String>, Vec<RawRow>), String> {
    let mut records = records(text).into_iter();
    let (header_line, header) = records.next().ok_or_else(|| {
        "the file is empty: a CSV export starts with a header of field names".to_string()
    })?;
    let header = header.map_err(|e| format!("line {header_line} (the header): {e}"))?;
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "line {header_line} (the header): column {} has no name",
                i + 1
            ));
        }
        if columns.iter().any(|c| c == name) {
            return Err(format!(
                "line {header_line} (the header): column `{name}` is named twice"
            ));
        }
        columns.push(name.to_string());
    }
    let rows = records
        .map(|(line, fields)| {
            let row = fields.and_then(|fields| {
                if fields.len() != columns.len() {
                    return Err(format!(
                        "{} field(s), the header has {}",
                        fields.len(),
                        columns.len()
                    ));
                }
                Ok(columns
                    .iter()
                    .zip(fields)
                    .filter(|(_, v)| !v.trim().is_empty())
                    .map(|(k, v)| (k.clone(), Value::String(v)))
                    .collect())
            });
            (line, row)
        })
        .collect();
    Ok((columns, rows))
}

/// Where the CSV reader is inside a field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Nothing of the field read yet.
    Start,
    Unquoted,
    Quoted,
    /// Just after a quoted field's closing quote.
    Closed,
}

/// The records of a CSV text, each with the line it starts on; blank lines
/// are skipped. A broken record is an error and reading goes on at the next
/// line.
fn records(text: &str) -> Vec<(usize, Result<Vec<String>, String>)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields: Vec<String> = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut at = At::Start;
        let mut error: Option<String> = None;
        loop {
            let Some(c) = chars.next() else {
                if at == At::Quoted {
                    error = Some("a quoted field is not closed (a `\"` is missing)".into());
                }
                break;
            };
            if c == '\r' && chars.peek() == Some(&'\n') && at != At::Quoted {
                continue;
            }
            match (at, c) {
                (At::Quoted, '"') => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        at = At::Closed;
                    }
                }
                (At::Quoted, c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                (At::Start, '"') => {
                    at = At::Quoted;
                    quoted = true;
                }
                (_, ',') => {
                    fields.push(std::mem::take(&mut field));
                    quoted = false;
                    at = At::Start;
                }
                (_, '\n') => {
                    line += 1;
                    break;
                }
                (At::Closed, c) => {
                    error = Some(format!(
                        "`{c}` after a closing quote (a field is either quoted whole or not at all)"
                    ));
                    break;
                }
                (_, '"') => {
                    error = Some(
                        "a quote inside an unquoted field (quote the whole field and double the quote)"
                            .into(),
                    );
                    break;
                }
                (_, c) => {
                    at = At::Unquoted;
                    field.push(c);
                }
            }
        }
        if let Some(e) = error {
            // Go on with the next line; the rest of this one is part of the broken record.
            for c in chars.by_ref() {
                if c == '\n' {
                    line += 1;
                    break;
                }
            }
            out.push((start, Err(e)));
            continue;
        }
        let blank = fields.is_empty() && !quoted && field.trim().is_empty();
        if blank {
            continue;
        }
        fields.push(field);
        out.push((start, Ok(fields)));
    }
    out
}

fn jsonl(text: &str) -> Vec<RawRow> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let row = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => Ok(map
                .into_iter()
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::String(s) => !s.trim().is_empty(),
                    _ => true,
                })
                .collect()),
            Ok(other) => Err(format!(
                "not a JSON object (one customer per line, e.g. {{\"customer_id\": \"cus_1\", \"email\": \"…\"}}), found {}",
                kind(&other)
            )),
            Err(e) => Err(format!("not valid JSON: {e}")),
        };
        out.push((i + 1, row));
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The customer id of a row (taken out of its values) and the values.
fn customer(
    mut values: Map<String, Value>,
    phone_region: &str,
) -> Result<(String, Map<String, Value>), String> {
    let id = match values.remove("customer_id") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "customer_id is {}; it must be text or a number",
                kind(&other)
            ));
        }
        None => String::new(),
    };
    if !id.is_empty() {
        return Ok((id, values));
    }
    // An export without ids: the email or phone stands for the customer, so
    // the same row gets the same id when the run is continued.
    let text = |name: &str| values.get(name).and_then(Value::as_str).map(str::to_string);
    if let Some(email) = text("email").and_then(|e| crate::template::filters::normalize_email(&e)) {
        return Ok((format!("email:{email}"), values));
    }
    if let Some(phone) =
        text("phone").and_then(|p| crate::template::filters::normalize_phone(&p, phone_region))
    {
        return Ok((format!("phone:{phone}"), values));
    }
    Err("no customer_id, and no valid email or phone to stand for one".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(row: &Row) -> Value {
        Value::Object(row.fields.clone())
    }

    #[test]
    fn csv_reads_quoted_fields_with_commas_quotes_and_newlines() {
        let text = "customer_id,first_name,last_name,segments\r\n\
                    cus_1,Ana,\"Lima, Jr.\",\"VIP, Regulars\"\r\n\
                    cus_2,\"Bea \"\"B\"\"\",Santos,\"two\nlines\"\r\n\
                    cus_3,Caio,,\r\n";
        let export = parse(text, ImportFormat::Csv, "US").unwrap();
        assert!(export.bad.is_empty(), "{:?}", export.bad);
        assert_eq!(
            export.columns,
            ["customer_id", "first_name", "last_name", "segments"]
        );
        assert_eq!(export.rows.len(), 3);
        assert_eq!(export.rows[0].customer_id, "cus_1");
        assert_eq!(
            fields(&export.rows[0]),
            json!({"first_name": "Ana", "last_name": "Lima, Jr.", "segments": "VIP, Regulars"})
        );
        assert_eq!(
            fields(&export.rows[1]),
            json!({"first_name": "Bea \"B\"", "last_name": "Santos", "segments": "two\nlines"})
        );
        // Empty cells are no value, not an empty one.
        assert_eq!(fields(&export.rows[2]), json!({"first_name": "Caio"}));
        // A record spanning two lines moves the line numbers on.
        assert_eq!(
            export.rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            [2, 3, 5]
        );
    }

    #[test]
    fn csv_skips_a_bom_and_blank_lines() {
        let text = "\u{feff}customer_id,email\n\ncus_1,a@example.com\n   \n\ncus_2,b@example.com";
        let export = parse(text, ImportFormat::Csv, "US").unwrap();
        assert_eq!(export.columns, ["customer_id", "email"]);
        assert!(export.bad.is_empty());
        assert_eq!(
            export
                .rows
                .iter()
                .map(|r| (r.line, r.customer_id.as_str()))
                .collect::<Vec<_>>(),
            [(3, "cus_1"), (6, "cus_2")]
        );
    }

    #[test]
    fn csv_reports_bad_lines_by_number_and_reads_on() {
        let text = "customer_id,email,phone\n\
                    cus_1,a@example.com,\n\
                    cus_2,b@example.com\n\
                    cus_3,\"c@example.com\"x,\n\
                    cus_4,d\"@example.com,\n\
                    ,,\n\
                    ,e@example.com,\n\
                    cus_6,\"f@example.com,";
        let export = parse(text, ImportFormat::Csv, "US").unwrap();
        let bad: Vec<(usize, &str)> = export
            .bad
            .iter()
            .map(|b| (b.line, b.reason.as_str()))
            .collect();
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(bad[0].0, 3);
        assert!(bad[0].1.contains("2 field(s), the header has 3"), "{bad:?}");
        assert_eq!(bad[1].0, 4);
        assert!(bad[1].1.contains("after a closing quote"), "{bad:?}");
        assert_eq!(bad[2].0, 5);
        assert!(bad[2].1.contains("quote inside an unquoted field"));
        assert_eq!(bad[3].0, 6);
        assert!(bad[3].1.contains("no customer_id"));
        assert_eq!(bad[4].0, 8);
        assert!(bad[4].1.contains("not closed"));
        let good: Vec<(usize, &str)> = export
            .rows
            .iter()
            .map(|r| (r.line, r.customer_id.as_str()))
            .collect();
        assert_eq!(good, [(2, "cus_1"), (7, "email:e@example.com")]);
    }

    #[test]
    fn csv_refuses_a_file_without_a_usable_header() {
        assert!(
            parse("", ImportFormat::Csv, "US")
                .unwrap_err()
                .0
                .contains("empty")
        );
        assert!(
            parse("\u{feff}\n\n", ImportFormat::Csv, "US")
                .unwrap_err()
                .0
                .contains("empty")
        );
        let e = parse("customer_id,,email\n", ImportFormat::Csv, "US").unwrap_err();
        assert!(e.0.contains("column 2 has no name"), "{e}");
        let e = parse("email,phone,email\n", ImportFormat::Csv, "US").unwrap_err();
        assert!(e.0.contains("`email` is named twice"), "{e}");
        let e = parse("\"customer_id,email\n", ImportFormat::Csv, "US").unwrap_err();
        assert!(e.0.starts_with("line 1 (the header)"), "{e}");
    }

    #[test]
    fn ids_are_derived_from_the_email_then_the_phone() {
        let text = "email,phone\n Ana@Example.COM ,+1 415 555 2671\nnot-an-email,(415) 555-2672\n";
        let export = parse(text, ImportFormat::Csv, "US").unwrap();
        assert_eq!(export.rows[0].customer_id, "email:ana@example.com");
        assert_eq!(export.rows[1].customer_id, "phone:+14155552672");
        // The values themselves are kept as written: the mappings normalise them.
        assert_eq!(export.rows[0].fields["email"], json!(" Ana@Example.COM "));
    }

    #[test]
    fn jsonl_reads_objects_and_reports_bad_lines() {
        let text = "\u{feff}{\"customer_id\": \"cus_1\", \"email\": \"a@example.com\", \"segments\": [\"VIP\"], \"phone\": null}\r\n\
                    \n\
                    {\"customer_id\": 42, \"loyalty_points\": 10, \"first_name\": \"\"}\n\
                    {\"customer_id\": \"cus_3\", \"email\": \n\
                    [1, 2]\n\
                    {\"customer_id\": {\"id\": 1}, \"email\": \"x@example.com\"}\n\
                    {\"email\": \"b@example.com\"}\n";
        let export = parse(text, ImportFormat::Jsonl, "US").unwrap();
        let good: Vec<(usize, &str, Value)> = export
            .rows
            .iter()
            .map(|r| (r.line, r.customer_id.as_str(), fields(r)))
            .collect();
        assert_eq!(
            good,
            [
                (
                    1,
                    "cus_1",
                    json!({"email": "a@example.com", "segments": ["VIP"]})
                ),
                (3, "42", json!({"loyalty_points": 10})),
                (7, "email:b@example.com", json!({"email": "b@example.com"})),
            ]
        );
        let bad: Vec<(usize, &str)> = export
            .bad
            .iter()
            .map(|b| (b.line, b.reason.as_str()))
            .collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(bad[0].0, 4);
        assert!(bad[0].1.starts_with("not valid JSON"), "{bad:?}");
        assert_eq!(bad[1].0, 5);
        assert!(bad[1].1.contains("found a list"), "{bad:?}");
        assert_eq!(bad[2].0, 6);
        assert!(bad[2].1.contains("customer_id is an object"), "{bad:?}");
    }

    #[test]
    fn the_format_follows_the_file_name() {
        use std::path::Path;
        assert_eq!(
            ImportFormat::of_path(Path::new("export.CSV")),
            Some(ImportFormat::Csv)
        );
        assert_eq!(
            ImportFormat::of_path(Path::new("a/export.ndjson")),
            Some(ImportFormat::Jsonl)
        );
        assert_eq!(ImportFormat::of_path(Path::new("export.txt")), None);
        assert_eq!(ImportFormat::of_path(Path::new("export")), None);
    }
}
