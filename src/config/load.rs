//! Finding and parsing the files of a mapping folder.

use super::diagnostic::{Code, Diagnostic, Pos};
use super::model::{MappingFile, ProjectFile, SourceFile, TargetFile, TestFile};
use super::node::Node;
use super::payload_schema::SchemaSet;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed file of a mapping folder.
#[derive(Debug)]
pub enum Parsed {
    Project(Box<ProjectFile>),
    Source(Box<SourceFile>),
    Target(Box<TargetFile>),
    Mappings(Box<MappingFile>),
    Tests(Box<TestFile>),
}

/// Everything read from a mapping folder, good or bad.
#[derive(Debug, Default)]
pub struct Loaded {
    pub root: PathBuf,
    pub files: Vec<(PathBuf, Parsed)>,
    /// File texts, for rendering diagnostics with the offending line.
    pub texts: BTreeMap<PathBuf, String>,
    pub diagnostics: Vec<Diagnostic>,
    /// A project, source or target file failed to parse: everything else
    /// depends on them, so semantic checks would only report echoes of it.
    pub foundation_failed: bool,
    /// The payload schemas of each source file (by its path), read from its
    /// `schemas:` folder, or why they could not be read.
    pub schemas: BTreeMap<PathBuf, Result<SchemaSet, super::payload_schema::SchemaSetError>>,
    /// The files test cases name in `payload_file:`, by resolved path: their
    /// bytes, or why they cannot be read. Empty unless tests were loaded.
    pub payload_files: BTreeMap<PathBuf, Result<Vec<u8>, String>>,
}

/// What a load reads besides the production files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// Project, source and target files and mappings: what `serve` runs.
    /// Test files are not read at all, so a broken test or a missing example
    /// payload never keeps production from starting or reloading.
    #[default]
    Production,
    /// Production plus the mapping tests and the payload files they name:
    /// what `check` and `test` look at.
    WithTests,
}

/// Editor droppings and hidden files are not part of the set.
fn is_mapping_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// All YAML files under `root`, sorted so every run sees them in the same order.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if entry.file_type()?.is_dir() {
                if !hidden {
                    stack.push(path);
                }
            } else if is_mapping_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a file is a mapping test file, judged without parsing it (a
/// broken test file must be recognisable as one to be left out of
/// production): by its name (`*.test.yaml`) or its first top-level key.
pub fn is_test_file(path: &Path, text: &str) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".test.yaml") || name.ends_with(".test.yml") {
        return true;
    }
    first_top_level_line(text).starts_with("tests:")
}

fn first_top_level_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(' '))
        .unwrap_or("")
}

/// Reads the production files of a mapping folder (no tests): what `serve`,
/// its hot reload and `plan` need.
pub fn load_dir(root: &Path) -> Loaded {
    load_dir_scoped(root, Scope::Production)
}

/// Reads every file of a mapping folder, and what its files point to outside
/// it: payload schemas and, with [`Scope::WithTests`], test payload files.
/// All the reading happens here, so compiling is pure.
pub fn load_dir_scoped(root: &Path, scope: Scope) -> Loaded {
    let mut loaded = Loaded {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let paths = match discover(root) {
        Ok(p) => p,
        Err(e) => {
            loaded.diagnostics.push(
                Diagnostic::error(
                    Code::M021,
                    root,
                    Pos::UNKNOWN,
                    format!("cannot read the mapping folder: {e}"),
                )
                .with_hint("pass the folder that holds mapper.yaml, e.g. `mapper check mappings`"),
            );
            return loaded;
        }
    };
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if scope == Scope::Production && is_test_file(&path, &text) {
                    continue;
                }
                match parse_file(&path, &text, &mut loaded.diagnostics) {
                    Some(Parsed::Tests(_)) if scope == Scope::Production => continue,
                    Some(parsed) => loaded.files.push((path.clone(), parsed)),
                    None => loaded.foundation_failed |= is_foundation(&path, &text),
                }
                loaded.texts.insert(path, text);
            }
            Err(e) => loaded.diagnostics.push(Diagnostic::error(
                Code::M021,
                &path,
                Pos::UNKNOWN,
                format!("cannot read file: {e}"),
            )),
        }
    }
    read_referenced(&mut loaded);
    loaded
}

impl Loaded {
    /// Selects `profile` for the source or target `name`, as `profiles:` in
    /// the project file would; `false` when there is no project file.
    pub fn select_profile(&mut self, name: &str, profile: &str) -> bool {
        for (_, parsed) in &mut self.files {
            if let Parsed::Project(p) = parsed {
                let at = p
                    .profiles
                    .get(name)
                    .map(|s| (s.referenced, s.defined))
                    .unwrap_or((
                        serde_saphyr::Location::UNKNOWN,
                        serde_saphyr::Location::UNKNOWN,
                    ));
                p.profiles.insert(
                    name.to_string(),
                    serde_saphyr::Spanned {
                        value: profile.to_string(),
                        referenced: at.0,
                        defined: at.1,
                    },
                );
                return true;
            }
        }
        false
    }

