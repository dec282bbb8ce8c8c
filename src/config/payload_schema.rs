//! Payload JSON Schemas, used to tell whether a selector can ever match.
//!
//! A selector is checked against the properties a schema *declares*; an object
//! schema that declares none (a free-form map) accepts any name. Extra fields
//! that platforms add are still read at run time, but a selector naming a field
//! the schema does not know is most often a typo, so `check` reports it with
//! the nearest declared path.

use crate::jsonpath::Step;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The schemas of one source profile, by event name.
#[derive(Debug, Default)]
pub struct SchemaSet {
    pub events: BTreeMap<String, Value>,
    /// The file each event's schema was read from, for hints that say which file to edit.
    pub files: BTreeMap<String, std::path::PathBuf>,
}

/// Why a folder of payload schemas cannot be read (`check` reports it as
/// M021 at the source's `schemas:`).
#[derive(Debug, thiserror::Error)]
pub enum SchemaSetError {
    /// The folder or one of its files cannot be read.
    #[error("{}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The load did not read the folder (a compile given files without it).
    #[error("{} was not read", .path.display())]
    NotRead { path: std::path::PathBuf },
    /// A file is not JSON.
    #[error("{}: {source}", .path.display())]
    NotJson {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

impl SchemaSet {
    /// Reads `<Event>.schema.json` files from a folder.
    pub fn load(dir: &Path) -> Result<Self, SchemaSetError> {
        let mut events = BTreeMap::new();
        let mut files = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|source| SchemaSetError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(event) = name.strip_suffix(".schema.json") else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| SchemaSetError::Read {
                path: path.clone(),
                source,
            })?;
            let schema: Value =
                serde_json::from_str(&text).map_err(|source| SchemaSetError::NotJson {
                    path: path.clone(),
                    source,
                })?;
            events.insert(event.to_string(), schema);
            files.insert(event.to_string(), normalize(&path));
        }
        Ok(Self { events, files })
    }
}

/// Why a selector cannot match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// The part of the path that is fine (`$.card`).
    pub valid_prefix: String,
    /// The step that cannot match (`balanse`).
    pub step: String,
    /// The declared path closest to what was written, if any is close.
    pub nearest: Option<String>,
    /// The declared path closest to what was written, however far: every
    /// M012 names one.
    pub closest: Option<String>,
    /// A declared path ending in the same name under another parent
    /// (`$.balance` written, `$.card.balance` declared).
    pub elsewhere: Option<String>,
    /// The object where the step failed accepts undeclared properties: the
    /// payload may carry it, the schema just does not say so.
    pub open: bool,
}

/// `a/b/../c` as `a/c`, without touching the file system: paths in hints
/// read as the file to open.
pub fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn allows(schema: &Value, ty: &str) -> bool {
    let ts = types_of(schema);
    ts.is_empty() || ts.contains(&ty)
}

