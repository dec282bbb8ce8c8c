//! Our one door to JSONPath (RFC 9535).
//!
//! We use `serde_json_path` because it passes the whole RFC 9535 compliance
//! suite (703/703, see README "Why these crates"); nothing else in the crate
//! names it, so replacing it touches only this file.
//!
//! Besides compiling and querying, this module keeps a coarse segment list of
//! each path so `mapper check` can walk a payload's JSON Schema and tell
//! whether a selector can ever match.

use serde_json::Value;
use std::fmt;

/// One step of a path, as far as schema checking cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.name` or `['name']`
    Name(String),
    /// `[3]`, `[-1]`
    Index(i64),
    /// `[*]`, `.*`, slices, filters, unions: any child.
    AnyChild,
    /// `..`: anything below; schema checking stops here.
    Descendant,
}

/// Deepest nesting of `[`, `(` a path may have. The parser behind this
/// module takes time exponential in the nesting of some unclosed filters
/// (found by fuzzing: 451 bytes took 15 s, 22 nested `[?` 0.9 s, about
/// twice as long per level); a selector a person writes nests a few levels.
pub const MAX_NESTING: usize = 16;

/// Where a path first nests deeper than [`MAX_NESTING`], outside quotes.
fn too_deep(path: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (at, c) in path.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' | '(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(at);
                }
            }
            ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Where a quoted name has a `\u` escape without four hex digits after it.
/// The parser panics on one such escape (`\u` ending the path, found by
/// fuzzing) and refuses the others; refusing them all here is the same
/// answer without the panic, which `catch_unwind` cannot stop where the
/// panic hook aborts (the fuzzers', a `panic = "abort"` build).
fn cut_escape(path: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (at, c) in path.char_indices() {
        let Some(q) = quote else {
            if c == '\'' || c == '"' {
                quote = Some(c);
            }
            continue;
        };
        if escaped {
            escaped = false;
            // `u` is one byte: the escape's digits start right after it.
            if c == 'u'
                && path[at + 1..]
                    .chars()
                    .take(4)
                    .filter(char::is_ascii_hexdigit)
                    .count()
                    < 4
            {
                return Some(at - 1);
            }
        } else if c == '\\' {
            escaped = true;
        } else if c == q {
            quote = None;
        }
    }
    None
}

/// A compiled JSONPath selector.
#[derive(Clone)]
pub struct Selector {
    source: String,
    compiled: serde_json_path::JsonPath,
    steps: Vec<Step>,
    singular: bool,
    /// The coarse steps are exact, so a singular query can be answered by walking them.
    shortcut: bool,
}

/// Why a path did not compile: message and the character offset in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub message: String,
    pub position: usize,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.position + 1)
    }
}

impl Selector {
    /// Compiles `path`; done once at load time, never per event.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if let Some(position) = too_deep(path) {
            return Err(PathError {
                message: format!(
                    "brackets and parentheses nest deeper than {MAX_NESTING}: write a simpler path"
                ),
                position,
            });
        }
        if let Some(position) = cut_escape(path) {
            return Err(PathError {
                message: "a `\\u` escape needs four hex digits after it".to_string(),
                position,
            });
        }
        // Should the parser panic on another malformed path: a bad selector
        // in a mapping is an error to report, never a crash of `check` or
        // `serve`.
        let parsed =
            std::panic::catch_unwind(|| serde_json_path::JsonPath::parse(path)).map_err(|_| {
                PathError {
                    message: "the path is malformed (check its quotes and escapes)".to_string(),
                    position: 0,
                }
            })?;
        let compiled = parsed.map_err(|e| PathError {
            message: e.message().to_string(),
            position: e.position(),
        })?;
        let steps = coarse_steps(path);
        let singular = steps
            .iter()
            .all(|s| matches!(s, Step::Name(_) | Step::Index(_)));
        let shortcut = singular && walks_like(&compiled, &steps);
        Ok(Self {
            source: path.to_string(),
            compiled,
            steps,
            singular,
            shortcut,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Steps for schema checking.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// True when the path can select at most one node (names and indexes only).
    pub fn is_singular(&self) -> bool {
        self.singular
    }

    /// All nodes the path selects, in document order.
    pub fn query<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        self.compiled.query(doc).all()
    }

    /// The value a mapping sees: `None` when nothing (or only `null`) matched;
    /// the node itself for a singular path; an array of the non-null nodes otherwise.
    pub fn select(&self, doc: &Value) -> Option<Value> {
        if self.shortcut {
            return self.singular_node(doc).filter(|v| !v.is_null()).cloned();
        }
        let nodes = self.compiled.query(doc);
        if self.singular {
            return nodes.first().filter(|v| !v.is_null()).cloned();
        }
        let found: Vec<Value> = nodes
            .all()
            .into_iter()
            .filter(|v| !v.is_null())
            .cloned()
            .collect();
        if found.is_empty() {
            None
        } else {
            Some(Value::Array(found))
        }
    }
}