    /// Every profile of each source and target name, in file order.
    pub fn profiles(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, parsed) in &self.files {
            let (name, profile) = match parsed {
                Parsed::Source(s) => (&s.source.value, &s.profile.value),
                Parsed::Target(t) => (&t.target.value, &t.profile.value),
                _ => continue,
            };
            let list = out.entry(name.clone()).or_default();
            if !list.contains(profile) {
                list.push(profile.clone());
            }
        }
        out
    }
}

/// Reads the files the parsed ones point to: each source's payload schemas
/// and each test's payload file.
fn read_referenced(loaded: &mut Loaded) {
    for (path, parsed) in &loaded.files {
        let dir = path.parent().unwrap_or(Path::new("."));
        match parsed {
            Parsed::Source(s) => {
                let schemas = dir.join(&s.schemas.value);
                loaded
                    .schemas
                    .insert(path.clone(), SchemaSet::load(&schemas));
            }
            Parsed::Tests(t) => {
                for case in &t.tests {
                    if let Some(f) = &case.payload_file {
                        let file = dir.join(&f.value);
                        if loaded.payload_files.contains_key(&file) {
                            continue;
                        }
                        let bytes = std::fs::read(&file).map_err(|e| match e.kind() {
                            std::io::ErrorKind::NotFound => "does not exist".to_string(),
                            _ => format!("cannot be read: {e}"),
                        });
                        loaded.payload_files.insert(file, bytes);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a file that failed to parse is one others depend on: judged by its
/// top-level keys when they can be seen, else by its name and folder.
fn is_foundation(path: &Path, text: &str) -> bool {
    let top_level = first_top_level_line(text);
    if ["settings:", "source:", "target:"]
        .iter()
        .any(|k| top_level.starts_with(k))
    {
        return true;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mapper.yaml" || parent == "sources" || parent == "targets"
}

/// Parses one file, telling its kind from its first key.
pub fn parse_file(path: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Option<Parsed> {
    let node: Node = match serde_saphyr::from_str(text) {
        Ok(n) => n,
        Err(e) => {
            diags.push(yaml_error(Code::M001, path, &e));
            return None;
        }
    };
    let Some(entries) = node.as_map() else {
        diags.push(
            Diagnostic::error(
                Code::M002,
                path,
                node.pos,
                format!("a mapping file must be a map, found {}", node.kind_name()),
            )
            .with_hint(
                "start the file with one of: settings:, source:, target:, mappings:, tests:",
            ),
        );
        return None;
    };
    let has = |k: &str| entries.iter().any(|(key, _)| key.name == k);
    let result = if has("settings") {
        typed::<ProjectFile>(text).map(|f| Parsed::Project(Box::new(f)))
    } else if has("source") {
        typed::<SourceFile>(text).map(|f| Parsed::Source(Box::new(f)))
    } else if has("target") {
        typed::<TargetFile>(text).map(|f| Parsed::Target(Box::new(f)))
    } else if has("mappings") {
        typed::<MappingFile>(text).map(|f| Parsed::Mappings(Box::new(f)))
    } else if has("tests") {
        typed::<TestFile>(text).map(|f| Parsed::Tests(Box::new(f)))
    } else {
        let first = entries.first().map(|(k, _)| (k.name.clone(), k.pos));
        let (name, pos) = first.unwrap_or_default();
        diags.push(
            Diagnostic::error(Code::M002, path, pos, format!("unknown kind of file (first key `{name}`)"))
                .with_hint("a mapping file has one of these top-level keys: settings (mapper.yaml), source, target, mappings, tests"),
        );
        return None;
    };
    match result {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            diags.push(yaml_error(Code::M002, path, &e));
            None
        }
    }
}

fn typed<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str(text)
}

/// A serde-saphyr error as a diagnostic, message without its own snippet.
fn yaml_error(code: Code, path: &Path, e: &serde_saphyr::Error) -> Diagnostic {
    let pos = e.location().map(|l| Pos::of(&l)).unwrap_or(Pos::UNKNOWN);
    let mut message = e.without_snippet().to_string();
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    let hint = if message.contains("unknown field") {
        Some("remove the key or fix its spelling; `mapper schema` prints every allowed key")
    } else if message.contains("missing field") {
        Some("add the missing key")
    } else if code == Code::M001 {
        Some("check indentation and quoting; strings holding `{{` or `:` need quotes")
    } else {
        None
    };
    let d = Diagnostic::error(code, path, pos, message);
    match hint {
        Some(h) => d.with_hint(h),
        None => d,
    }
}
