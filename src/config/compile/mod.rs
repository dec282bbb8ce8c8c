//! Checks a loaded mapping set as a whole and compiles it into a [`Program`].
//!
//! Every problem found becomes a diagnostic; compilation goes on after an
//! error so one run of `mapper check` reports all of them.

use super::diagnostic::{Code, Diagnostic, Pos};
use super::load::{Loaded, Parsed};
use super::model::{self, ParamKind, SelectSpec, Settings};
use super::node::{Node, NodeKind};
use super::payload_schema::{self, SchemaSet};
use super::types::{self, Kinds};
use crate::jsonpath::Selector;
use crate::program::{self as prog, Program, ValueTpl};
use crate::template::{StrTpl, TemplateBuilder, TplInfo};
use indexmap::IndexMap;
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

mod mapping;
mod source;
mod target;

use mapping::*;
use source::*;
use target::*;

/// Result of compiling a mapping folder.
#[derive(Debug)]
pub struct Compiled {
    /// `None` when there were errors.
    pub program: Option<Program>,
    /// Mapping test cases found in the folder, with their files.
    pub tests: Vec<(PathBuf, model::TestCase)>,
    pub diagnostics: Vec<Diagnostic>,
    pub texts: BTreeMap<PathBuf, String>,
    /// The test payload files, read by `load` (see [`super::load::Loaded::payload_files`]).
    pub payload_files: BTreeMap<PathBuf, Result<Vec<u8>, String>>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads and compiles what production runs of the mapping folder at `root`:
/// project, sources, targets and mappings, never its tests (`serve`, its
/// hot reload and `plan`).
pub fn compile_dir(root: &Path) -> Compiled {
    compile(super::load::load_dir(root))
}

/// Loads and compiles the mapping folder at `root` with its mapping tests
/// and their payload files (`check` and `test`).
pub fn compile_dir_with_tests(root: &Path) -> Compiled {
    compile(super::load::load_dir_scoped(
        root,
        super::load::Scope::WithTests,
    ))
}

/// Compiles what production runs with `selection` (source or target name →
/// profile) chosen over the project file's `profiles:`.
pub fn compile_dir_under(root: &Path, selection: &[(String, String)]) -> Compiled {
    let mut loaded = super::load::load_dir(root);
    for (name, profile) in selection {
        loaded.select_profile(name, profile);
    }
    compile(loaded)
}

/// What `mapper check` runs: the folder with its tests, then every mapping
/// again under each profile not selected (a `$.` path one profile's payloads
/// lack breaks the day that profile is chosen). Errors found only under
/// another profile are reported with the profile named.
pub fn check_dir(root: &Path) -> Compiled {
    let loaded = super::load::load_dir_scoped(root, super::load::Scope::WithTests);
    let profiles = loaded.profiles();
    let mut compiled = compile(loaded);
    let Some(program) = &compiled.program else {
        return compiled;
    };
    let active = |name: &str| -> Option<String> {
        program
            .sources
            .get(name)
            .map(|s| s.profile.clone())
            .or_else(|| program.targets.get(name).map(|t| t.profile.clone()))
    };
    let mut found = Vec::new();
    for (name, list) in profiles.iter().filter(|(_, l)| l.len() > 1) {
        let current = active(name);
        for profile in list.iter().filter(|p| Some(*p) != current.as_ref()) {
            let other = compile_dir_under(root, &[(name.clone(), profile.clone())]);
            for mut d in other.diagnostics.into_iter().filter(Diagnostic::is_error) {
                let known = compiled.diagnostics.iter().chain(&found).any(|m| {
                    m.code == d.code && m.file == d.file && (m.line, m.col) == (d.line, d.col)
                });
                if known {
                    continue;
                }
                d.message = format!("under profile `{name}: {profile}`: {}", d.message);
                if d.hint.is_none() {
                    d.hint = Some(format!(
                        "make it work under both, or say which profiles the mapping supports: `profiles: {{ {name}: [{}] }}`",
                        current.clone().unwrap_or_default()
                    ));
                }
                found.push(d);
            }
        }
    }
    compiled.diagnostics.extend(found);
    super::diagnostic::sort(&mut compiled.diagnostics);
    if compiled.has_errors() {
        compiled.program = None;
    }
    compiled
}

/// Names a template may read, and what `env.`/`params.` may name.
struct Scope<'a> {
    roots: Vec<String>,
    env: Option<&'a IndexMap<String, model::EnvVar>>,
    params: Option<&'a IndexMap<String, model::Param>>,
}