impl Selector {
    /// A singular query (names and indexes only) answered by walking the
    /// document: the same node RFC 9535 selects, without building a node list.
    fn singular_node<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut cur = doc;
        for step in &self.steps {
            cur = match (step, cur) {
                (Step::Name(name), Value::Object(map)) => map.get(name)?,
                (Step::Index(i), Value::Array(items)) => {
                    let len = items.len() as i64;
                    let at = if *i < 0 { len + i } else { *i };
                    if at < 0 {
                        return None;
                    }
                    items.get(at as usize)?
                }
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({})", self.source)
    }
}

/// Checks, once at compile time, that walking `steps` finds what the compiled
/// query finds: a document holding a marker exactly at the steps' position
/// must give the marker. A name the coarse tokenizer misread (escapes) fails
/// this and keeps the full query.
fn walks_like(compiled: &serde_json_path::JsonPath, steps: &[Step]) -> bool {
    let marker = Value::String("\u{0}mapper-marker".into());
    let mut doc = marker.clone();
    for step in steps.iter().rev() {
        doc = match step {
            Step::Name(name) => {
                let mut map = serde_json::Map::new();
                map.insert(name.clone(), doc);
                Value::Object(map)
            }
            Step::Index(i) => {
                let (len, at) = if *i < 0 {
                    ((-i) as usize, 0)
                } else {
                    (*i as usize + 1, *i as usize)
                };
                if len > 10_000 {
                    return false;
                }
                let mut items = vec![Value::Null; len];
                items[at] = doc;
                Value::Array(items)
            }
            _ => return false,
        };
    }
    compiled.query(&doc).first() == Some(&marker)
}

/// Splits an already valid path into coarse steps. Anything that is not a
/// plain name or index becomes `AnyChild`, which is what a schema walk needs.
fn coarse_steps(path: &str) -> Vec<Step> {
    let chars: Vec<char> = path.chars().collect();
    let mut steps = Vec::new();
    let mut i = 1; // skip '$'
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => {
                steps.push(Step::Descendant);
                // what follows `..` is irrelevant to the walk
                return steps;
            }
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'*') {
                    steps.push(Step::AnyChild);
                    i += 1;
                } else {
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    steps.push(Step::Name(chars[start..i].iter().collect()));
                }
            }
            '[' => {
                let (step, next) = bracket_step(&chars, i);
                steps.push(step);
                i = next;
            }
            ' ' | '\t' | '\n' | '\r' => i += 1,
            _ => return steps,
        }
    }
    steps
}

