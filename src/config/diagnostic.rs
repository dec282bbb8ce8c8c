//! Diagnostics: what is wrong, where (`file:line:col`), and what would be right.
//!
//! Every problem `mapper check` can report has a stable code (`M0xx`), listed in
//! [`Code`] and documented in README, so CI scripts and editors can match on it.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A 1-based position in a file. `line == 0` means "the file as a whole".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    /// Where the node was used, when that is not where it is written: the
    /// alias (`*contact`, `<<: *contact`) that brought an anchored node in.
    /// A mistake is reported where it is written, with a note at each use.
    #[serde(skip)]
    pub via: Option<(u32, u32)>,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos {
        line: 0,
        col: 0,
        via: None,
    };
    pub fn new(line: u32, col: u32) -> Self {
        Self {
            line,
            col,
            via: None,
        }
    }
    /// The position of a YAML node as serde-saphyr reports it.
    pub fn of(loc: &serde_saphyr::Location) -> Self {
        Self::new(loc.line() as u32, loc.column() as u32)
    }
    /// The position of a node that may have come through an alias: where it
    /// is defined, remembering the alias it was used through.
    pub fn of_use(referenced: &serde_saphyr::Location, defined: &serde_saphyr::Location) -> Self {
        let at = Self::of(referenced);
        let def = Self::of(defined);
        if def.line == 0 || (def.line, def.col) == (at.line, at.col) {
            return at;
        }
        Self {
            via: Some((at.line, at.col)),
            ..def
        }
    }
    /// Shifts a position to a character offset inside a quoted or plain scalar.
    pub fn offset(self, chars: usize) -> Self {
        if self.line == 0 {
            return self;
        }
        Self {
            col: self.col + chars as u32,
            ..self
        }
    }
}

/// Diagnostic codes. The numbers are a contract: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Code {
    /// The file is not valid YAML.
    M001,
    /// The YAML is valid but its shape is wrong (unknown key, wrong type, missing key).
    M002,
    /// A JSONPath selector does not compile.
    M003,
    /// A template or condition does not compile.
    M004,
    /// A template uses a name that is not defined there.
    M005,
    /// A template uses an unknown filter, test or function.
    M006,
    /// A mapping names a source that is not defined.
    M007,
    /// A mapping names an event the source does not have (no payload schema for it).
    M008,
    /// A mapping names a target or profile that is not defined.
    M009,
    /// An action names an operation the target does not define.
    M010,
    /// An action lacks a required parameter or passes an unknown one.
    M011,
    /// A selector can never match the event's payload schema.
    M012,
    /// Two mappings fire for the same event and target without a declared order.
    M013,
    /// An environment variable is used but not declared by the profile.
    M014,
    /// The target's API cannot do what the action asks.
    M015,
    /// Two mappings (or tests, or profiles) share a name.
    M016,
    /// A `@field` alias is not declared by the source profile.
    M017,
    /// A custom field is written but not declared with a data type, so it cannot be provisioned.
    M018,
    /// A mapping test is malformed or its payload file cannot be read.
    M019,
    /// A value is out of range or not one of the allowed values.
    M020,
    /// A file or folder cannot be read.
    M021,
    /// The committed JSON Schema of the mapping language is stale.
    M022,
    /// A tag a mapping writes would come back from the target as a segment
    /// (it is not in `vars.not_segments`).
    M023,
    /// A `TODO` left by `mapper new`: the mapping still needs its real action.
    M024,
    /// A value's type, as its template yields it, does not fit where it goes
    /// (a parameter's declared type, a custom field's `data_type`).
    M025,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::M001 => "M001",
            Code::M002 => "M002",
            Code::M003 => "M003",
            Code::M004 => "M004",
            Code::M005 => "M005",
            Code::M006 => "M006",
            Code::M007 => "M007",
            Code::M008 => "M008",
            Code::M009 => "M009",
            Code::M010 => "M010",
            Code::M011 => "M011",
            Code::M012 => "M012",
            Code::M013 => "M013",
            Code::M014 => "M014",
            Code::M015 => "M015",
            Code::M016 => "M016",
            Code::M017 => "M017",
            Code::M018 => "M018",
            Code::M019 => "M019",
            Code::M020 => "M020",
            Code::M021 => "M021",
            Code::M022 => "M022",
            Code::M023 => "M023",
            Code::M024 => "M024",
            Code::M025 => "M025",
        }
    }
}

/// How bad a diagnostic is: errors make `check` fail, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, with everything needed to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub message: String,
    /// What would be right, when we can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Where else the mistake shows: each use of an anchor, merge key or
    /// `@field` whose definition this diagnostic points at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The alias the offending node was used through (see [`Pos::via`]),
    /// until it becomes a note naming the mapping.
    #[serde(skip)]
    pub via: Option<(u32, u32)>,
}

impl Diagnostic {
    pub fn error(code: Code, file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            code,
            severity: Severity::Error,
            file: file.to_path_buf(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
            hint: None,
            notes: Vec::new(),
            via: pos.via,
        }
    }

    pub fn warning(code: Code, file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, file, pos, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic like a compiler does: location, code, message,
    /// the offending line with a caret, and the hint.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = String::new();
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(
            out,
            "{}:{}:{}: {}[{}]: {}",
            self.file.display(),
            self.line,
            self.col,
            sev,
            self.code.as_str(),
            self.message
        );
        if let Some(text) = source
            && self.line > 0
            && let Some(line) = text.lines().nth(self.line as usize - 1)
        {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{number} | {line}");
            let caret_at = (self.col.max(1) - 1) as usize;
            let spaces: String = line
                .chars()
                .take(caret_at)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{pad} | {spaces}^");
        }
        for note in &self.notes {
            let _ = writeln!(out, "  = note: {note}");
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "  = help: {hint}");
        }
        out
    }
}

/// Reports one mistake once: diagnostics at the same place with the same
/// code (one anchor or `@field` reached from several mappings) become one,
/// carrying the notes of all; exact repeats are dropped.
pub fn merge_repeats(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::with_capacity(diags.len());
    for d in diags {
        let same = out.iter_mut().find(|o| {
            o.code == d.code
                && o.severity == d.severity
                && o.file == d.file
                && (o.line, o.col) == (d.line, d.col)
                && o.line > 0
                && (o.message == d.message || (!o.notes.is_empty() && !d.notes.is_empty()))
        });
        match same {
            Some(o) => {
                for n in d.notes {
                    if !o.notes.contains(&n) {
                        o.notes.push(n);
                    }
                }
            }
            None => out.push(d),
        }
    }
    out
}

/// Sorts diagnostics by file and position so output is stable.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (&a.file, a.line, a.col, a.code.as_str()).cmp(&(&b.file, b.line, b.col, b.code.as_str()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_column() {
        let d = Diagnostic::error(Code::M003, Path::new("m.yaml"), Pos::new(2, 9), "bad path")
            .with_hint("close the bracket");
        let text = d.render(Some("a: 1\nselect: $.a[\n"));
        assert!(
            text.starts_with("m.yaml:2:9: error[M003]: bad path\n"),
            "{text}"
        );
        assert!(text.contains("2 | select: $.a["), "{text}");
        assert!(text.contains("  |         ^"), "{text}");
        assert!(text.contains("help: close the bracket"), "{text}");
    }
}