impl<'a> Scope<'a> {
    fn new(roots: &[&str]) -> Self {
        Self {
            roots: roots.iter().map(|s| s.to_string()).collect(),
            env: None,
            params: None,
        }
    }
}

const MAPPING_ROOTS: &[&str] = &["event", "previous", "known", "vars"];
const REQUEST_ROOTS: &[&str] = &["params", "customer", "env", "known", "event"];

struct Ctx {
    /// The mapping folder, to name files in notes as the user wrote them.
    root: PathBuf,
    diags: Vec<Diagnostic>,
    texts: BTreeMap<PathBuf, String>,
    tb: TemplateBuilder,
}

/// Where a value is written (an anchor's definition when it came through an
/// alias, with the alias kept as [`Pos::via`]).
fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos::of_use(&s.referenced, &s.defined)
}

impl Ctx {
    fn err(
        &mut self,
        code: Code,
        file: &Path,
        pos: Pos,
        msg: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(code, file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Position of character `offset` inside the scalar starting at `pos` (skipping an opening quote).
    fn inner(&self, file: &Path, pos: Pos, offset: usize) -> Pos {
        let quoted = self
            .texts
            .get(file)
            .and_then(|t| t.lines().nth(pos.line.saturating_sub(1) as usize))
            .and_then(|l| l.chars().nth(pos.col.saturating_sub(1) as usize))
            .is_some_and(|c| c == '"' || c == '\'');
        pos.offset(offset + usize::from(quoted))
    }

    fn selector(&mut self, file: &Path, pos: Pos, path: &str) -> Option<Selector> {
        match Selector::parse(path) {
            Ok(s) => Some(s),
            Err(e) => {
                let at = self.inner(file, pos, e.position);
                let hint = if !path.starts_with('$') {
                    "a selector starts with `$` (the payload root), e.g. `$.customer.email`; `@name` uses a field of the source profile".to_string()
                } else {
                    "see RFC 9535: `$.a.b`, `$['key with spaces']`, `$.list[0]`, `$.list[?@.type == 'x']`".to_string()
                };
                self.err(
                    Code::M003,
                    file,
                    at,
                    format!("invalid JSONPath `{path}`: {}", e.message),
                )
                .hint = Some(hint);
                None
            }
        }
    }

    fn check_info(&mut self, file: &Path, pos: Pos, info: &TplInfo, scope: &Scope) {
        for f in &info.unknown_filters {
            let mut known: Vec<&str> = crate::template::filters::FILTERS.to_vec();
            known.extend([
                "lower", "upper", "trim", "default", "join", "split", "int", "float", "first",
                "last", "length", "replace", "map", "select", "items",
            ]);
            let near = nearest(f, known.iter().copied());
            let d = self.err(Code::M006, file, pos, format!("unknown filter `{f}`"));
            d.hint = Some(match near {
                Some(n) => format!("did you mean `{n}`? (README lists every filter)"),
                None => "README's mapping reference lists every filter".into(),
            });
        }
        for t in &info.unknown_tests {
            self.err(Code::M006, file, pos, format!("unknown test `{t}`"))
                .hint =
                Some("tests include: defined, undefined, none, number, string, eq, in".into());
        }
        for var in &info.vars {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            let second = parts.next();
            if scope.roots.iter().any(|r| r == root) {
                if root == "env"
                    && let (Some(env), Some(name)) = (scope.env, second)
                    && !env.contains_key(name)
                {
                    let near = nearest(name, env.keys().map(String::as_str));
                    self.err(
                        Code::M014,
                        file,
                        pos,
                        format!("environment variable `{name}` is not declared by this profile"),
                    )
                    .hint = Some(match near {
                        Some(n) => format!("did you mean `{n}`? Otherwise declare it under `env:`"),
                        None => "declare it under the profile's `env:` with a description".into(),
                    });
                }
                if root == "params"
                    && let (Some(params), Some(name)) = (scope.params, second)
                    && !params.contains_key(name)
                {
                    self.err(
                        Code::M005,
                        file,
                        pos,
                        format!("`params.{name}` is not a parameter of this operation"),
                    )
                    .hint = Some(format!(
                        "declared parameters: {}",
                        params.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                continue;
            }
            if self.tb.is_global(root) {
                continue;
            }
            let near = nearest(root, scope.roots.iter().map(String::as_str));
            self.err(
                Code::M005,
                file,
                pos,
                format!("unknown name `{root}` in template"),
            )
            .hint = Some(match near {
                Some(n) => format!(
                    "did you mean `{n}`? Names known here: {}",
                    scope.roots.join(", ")
                ),
                None => format!(
                    "names known here: {} (declare a value under `select:` to use it)",
                    scope.roots.join(", ")
                ),
            });
        }
    }

    fn tpl(&mut self, file: &Path, pos: Pos, text: &str, scope: &Scope) -> Option<StrTpl> {
        self.tpl_info(file, pos, text, scope).map(|info| info.tpl)
    }

    /// As [`Ctx::tpl`], with what the compiler learnt (the names it reads).
    fn tpl_info(&mut self, file: &Path, pos: Pos, text: &str, scope: &Scope) -> Option<TplInfo> {
        match self.tb.add(text) {
            Ok(info) => {
                self.check_info(file, pos, &info, scope);
                Some(info)
            }
            Err(e) => {
                let at = self.inner(file, pos, e.offset.unwrap_or(0));
                self.err(Code::M004, file, at, format!("template does not compile: {}", e.message))
                    .hint = Some("templates use minijinja syntax: `{{ name | filter }}`; quote YAML strings that start with `{`".into());
                None
            }
        }
    }

    fn condition(&mut self, file: &Path, pos: Pos, text: &str, scope: &Scope) -> Option<StrTpl> {
        let expr = text.trim();
        let expr = expr
            .strip_prefix("{{")
            .and_then(|e| e.strip_suffix("}}"))
            .unwrap_or(expr);
        match self.tb.add_expression(expr) {
            Ok(info) => {
                self.check_info(file, pos, &info, scope);
                Some(info.tpl)
            }
            Err(e) => {
                let at = self.inner(file, pos, e.offset.unwrap_or(0));
                self.err(
                    Code::M004,
                    file,
                    at,
                    format!("condition does not compile: {}", e.message),
                )
                .hint = Some(
                    "a condition is an expression such as `type == 'debit' and reward is defined`"
                        .into(),
                );
                None
            }
        }
    }

    fn value(&mut self, file: &Path, node: &Node, scope: &Scope) -> Option<ValueTpl> {
        Some(match &node.kind {
            NodeKind::Null => ValueTpl::Lit(Value::Null),
            NodeKind::Bool(b) => ValueTpl::Lit(Value::Bool(*b)),
            NodeKind::Int(_) | NodeKind::Float(_) => ValueTpl::Lit(node.to_json()),
            NodeKind::Str(s) => match self.tpl(file, node.pos, s, scope)? {
                StrTpl::Literal(l) => ValueTpl::Lit(Value::String(l)),
                t => ValueTpl::Str(t),
            },
            NodeKind::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    out.push(self.value(file, item, scope)?);
                }
                ValueTpl::List(out)
            }
            NodeKind::Map(entries) => {
                if let Some(over) = node.get("$each") {
                    let Some(emit) = node.get("$emit") else {
                        self.err(
                            Code::M002,
                            file,
                            node.pos,
                            "`$each` needs `$emit` beside it",
                        )
                        .hint = Some("`$emit` is the value produced for each `item`".into());
                        return None;
                    };
                    let NodeKind::Str(over_text) = &over.kind else {
                        self.err(Code::M002, file, over.pos, "`$each` takes a template such as \"{{ params.custom_fields | items }}\"");
                        return None;
                    };
                    let over_tpl = self.tpl(file, over.pos, over_text, scope)?;
                    let inner_scope = Scope {
                        roots: scope
                            .roots
                            .iter()
                            .cloned()
                            .chain(["item".to_string()])
                            .collect(),
                        env: scope.env,
                        params: scope.params,
                    };
                    let emit = self.value(file, emit, &inner_scope)?;
                    return Some(ValueTpl::Each {
                        over: over_tpl,
                        emit: Box::new(emit),
                    });
                }
                let mut out = Vec::new();
                let mut ok = true;
                for (k, v) in entries {
                    match self.value(file, v, scope) {
                        Some(t) => out.push((k.name.clone(), t)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                ValueTpl::Map(out)
            }
        })
    }

    fn request(
        &mut self,
        file: &Path,
        spec: &model::RequestSpec,
        scope: &Scope,
    ) -> Option<prog::Request> {
        let method = spec.method.value.to_ascii_uppercase();
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
            self.err(
                Code::M020,
                file,
                pos_of(&spec.method),
                format!("unknown HTTP method `{}`", spec.method.value),
            )
            .hint = Some("use GET, POST, PUT, PATCH or DELETE".into());
        }
        let path = self.tpl(file, pos_of(&spec.path), &spec.path.value, scope);
        let query = spec.query.as_ref().map(|q| self.value(file, q, scope));
        let body = spec.body.as_ref().map(|b| self.value(file, b, scope));
        Some(prog::Request {
            method,
            path: path?,
            query: query.map(|q| q.ok_or(())).transpose().ok()?,
            body: body.map(|b| b.ok_or(())).transpose().ok()?,
        })
    }
}

fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

struct SourceProfile<'a> {
    file: PathBuf,
    spec: &'a model::SourceFile,
}

struct TargetProfile<'a> {
    file: PathBuf,
    spec: &'a model::TargetFile,
}

/// Picks the active profile of each name.
fn choose<T>(
    ctx: &mut Ctx,
    kind: &str,
    all: &BTreeMap<String, Vec<(String, Pos, T)>>,
    selected: &IndexMap<String, Spanned<String>>,
    project_file: Option<&Path>,
) -> BTreeMap<String, usize>
where
    T: AsFile,
{
    let mut chosen = BTreeMap::new();
    for (name, profiles) in all {
        for (i, (p, pos, t)) in profiles.iter().enumerate() {
            if profiles[..i].iter().any(|(q, _, _)| q == p) {
                ctx.err(
                    Code::M016,
                    t.file(),
                    *pos,
                    format!("{kind} `{name}` has two profiles named `{p}`"),
                );
            }
        }
        let pick = match selected.get(name) {
            Some(spanned) => match profiles.iter().position(|(p, _, _)| *p == spanned.value) {
                Some(i) => Some(i),
                None => {
                    let fallback = ctx_root_placeholder();
                    let file = project_file.unwrap_or(&fallback);
                    let names: Vec<&str> = profiles.iter().map(|(p, _, _)| p.as_str()).collect();
                    let want = &spanned.value;
                    ctx.err(
                        Code::M009,
                        file,
                        pos_of(spanned),
                        format!("{kind} `{name}` has no profile `{want}`"),
                    )
                    .hint = Some(format!("profiles of `{name}`: {}", names.join(", ")));
                    None
                }
            },
            None if profiles.len() == 1 => Some(0),
            None => profiles
                .iter()
                .position(|(p, _, _)| p == "default")
                .or_else(|| {
                    let names: Vec<&str> = profiles.iter().map(|(p, _, _)| p.as_str()).collect();
                    ctx.err(
                        Code::M009,
                        profiles[0].2.file(),
                        profiles[0].1,
                        format!("{kind} `{name}` has several profiles and none is selected"),
                    )
                    .hint = Some(format!(
                        "add `profiles: {{ {name}: {} }}` to mapper.yaml",
                        names.join(" | ")
                    ));
                    None
                }),
        };
        if let Some(i) = pick {
            chosen.insert(name.clone(), i);
        }
    }
    chosen
}

fn ctx_root_placeholder() -> PathBuf {
    PathBuf::from("mapper.yaml")
}

trait AsFile {
    fn file(&self) -> &Path;
}
impl AsFile for SourceProfile<'_> {
    fn file(&self) -> &Path {
        &self.file
    }
}
impl AsFile for TargetProfile<'_> {
    fn file(&self) -> &Path {
        &self.file
    }
}

/// Compiles everything that was loaded. Pure: every file it needs was read
/// by `load`.
pub fn compile(loaded: Loaded) -> Compiled {
    let Loaded {
        root,
        files,
        texts,
        mut diagnostics,
        foundation_failed,
        schemas: mut loaded_schemas,
        payload_files,
    } = loaded;
    if foundation_failed {
        // Every mapping depends on the project, source and target files: report
        // their own errors only, not the echoes they would cause downstream.
        let first = diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| d.file.clone())
            .unwrap_or_default();
        diagnostics.push(
            Diagnostic::warning(Code::M021, &first, Pos::UNKNOWN, "the other checks did not run")
                .with_hint("a project, source or target file does not parse; fix it and run `mapper check` again"),
        );
        super::diagnostic::sort(&mut diagnostics);
        return Compiled {
            program: None,
            tests: vec![],
            diagnostics,
            texts,
            payload_files,
        };
    }