/// Checks `steps` against `schema`. `written` is the selector as written, for hints.
pub fn check(
    schema: &Value,
    steps: &[crate::jsonpath::Step],
    written: &str,
) -> Result<(), Box<NoMatch>> {
    let mut node = schema;
    let mut prefix = String::from("$");
    for step in steps {
        match step {
            Step::Descendant => return Ok(()),
            Step::Name(name) => {
                if !allows(node, "object") {
                    return Err(no_match(schema, &prefix, name, written, false));
                }
                let props = node.get("properties").and_then(Value::as_object);
                match props.and_then(|p| p.get(name)) {
                    Some(child) => node = child,
                    None => {
                        let declares_none = props.is_none_or(|p| p.is_empty());
                        match node.get("additionalProperties") {
                            Some(extra @ Value::Object(_)) if declares_none => node = extra,
                            Some(Value::Bool(false)) => {
                                return Err(no_match(schema, &prefix, name, written, false));
                            }
                            _ if declares_none => return Ok(()),
                            _ => return Err(no_match(schema, &prefix, name, written, true)),
                        }
                    }
                }
                prefix.push('.');
                prefix.push_str(name);
            }
            Step::Index(_) | Step::AnyChild => {
                if let Some(items) = node.get("items") {
                    if !allows(node, "array") {
                        return Err(no_match(schema, &prefix, "[…]", written, false));
                    }
                    node = items;
                    prefix.push_str("[*]");
                } else {
                    // A wildcard over an object's members, or an untyped node: nothing to check below.
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The declared path a selector reaches that is marked `deprecated: true`
/// (`mapper schema infer` marks what newer samples no longer carry).
pub fn deprecated(schema: &Value, steps: &[Step]) -> Option<String> {
    let mut node = schema;
    let mut prefix = String::from("$");
    for step in steps {
        match step {
            Step::Name(name) => {
                node = node.get("properties")?.get(name)?;
                prefix = crate::config::infer::join(&prefix, name);
            }
            Step::Index(_) | Step::AnyChild => {
                node = node.get("items")?;
                prefix.push_str("[*]");
            }
            Step::Descendant => return None,
        }
        if node.get("deprecated") == Some(&Value::Bool(true)) {
            return Some(prefix);
        }
    }
    None
}

/// The JSON types a selector can find, as the schema declares them (`date`
/// and `date-time` for strings of those formats): `None`
/// when it does not say (an untyped or undeclared node). A selector that can
/// find several values (a wildcard, a filter) finds a list.
pub fn types_at(schema: &Value, steps: &[Step], singular: bool) -> Option<Vec<String>> {
    if !singular {
        return Some(vec!["array".into()]);
    }
    let mut node = schema;
    for step in steps {
        node = match step {
            Step::Name(name) => node.get("properties")?.get(name)?,
            Step::Index(_) => node.get("items")?,
            Step::AnyChild | Step::Descendant => return None,
        };
    }
    // A string of a date format says so: `date` and `date-time` stand for it.
    let format = node.get("format").and_then(Value::as_str);
    let ts: Vec<String> = types_of(node)
        .into_iter()
        .map(|t| match (t, format) {
            ("string", Some(f @ ("date" | "date-time"))) => f.to_string(),
            _ => t.to_string(),
        })
        .collect();
    (!ts.is_empty()).then_some(ts)
}

fn no_match(schema: &Value, prefix: &str, step: &str, written: &str, open: bool) -> Box<NoMatch> {
    let mut all = Vec::new();
    collect_paths(schema, "$", 0, &mut all);
    let mut ranked: Vec<(usize, &String)> = all
        .iter()
        .map(|p| (strsim::damerau_levenshtein(p, written), p))
        .collect();
    // Ties go to the shorter path, then alphabetically, so the hint is stable.
    ranked.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    // However far, the path sharing the longest start with what was written
    // reads as what was meant (`$.phonee` → `$.phone_number`, not `$.card`).
    let closest = all
        .iter()
        .map(|p| (strsim::jaro_winkler(p, written), p))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.len().cmp(&a.1.len())))
        .map(|(_, p)| p.clone());
    let nearest = ranked
        .first()
        .filter(|(d, p)| *d <= (p.len().max(written.len()) / 3).max(2))
        .map(|(_, p)| (*p).clone());
    let tail = |p: &str| {
        let last = p.rsplit(['.', '[']).next().unwrap_or("");
        last.trim_matches(|c| c == '\'' || c == ']')
            .to_ascii_lowercase()
    };
    let wanted = step.to_ascii_lowercase();
    let elsewhere = all
        .iter()
        .filter(|p| tail(p) == wanted && !written.starts_with(p.as_str()))
        .min_by_key(|p| (strsim::damerau_levenshtein(p, written), p.len()))
        .cloned();
    Box::new(NoMatch {
        valid_prefix: prefix.to_string(),
        step: step.to_string(),
        nearest,
        closest,
        elsewhere,
        open,
    })
}

/// Every declared path of a schema, up to a sane depth.
pub fn collect_paths(schema: &Value, prefix: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let path = if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                format!("{prefix}.{name}")
            } else {
                format!("{prefix}['{name}']")
            };
            out.push(path.clone());
            collect_paths(child, &path, depth + 1, out);
        }
    }
    if let Some(items) = schema.get("items") {
        collect_paths(items, &format!("{prefix}[*]"), depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonpath::Selector;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": true, "properties": {
            "card": {"type": ["object", "null"], "properties": {"balance": {"type": "number"}, "status": {"type": "string"}}},
            "segments": {"type": "array", "items": {"type": "string"}},
            "custom": {"type": "object", "additionalProperties": true},
            "Fields": {"type": "array", "items": {"type": "object", "properties": {"Name": {}, "Value": {}}}}
        }})
    }

    fn run(path: &str) -> Result<(), Box<NoMatch>> {
        let s = Selector::parse(path).unwrap();
        check(&schema(), s.steps(), path)
    }

    #[test]
    fn accepts_declared_paths() {
        assert!(run("$.card.balance").is_ok());
        assert!(run("$.segments[0]").is_ok());
        assert!(run("$.custom.anything").is_ok());
        assert!(run("$.Fields[?@.Name == 'x'].Value").is_ok());
        assert!(run("$..whatever").is_ok());
    }

    #[test]
    fn rejects_typos_with_nearest_path() {
        let e = run("$.card.balanse").unwrap_err();
        assert_eq!(e.valid_prefix, "$.card");
        assert_eq!(e.step, "balanse");
        assert_eq!(e.nearest.as_deref(), Some("$.card.balance"));
        let e = run("$.Fields[*].Valeu").unwrap_err();
        assert_eq!(e.nearest.as_deref(), Some("$.Fields[*].Value"));
        let e = run("$.card.balance.x").unwrap_err();
        assert_eq!(e.valid_prefix, "$.card.balance");
    }
}