/// Reads one `[...]` segment starting at `open`, returns the step and the index after `]`.
fn bracket_step(chars: &[char], open: usize) -> (Step, usize) {
    let mut i = open + 1;
    let mut depth = 1;
    let mut quote: Option<char> = None;
    let mut body = String::new();
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                if let Some(n) = chars.get(i + 1) {
                    body.push(match n {
                        'n' => '\n',
                        't' => '\t',
                        other => *other,
                    });
                }
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            } else {
                body.push(c);
            }
            i += 1;
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                body.push('\u{0}');
            }
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => body.push(c),
        }
        i += 1;
    }
    let trimmed = body.trim();
    let step = if let Some(name) = trimmed.strip_prefix('\u{0}') {
        if name.contains('\u{0}') || name.contains(',') {
            Step::AnyChild
        } else {
            Step::Name(name.to_string())
        }
    } else if let Ok(i) = trimmed.parse::<i64>() {
        Step::Index(i)
    } else {
        Step::AnyChild
    };
    (step, i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The fuzzer's inputs (tests/fixtures/{deep-filter-path,nested-filters}.bin:
    /// a source byte, the path, NUL, a body) took 15 s and 0.9 s in the
    /// parser; both are refused before it.
    #[test]
    fn deeply_nested_paths_are_refused_before_the_parser() {
        let input = include_bytes!("../tests/fixtures/deep-filter-path.bin");
        let end = input.iter().position(|&b| b == 0).unwrap_or(input.len());
        let path = std::str::from_utf8(&input[1..end]).unwrap();
        let error = Selector::parse(path).err().unwrap();
        assert!(error.message.contains("nest deeper than 16"), "{error}");
        let input = include_bytes!("../tests/fixtures/nested-filters.bin");
        let end = input.iter().position(|&b| b == 0).unwrap_or(input.len());
        let path = std::str::from_utf8(&input[1..end]).unwrap();
        assert!(Selector::parse(path).is_err());
        // At the limit the parser answers (its time is the fuzzer's to watch).
        assert!(Selector::parse(&"$[?".repeat(MAX_NESTING)).is_err());
        // A `\u` escape cut short made the parser panic (found by fuzzing):
        // refused before the parser, where no panic hook can abort.
        for cut in [
            "$[\"an\\u",
            "$['\\u",
            "$[?@[\"\\u",
            "$[\"\\uD800\\u",
            "$.a[?@.b == \"\\u",
        ] {
            let Err(e) = Selector::parse(cut) else {
                panic!("{cut} parsed")
            };
            assert!(e.message.contains("four hex digits"), "{cut}: {e}");
        }
        // Whole escapes still pass; an escaped quote ends no quote.
        assert!(Selector::parse("$[\"\\u00e9t\\u00E9\"]").is_ok());
        assert!(Selector::parse("$[\"a\\\"\\u00e9\"]").is_ok());
        assert!(Selector::parse("$[\"\\u12\"]").is_err());
        // An escaped character of two bytes (found by fuzzing this check).
        assert!(Selector::parse("$[?$[\n  2\"\\В\\В\"\"8]").is_err());
        let nested = format!("$.a{}", "[?(@.b == 1)]".repeat(3));
        assert!(Selector::parse(&nested).is_ok());
        assert!(Selector::parse("$['((((((((((((((((((((((((((((((((((((']").is_ok());
    }

    #[test]
    fn steps_of_common_shapes() {
        let s = Selector::parse("$.card.balance").unwrap();
        assert_eq!(
            s.steps(),
            &[Step::Name("card".into()), Step::Name("balance".into())]
        );
        assert!(s.is_singular());
        let s = Selector::parse("$['Loyalty Member'][0].x").unwrap();
        assert_eq!(
            s.steps(),
            &[
                Step::Name("Loyalty Member".into()),
                Step::Index(0),
                Step::Name("x".into())
            ]
        );
        let s = Selector::parse("$.Fields[?@.Name == 'a'].Value").unwrap();
        assert_eq!(
            s.steps(),
            &[
                Step::Name("Fields".into()),
                Step::AnyChild,
                Step::Name("Value".into())
            ]
        );
        assert!(!s.is_singular());
        let s = Selector::parse("$..id").unwrap();
        assert_eq!(s.steps(), &[Step::Descendant]);
    }

    #[test]
    fn select_treats_null_as_missing() {
        let doc = json!({"a": null, "b": 2, "l": [1, null, 3]});
        assert_eq!(Selector::parse("$.a").unwrap().select(&doc), None);
        assert_eq!(Selector::parse("$.zz").unwrap().select(&doc), None);
        assert_eq!(Selector::parse("$.b").unwrap().select(&doc), Some(json!(2)));
        assert_eq!(
            Selector::parse("$.l[*]").unwrap().select(&doc),
            Some(json!([1, 3]))
        );
    }

    #[test]
    fn parse_error_has_position() {
        let e = Selector::parse("$.a[").unwrap_err();
        assert!(e.position >= 3, "{e:?}");
    }
}