    let mut test_files = Vec::new();
    let mut files_kept = Vec::new();
    let test_paths: HashSet<PathBuf> = texts
        .iter()
        .filter(|(path, text)| super::load::is_test_file(path, text))
        .map(|(path, _)| path.clone())
        .collect();
    for (path, parsed) in files {
        match parsed {
            Parsed::Tests(t) => test_files.push((path, t)),
            other => files_kept.push((path, other)),
        }
    }
    let files = files_kept;
    let mut project: Option<(&PathBuf, &model::ProjectFile)> = None;
    let mut sources: BTreeMap<String, Vec<(String, Pos, SourceProfile)>> = BTreeMap::new();
    let mut targets: BTreeMap<String, Vec<(String, Pos, TargetProfile)>> = BTreeMap::new();
    let mut mapping_files = Vec::new();
    let mut diags = diagnostics;

    for (path, parsed) in &files {
        match parsed {
            Parsed::Project(p) => {
                if let Some((first, _)) = project {
                    diags.push(
                        Diagnostic::error(
                            Code::M016,
                            path,
                            Pos::new(1, 1),
                            "a second project file (`settings:`)",
                        )
                        .with_hint(format!("keep one; the first is {}", first.display())),
                    );
                } else {
                    project = Some((path, p));
                }
            }
            Parsed::Source(s) => sources.entry(s.source.value.clone()).or_default().push((
                s.profile.value.clone(),
                pos_of(&s.source),
                SourceProfile {
                    file: path.clone(),
                    spec: s,
                },
            )),
            Parsed::Target(t) => targets.entry(t.target.value.clone()).or_default().push((
                t.profile.value.clone(),
                pos_of(&t.target),
                TargetProfile {
                    file: path.clone(),
                    spec: t,
                },
            )),
            Parsed::Mappings(m) => mapping_files.push((path.clone(), m.as_ref())),
            Parsed::Tests(_) => {}
        }
    }

    let default_settings = Settings {
        phone_region: "US".into(),
        time_zone: "UTC".into(),
    };
    let settings = project
        .map(|(_, p)| &p.settings)
        .unwrap_or(&default_settings);
    let empty_profiles = IndexMap::new();
    let selected = project.map(|(_, p)| &p.profiles).unwrap_or(&empty_profiles);
    let defaults = crate::template::native::Defaults {
        phone_region: settings.phone_region.clone(),
        time_zone: settings.time_zone.clone(),
    };
    let mut ctx = Ctx {
        root: root.clone(),
        diags: std::mem::take(&mut diags),
        texts,
        tb: TemplateBuilder::new(defaults),
    };
    if let Some((file, p)) = project {
        if crate::template::filters::normalize_phone("2015550123", &p.settings.phone_region)
            .is_none()
            && p.settings
                .phone_region
                .parse::<phonenumber::country::Id>()
                .is_err()
        {
            ctx.err(
                Code::M020,
                file,
                Pos::UNKNOWN,
                format!(
                    "`phone_region: {}` is not an ISO 3166 country code",
                    p.settings.phone_region
                ),
            )
            .hint = Some("use a two-letter code such as US, GB, DE".into());
        }
        if p.settings.time_zone.parse::<chrono_tz::Tz>().is_err() && p.settings.time_zone != "UTC" {
            ctx.err(
                Code::M020,
                file,
                Pos::UNKNOWN,
                format!(
                    "`time_zone: {}` is not an IANA time zone",
                    p.settings.time_zone
                ),
            )
            .hint = Some("use a name such as UTC, America/Los_Angeles, Europe/Berlin".into());
        }
        for (name, value) in &p.profiles {
            if !sources.contains_key(name) && !targets.contains_key(name) {
                ctx.err(
                    Code::M009,
                    file,
                    pos_of(value),
                    format!("`profiles:` names `{name}`, which is neither a source nor a target"),
                );
            }
        }
    }
    let project_file = project.map(|(f, _)| f.as_path());
    let vars: Value = project
        .map(|(_, p)| serde_json::to_value(&p.vars).unwrap_or(Value::Null))
        .unwrap_or_else(|| Value::Object(Default::default()));

    // ---- sources
    let source_pick = choose(&mut ctx, "source", &sources, selected, project_file);
    let mut compiled_sources = IndexMap::new();
    let mut schemas: HashMap<String, SchemaSet> = HashMap::new();
    let mut source_fields: HashMap<String, Fields> = HashMap::new();
    let mut unreadable: HashSet<String> = HashSet::new();
    for (name, profiles) in &sources {
        for (i, (_, _, sp)) in profiles.iter().enumerate() {
            let active = source_pick.get(name) == Some(&i);
            let loaded = loaded_schemas.remove(&sp.file);
            if let Some((src, set, fields, readable)) = compile_source(&mut ctx, sp, loaded)
                && active
            {
                if !readable {
                    unreadable.insert(name.clone());
                }
                schemas.insert(name.clone(), set);
                source_fields.insert(name.clone(), fields);
                compiled_sources.insert(name.clone(), src);
            }
        }
    }

    // ---- targets
    let target_pick = choose(&mut ctx, "target", &targets, selected, project_file);
    let mut compiled_targets = IndexMap::new();
    let mut target_specs: HashMap<String, &model::TargetFile> = HashMap::new();
    for (name, profiles) in &targets {
        for (i, (_, _, tp)) in profiles.iter().enumerate() {
            let active = target_pick.get(name) == Some(&i);
            if let Some(t) = compile_target(&mut ctx, tp)
                && active
            {
                compiled_targets.insert(name.clone(), t);
                target_specs.insert(name.clone(), tp.spec);
            }
        }
    }

    for (name, profiles) in &sources {
        for (_, _, sp) in profiles {
            if let Some(described) = &sp.spec.describes
                && !compiled_targets.contains_key(&described.value)
            {
                ctx.err(
                    Code::M009,
                    &sp.file,
                    pos_of(described),
                    format!(
                        "source `{name}` describes `{}`, which is not a target",
                        described.value
                    ),
                )
                .hint = Some(format!(
                    "targets: {}",
                    compiled_targets
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }

    let mut schedules = Vec::new();
    if let Some((file, p)) = project {
        for s in &p.schedules {
            let every = parse_every(&s.every.value);
            if every.is_none() {
                ctx.err(
                    Code::M011,
                    file,
                    pos_of(&s.every),
                    format!("`every: {}` is not a duration", s.every.value),
                )
                .hint = Some("a number and a unit: `30s`, `15m`, `1h`, `1d`".into());
            }
            match compiled_sources.get(&s.source.value) {
                Some(src) if !src.mirror.is_empty() => {}
                Some(_) => {
                    ctx.err(
                        Code::M011,
                        file,
                        pos_of(&s.source),
                        format!(
                            "source `{}` keeps no mirror to run a schedule over",
                            s.source.value
                        ),
                    )
                    .hint =
                        Some("declare `mirror:` and `event.customer` in its source file".into());
                }
                None => {
                    ctx.err(
                        Code::M007,
                        file,
                        pos_of(&s.source),
                        format!(
                            "schedule `{}` reads source `{}`, which is not defined",
                            s.name.value, s.source.value
                        ),
                    );
                }
            }
            let raised = [Some(&s.event), s.reset_event.as_ref()];
            for event in raised.into_iter().flatten() {
                let known = unreadable.contains(SCHEDULE_SOURCE)
                    || compiled_sources
                        .get(SCHEDULE_SOURCE)
                        .is_some_and(|src| src.events.contains(event));
                if !known {
                    ctx.err(
                        Code::M008,
                        file,
                        pos_of(&s.name),
                        format!("schedule `{}` raises `{event}`, which source `{SCHEDULE_SOURCE}` does not define", s.name.value),
                    )
                    .hint = Some(format!(
                        "add schemas/events/{SCHEDULE_SOURCE}/{event}.schema.json (and a `{SCHEDULE_SOURCE}` source file with `verify: {{method: internal}}`)"
                    ));
                }
            }
            let scope = Scope::new(&[
                "fields",
                "last_activity",
                "inactive_days",
                "customer_id",
                "vars",
            ]);
            let when = ctx.condition(file, pos_of(&s.when), &s.when.value, &scope);
            if let (Some(every), Some(when)) = (every, when) {
                schedules.push(prog::Schedule {
                    name: s.name.value.clone(),
                    every,
                    source: s.source.value.clone(),
                    when,
                    event: s.event.clone(),
                    reset_event: s.reset_event.clone(),
                });
            }
        }
    }

    // Ownership: each field is a mirror name of a source that describes the
    // owning target (that is where the owner's last change is known), and
    // has one owner.
    let mut owners: HashMap<String, String> = HashMap::new();
    if let Some((file, p)) = project {
        for (target, fields) in &p.ownership {
            let describing: Vec<&prog::Source> = compiled_sources
                .values()
                .filter(|src| src.describes.as_deref() == Some(target.as_str()))
                .collect();
            if !compiled_targets.contains_key(target) {
                let pos = fields.first().map(pos_of).unwrap_or(Pos::UNKNOWN);
                ctx.err(
                    Code::M009,
                    file,
                    pos,
                    format!("`ownership` names target `{target}`, which is not defined"),
                );
                continue;
            }
            if describing.is_empty() {
                let pos = fields.first().map(pos_of).unwrap_or(Pos::UNKNOWN);
                ctx.err(
                    Code::M011,
                    file,
                    pos,
                    format!("no source `describes: {target}`, so the owner's changes of its fields are never known"),
                )
                .hint = Some(format!("add `describes: {target}` and `mirror:` to the source whose webhooks are about {target}'s records"));
                continue;
            }
            for field in fields {
                let known = describing
                    .iter()
                    .any(|src| src.mirror.iter().any(|(name, _)| *name == field.value));
                if !known {
                    let names: Vec<&str> = describing
                        .iter()
                        .flat_map(|src| src.mirror.iter().map(|(n, _)| n.as_str()))
                        .collect();
                    ctx.err(
                        Code::M017,
                        file,
                        pos_of(field),
                        format!(
                            "`{}` is not kept in the mirror of the sources describing `{target}`",
                            field.value
                        ),
                    )
                    .hint = Some(format!("one of: {}", names.join(", ")));
                    continue;
                }
                if let Some(other) = owners.insert(field.value.clone(), target.clone())
                    && other != *target
                {
                    ctx.err(
                        Code::M016,
                        file,
                        pos_of(field),
                        format!(
                            "`{}` is owned by both `{other}` and `{target}`",
                            field.value
                        ),
                    );
                }
            }
        }
    }

    let provision: IndexMap<String, IndexMap<String, IndexMap<String, Value>>> = project
        .map(|(_, p)| {
            p.provision
                .iter()
                .map(|(t, lk)| {
                    (
                        t.clone(),
                        lk.iter()
                            .map(|(l, items)| {
                                (
                                    l.clone(),
                                    items
                                        .iter()
                                        .map(|(k, v)| (k.clone(), v.to_json()))
                                        .collect(),
                                )
                            })
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some((file, p)) = project {
        for (t, lookups) in &p.provision {
            match target_specs.get(t) {
                None => {
                    ctx.err(
                        Code::M009,
                        file,
                        Pos::UNKNOWN,
                        format!("`provision:` names target `{t}`, which is not defined"),
                    );
                }
                Some(spec) => {
                    for (l, items) in lookups {
                        match spec.lookups.get(l) {
                            None => {
                                ctx.err(
                                    Code::M010,
                                    file,
                                    Pos::UNKNOWN,
                                    format!(
                                        "`provision.{t}.{l}`: target `{t}` has no lookup `{l}`"
                                    ),
                                )
                                .hint = Some(format!(
                                    "lookups of `{t}`: {}",
                                    spec.lookups.keys().cloned().collect::<Vec<_>>().join(", ")
                                ));
                            }
                            Some(lk) if lk.create.is_none() => {
                                ctx.err(Code::M015, file, Pos::UNKNOWN, format!("lookup `{t}.{l}` cannot create items, so nothing can be provisioned"));
                            }
                            Some(_) => {
                                for (key, decl) in items {
                                    if decl.as_map().is_none() {
                                        ctx.err(Code::M002, file, decl.pos, format!("`{key}` must be a map of the item's fields (e.g. name, data_type)"));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // ---- mappings
    let mut mappings = Vec::new();
    let mut names: HashMap<String, (PathBuf, Pos)> = HashMap::new();
    for (file, mf) in &mapping_files {
        for m in &mf.mappings {
            if let Some((first_file, first_pos)) = names.get(&m.name.value) {
                ctx.err(
                    Code::M016,
                    file,
                    pos_of(&m.name),
                    format!("mapping name `{}` is used twice", m.name.value),
                )
                .hint = Some(format!(
                    "the first is at {}:{}:{}",
                    first_file.display(),
                    first_pos.line,
                    first_pos.col
                ));
            } else {
                names.insert(m.name.value.clone(), (file.clone(), pos_of(&m.name)));
            }
            let before = ctx.diags.len();
            let compiled = compile_mapping(
                &mut ctx,
                file,
                m,
                &compiled_sources,
                &schemas,
                &source_fields,
                &compiled_targets,
                &target_specs,
                &provision,
                &unreadable,
                &vars,
            );
            let shown = shown_path(&root, file);
            for d in &mut ctx.diags[before..] {
                if let Some((line, col)) = d.via.take() {
                    d.notes.push(format!(
                        "used by mapping `{}` at {shown}:{line}:{col}",
                        m.name.value
                    ));
                }
            }
            if let Some(c) = compiled {
                mappings.push((pos_of(&m.name), c));
            }
        }
    }

    check_segment_echoes(
        &mut ctx,
        &mapping_files,
        &target_specs,
        &compiled_sources,
        &vars,
    );

    // ---- order and collisions
    let mut groups: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
    for (i, (_, m)) in mappings.iter().enumerate() {
        for e in &m.events {
            groups
                .entry((m.source.clone(), e.clone(), m.target.clone()))
                .or_default()
                .push(i);
        }
    }
    for ((source, event, target), idx) in &groups {
        let unordered: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|i| mappings[*i].1.order.is_none())
            .collect();
        if idx.len() > 1 {
            for &u in &unordered {
                let (pos, m) = &mappings[u];
                let others: Vec<String> = idx
                    .iter()
                    .map(|i| &mappings[*i].1.name)
                    .filter(|n| **n != m.name)
                    .map(|n| format!("`{n}`"))
                    .collect();
                ctx.err(
                    Code::M013,
                    &m.file,
                    *pos,
                    format!(
                        "`{}` and {} fire on {source} {event} → {target}, and `{}` has no `order:`",
                        m.name,
                        others.join(", "),
                        m.name
                    ),
                )
                .hint = Some(
                    "give each of them `order: N` (lower runs first) so their sequence is explicit"
                        .into(),
                );
            }
        }
    }
    let mut mappings: Vec<prog::Mapping> = mappings.into_iter().map(|(_, m)| m).collect();
    mappings.sort_by(|a, b| (a.order.unwrap_or(0), &a.name).cmp(&(b.order.unwrap_or(0), &b.name)));
    let mut by_event: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, m) in mappings.iter().enumerate() {
        for e in &m.events {
            by_event
                .entry((m.source.clone(), e.clone()))
                .or_default()
                .push(i);
        }
    }

    // ---- tests are collected here and run by `mapper test`
    let mut test_cases = Vec::new();
    for (path, tf) in test_files {
        for t in tf.tests {
            if !sources.contains_key(&t.source.value) {
                ctx.err(
                    Code::M007,
                    &path,
                    pos_of(&t.source),
                    format!("test names unknown source `{}`", t.source.value),
                );
            }
            let given = usize::from(t.payload.is_some())
                + usize::from(t.payload_file.is_some())
                + usize::from(t.body.is_some());
            if given != 1 {
                ctx.err(
                    Code::M019,
                    &path,
                    pos_of(&t.name),
                    format!("test `{}` needs exactly one of `payload`, `payload_file` or `body` ({given} given)", t.name.value),
                )
                .hint = Some("`payload_file` reads a raw webhook body, `body` holds one inline, `payload` is already-decoded JSON".into());
            }
            if let Some(f) = &t.payload_file {
                let file = path.parent().unwrap_or(Path::new(".")).join(&f.value);
                let why = match payload_files.get(&file) {
                    Some(Ok(_)) => None,
                    Some(Err(e)) => Some(e.clone()),
                    None => Some("was not read".to_string()),
                };
                if let Some(why) = why {
                    ctx.err(
                        Code::M019,
                        &path,
                        pos_of(f),
                        format!("payload file {} {why}", file.display()),
                    )
                    .hint = Some("`payload_file` is relative to the test file".into());
                }
            }
            test_cases.push((path.clone(), t));
        }
    }

    let Ctx {
        mut diags,
        texts,
        tb,
        ..
    } = ctx;
    // A broken test never keeps the program from being built: `check` still
    // fails on it, and `test` fails the cases of that file only.
    let has_errors = diags
        .iter()
        .any(|d| d.is_error() && !test_paths.contains(&d.file));
    let program = if has_errors {
        None
    } else {
        match tb.finish() {
            Ok(templates) => Some(Program {
                root: root.clone(),
                settings: Settings {
                    phone_region: settings.phone_region.clone(),
                    time_zone: settings.time_zone.clone(),
                },
                sources: compiled_sources,
                targets: compiled_targets,
                mappings,
                by_event,
                provision,
                templates,
                vars,
                schedules,
                owners,
            }),
            Err(e) => {
                diags.push(Diagnostic::error(
                    Code::M004,
                    Path::new("<templates>"),
                    Pos::UNKNOWN,
                    e.message,
                ));
                None
            }
        }
    };
    for d in &mut diags {
        if let Some((line, col)) = d.via.take() {
            let shown = shown_path(&root, &d.file);
            d.notes.push(format!("used at {shown}:{line}:{col}"));
        }
    }
    let mut diags = super::diagnostic::merge_repeats(diags);
    super::diagnostic::sort(&mut diags);
    Compiled {
        program,
        tests: test_cases,
        diagnostics: diags,
        texts,
        payload_files,
    }
}

type Fields = IndexMap<String, (Pos, PathBuf, Vec<Selector>)>;

/// A file as notes name it: relative to the mapping folder when inside it.
fn shown_path(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

/// The built-in source of events raised by `schedules:`.
pub const SCHEDULE_SOURCE: &str = "schedule";

/// `0s`, `30s`, `15m`, `1h`, `1d` (a bare `0` too): zero allowed.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    if text.trim() == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(seconds))
}

/// `30s`, `15m`, `1h`, `1d`.
fn parse_every(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let seconds = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(seconds))
}
