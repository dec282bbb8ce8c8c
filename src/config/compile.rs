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

/// A compiled source profile, its payload schemas and `fields:`, and whether
/// those schemas could be read (when not, its events are unknown, and what
/// mappings say about them is not checked: one M021 says why).
type CompiledSource = (prog::Source, SchemaSet, Fields, bool);

fn compile_source(
    ctx: &mut Ctx,
    sp: &SourceProfile,
    schemas: Option<Result<SchemaSet, payload_schema::SchemaSetError>>,
) -> Option<CompiledSource> {
    let file = &sp.file;
    let s = sp.spec;
    let dir = file
        .parent()
        .unwrap_or(Path::new("."))
        .join(&s.schemas.value);
    let mut readable = true;
    let set = match schemas.unwrap_or_else(|| {
        Err(payload_schema::SchemaSetError::NotRead {
            path: dir.to_path_buf(),
        })
    }) {
        Ok(set) => {
            if set.events.is_empty() {
                readable = false;
                ctx.err(
                    Code::M021,
                    file,
                    pos_of(&s.schemas),
                    format!("no `<Event>.schema.json` files in {}", dir.display()),
                )
                .hint = Some(format!(
                    "write one JSON Schema per event there (`mapper new --source {} --event E --from SAMPLE.json` infers one from a sample); the mappings of source `{}` were not checked against events",
                    s.source.value, s.source.value
                ));
            }
            set
        }
        Err(e) => {
            readable = false;
            ctx.err(
                Code::M021,
                file,
                pos_of(&s.schemas),
                format!("cannot read payload schemas: {e}"),
            )
            .hint = Some(format!(
                "`schemas:` is a folder relative to this file; the mappings of source `{}` were not checked against events until it can be read",
                s.source.value
            ));
            SchemaSet::default()
        }
    };
    let event_type = ctx.selector(file, pos_of(&s.event.type_path), &s.event.type_path.value);
    let event_id = s
        .event
        .id
        .as_ref()
        .map(|p| ctx.selector(file, pos_of(p), &p.value));
    let time = s
        .event
        .time
        .as_ref()
        .map(|p| ctx.selector(file, pos_of(p), &p.value));
    let customer: Vec<Option<Selector>> = match &s.event.customer {
        Some(paths) => paths
            .value
            .to_vec()
            .iter()
            .map(|p| ctx.selector(file, pos_of(paths), p))
            .collect(),
        None => Vec::new(),
    };
    let dedup: Vec<Option<Selector>> = s
        .event
        .dedup
        .iter()
        .map(|p| ctx.selector(file, pos_of(p), &p.value))
        .collect();
    if let Some(tz) = &s.event.time_zone
        && tz != "UTC"
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        ctx.err(
            Code::M020,
            file,
            Pos::UNKNOWN,
            format!("`time_zone: {tz}` is not an IANA time zone"),
        );
    }
    if s.body.format == model::BodyFormat::Form && s.body.field.is_none() {
        ctx.err(
            Code::M011,
            file,
            Pos::UNKNOWN,
            "`body.format: form` needs `body.field`, the form field holding the JSON",
        )
        .hint = Some("SlickText's legacy webhooks use `field: data`".into());
    }
    check_verify(ctx, file, &s.verify);
    let mut fields = IndexMap::new();
    for (name, paths) in &s.fields {
        let mut sels = Vec::new();
        for p in paths.value.to_vec() {
            if let Some(sel) = ctx.selector(file, pos_of(paths), &p) {
                sels.push(sel);
            }
        }
        fields.insert(name.clone(), (pos_of(paths), file.clone(), sels));
    }
    let mut mirror = Vec::new();
    for (name, paths) in &s.mirror {
        if let model::OneOrMany::One(text) = &paths.value
            && text.contains("{{")
        {
            let scope = Scope::new(&["payload", "known", "vars"]);
            if let Some(tpl) = ctx.tpl(file, pos_of(paths), text, &scope) {
                mirror.push((name.clone(), prog::MirrorValue::Template(tpl)));
            }
            continue;
        }
        let mut sels = Vec::new();
        for p in paths.value.to_vec() {
            match p.strip_prefix('@') {
                Some(alias) => match fields.get(alias) {
                    Some((_, _, found)) => sels.extend(found.iter().cloned()),
                    None => {
                        let near = nearest(alias, fields.keys().map(String::as_str));
                        ctx.err(
                            Code::M017,
                            file,
                            pos_of(paths),
                            format!("`@{alias}` is not a field of this source"),
                        )
                        .hint = Some(match near {
                            Some(n) => format!("did you mean `@{n}`?"),
                            None => "declare it under `fields:` first".into(),
                        });
                    }
                },
                None => sels.extend(ctx.selector(file, pos_of(paths), &p)),
            }
        }
        mirror.push((name.clone(), prog::MirrorValue::Paths(sels)));
    }
    if !s.mirror.is_empty() && s.event.customer.is_none() {
        ctx.err(
            Code::M011,
            file,
            pos_of(&s.source),
            "`mirror:` needs `event.customer`, the customer id the mirror is kept under",
        )
        .hint = Some("e.g. `event: {customer: $.customer_id}`".into());
    }
    let route = s.route.as_ref().and_then(|r| {
        if r.variable.is_empty() || r.variable.contains('=') {
            ctx.err(
                Code::M011,
                file,
                pos_of(&r.by),
                "`route.variable` must name a variable, e.g. `GHL_LOCATION_ID`",
            );
            return None;
        }
        Some(prog::Route {
            by: ctx.selector(file, pos_of(&r.by), &r.by.value)?,
            variable: r.variable.clone(),
        })
    });
    let src = prog::Source {
        route,
        name: s.source.value.clone(),
        profile: s.profile.value.clone(),
        file: file.clone(),
        body: s.body.clone(),
        event_type: event_type?,
        event_names: s.event.names.clone(),
        default_event: s.event.default.clone(),
        event_id: event_id.flatten(),
        dedup: dedup.into_iter().flatten().collect(),
        customer: customer.into_iter().flatten().collect(),
        mirror,
        describes: s.describes.as_ref().map(|d| d.value.clone()),
        snapshots: s.snapshots,
        time: time.flatten(),
        time_zone: s.event.time_zone.clone(),
        attempt_field: s.event.attempt.clone(),
        verify: s.verify.clone(),
        events: set.events.keys().cloned().collect(),
    };
    Some((src, set, fields, readable))
}

fn check_verify(ctx: &mut Ctx, file: &Path, v: &model::VerifySpec) {
    use model::VerifyMethod as M;
    let need = |ctx: &mut Ctx, what: &str, present: bool, hint: &str| {
        if !present {
            ctx.err(
                Code::M011,
                file,
                Pos::UNKNOWN,
                format!("`verify.method: {:?}` needs `{what}`", v.method).to_lowercase(),
            )
            .hint = Some(hint.into());
        }
    };
    match v.method {
        M::None | M::Internal => {}
        M::Token => {
            need(
                ctx,
                "secret_env",
                v.secret_env.is_some(),
                "name the environment variable holding the token",
            );
            need(
                ctx,
                "header or query",
                v.header.is_some() || v.query.is_some(),
                "say where the token is: `header: X-Webhook-Token` and/or `query: token`",
            );
        }
        M::Hmac => {
            need(
                ctx,
                "secret_env",
                v.secret_env.is_some(),
                "name the environment variable holding the HMAC key",
            );
            need(
                ctx,
                "header",
                v.header.is_some(),
                "name the header carrying the signature",
            );
            need(ctx, "algorithm", v.algorithm.is_some(), "sha256 or md5");
        }
        M::StandardWebhooks => need(
            ctx,
            "secret_env",
            v.secret_env.is_some(),
            "name the environment variable holding the `whsec_…` secret",
        ),
        M::Ghl => {}
    }
}

fn compile_target(ctx: &mut Ctx, tp: &TargetProfile) -> Option<prog::Target> {
    let file = &tp.file;
    let t = tp.spec;
    let env = &t.env;
    let mut base = Scope::new(&["env", "known"]);
    base.env = Some(env);
    let base_url = ctx.tpl(file, pos_of(&t.base_url), &t.base_url.value, &base);
    let mut headers = Vec::new();
    for (name, value) in &t.headers {
        if let Some(v) = ctx.tpl(file, pos_of(value), &value.value, &base) {
            headers.push((name.clone(), v));
        }
    }
    let error_message = t
        .error_message
        .as_ref()
        .and_then(|p| ctx.selector(file, pos_of(p), &p.value));
    let customer = t.customer.as_ref().map(|c| {
        let mut find = IndexMap::new();
        let mut scope = Scope::new(&["env", "known", "value", "keys"]);
        scope.env = Some(env);
        for (key, f) in &c.find {
            let req = ctx.request(file, &f.request, &scope);
            let id = ctx.selector(file, pos_of(&f.id), &f.id.value);
            if let (Some(r), Some(i)) = (req, id) {
                find.insert(key.clone(), (r, i));
            }
        }
        let create = c
            .create
            .as_ref()
            .and_then(|cr| compile_create(ctx, file, cr, &scope));
        prog::CustomerCapability {
            link: c.link.clone(),
            find,
            create,
        }
    });
    let mut lookups = IndexMap::new();
    for (name, l) in &t.lookups {
        let mut scope = Scope::new(&["env", "known"]);
        scope.env = Some(env);
        let list = ctx.request(file, &l.list, &scope);
        let items = ctx.selector(file, pos_of(&l.items), &l.items.value);
        let item_scope = Scope {
            roots: vec!["item".into(), "env".into()],
            env: Some(env),
            params: None,
        };
        let key = ctx.tpl(file, pos_of(&l.key), &l.key.value, &item_scope);
        let id = ctx.tpl(file, pos_of(&l.id), &l.id.value, &item_scope);
        let create = l
            .create
            .as_ref()
            .and_then(|cr| compile_create(ctx, file, cr, &item_scope));
        if let (Some(list), Some(items), Some(key), Some(id)) = (list, items, key, id) {
            lookups.insert(
                name.clone(),
                prog::Lookup {
                    list,
                    items,
                    key,
                    id,
                    create,
                },
            );
        }
    }
    let mut operations = IndexMap::new();
    for (name, op) in &t.operations {
        if name == "http" {
            ctx.err(
                Code::M016,
                file,
                Pos::UNKNOWN,
                "`http` is built in (a raw request on this target); name the operation otherwise",
            );
        }
        let scope = Scope {
            roots: REQUEST_ROOTS.iter().map(|s| s.to_string()).collect(),
            env: Some(env),
            params: Some(&op.params),
        };
        let mut reflects = Vec::new();
        let mut relative = Vec::new();
        for (field, text) in &op.reflects {
            let scope = Scope {
                roots: vec!["params".into(), "answer".into(), "mirror".into()],
                env: None,
                params: Some(&op.params),
            };
            if let Some(info) = ctx.tpl_info(file, pos_of(text), &text.value, &scope) {
                // Computed from what the record holds now (tags + the new
                // ones): the call changes the value rather than replacing it.
                if info
                    .vars
                    .iter()
                    .any(|v| v == "mirror" || v.starts_with("mirror."))
                {
                    relative.push(field.clone());
                }
                reflects.push((field.clone(), info.tpl));
            }
        }
        if let Some(request) = ctx.request(file, &op.request, &scope) {
            operations.insert(
                name.clone(),
                prog::Operation {
                    needs_customer: op.needs_customer,
                    params: op.params.clone(),
                    request,
                    remember: op
                        .remember
                        .iter()
                        .filter_map(|(name, path)| {
                            Some((name.clone(), ctx.selector(file, pos_of(path), &path.value)?))
                        })
                        .collect(),
                    tracks: op.tracks.clone(),
                    coalesce: compile_op_coalesce(ctx, file, name, op, t.coalesce.is_some()),
                    idempotent: op.idempotent,
                    reflects,
                    relative,
                },
            );
        }
        for p in op.params.values() {
            if let Some(l) = &p.keys_from
                && !t.lookups.contains_key(l)
            {
                ctx.err(
                    Code::M010,
                    file,
                    Pos::UNKNOWN,
                    format!("operation `{name}`: `keys_from: {l}` names no lookup of this target"),
                );
            }
        }
    }
    let carried = t
        .customer
        .as_ref()
        .and_then(|c| c.create.as_ref())
        .map(|c| c.carries.as_slice())
        .unwrap_or_default();
    for op in carried {
        if !t.operations.contains_key(&op.value) {
            ctx.err(
                Code::M010,
                file,
                pos_of(op),
                format!(
                    "`customer.create.carries` names `{}`, which is not an operation of this target",
                    op.value
                ),
            );
        }
    }
    for name in t.unsupported.keys() {
        if t.operations.contains_key(name) {
            ctx.err(
                Code::M016,
                file,
                Pos::UNKNOWN,
                format!("`{name}` is both an operation and unsupported"),
            );
        }
    }
    let coalesce_window = t.coalesce.as_ref().and_then(|c| {
        let window = parse_duration(&c.window.value);
        if window.is_none() {
            ctx.err(
                Code::M011,
                file,
                pos_of(&c.window),
                format!("`window: {}` is not a duration", c.window.value),
            )
            .hint = Some("a number and a unit: `0s`, `30s`, `5m`, `1h`".into());
        }
        window
    });
    Some(prog::Target {
        name: t.target.value.clone(),
        profile: t.profile.value.clone(),
        file: file.clone(),
        base_url: base_url?,
        env: env.clone(),
        headers,
        rate_limit: t.rate_limit.clone(),
        timeout: std::time::Duration::from_secs(t.timeout_seconds.unwrap_or(20).max(1)),
        error_message,
        customer,
        lookups,
        operations,
        coalesce_window,
    })
}

/// An operation's `coalesce:` rules; writes are only held when the target
/// declares a window.
fn compile_op_coalesce(
    ctx: &mut Ctx,
    file: &Path,
    name: &str,
    op: &crate::config::model::Operation,
    target_coalesces: bool,
) -> Option<prog::Coalesce> {
    use crate::config::model::OpCoalesce;
    let rules = op.coalesce.as_ref()?;
    if !target_coalesces {
        ctx.err(
            Code::M011,
            file,
            Pos::UNKNOWN,
            format!("operation `{name}` says how its writes coalesce, but the target declares no `coalesce: {{window: …}}`"),
        )
        .hint = Some("add `coalesce: { window: 5m }` at the top of the target file".into());
        return None;
    }
    if op.tracks.is_some() {
        ctx.err(
            Code::M011,
            file,
            Pos::UNKNOWN,
            format!("operation `{name}` both `tracks:` a set and coalesces; a held write cannot be compared with the set it will meet"),
        );
        return None;
    }
    match rules {
        OpCoalesce::Keyword(_) => Some(prog::Coalesce {
            sum: vec![],
            sum_when: None,
        }),
        OpCoalesce::Rules(r) => {
            for p in &r.sum {
                if !op.params.contains_key(p) {
                    ctx.err(
                        Code::M011,
                        file,
                        Pos::UNKNOWN,
                        format!("operation `{name}`: `coalesce.sum` names `{p}`, which is not one of its params"),
                    );
                }
            }
            let sum_when = match &r.sum_when {
                Some(text) => {
                    let scope = Scope {
                        roots: vec!["params".into()],
                        env: None,
                        params: Some(&op.params),
                    };
                    Some(ctx.condition(file, pos_of(text), &text.value, &scope)?)
                }
                None => None,
            };
            Some(prog::Coalesce {
                sum: r.sum.clone(),
                sum_when,
            })
        }
    }
}

fn compile_create(
    ctx: &mut Ctx,
    file: &Path,
    cr: &model::CreateSpec,
    scope: &Scope,
) -> Option<prog::Create> {
    let request = ctx.request(file, &cr.request, scope);
    let id = ctx.selector(file, pos_of(&cr.id), &cr.id.value);
    let dup = cr
        .duplicate_id
        .as_ref()
        .map(|d| ctx.selector(file, pos_of(d), &d.value));
    let reflect_scope = Scope::new(&["keys", "answer", "mirror"]);
    let reflects = cr
        .reflects
        .iter()
        .filter_map(|(name, text)| {
            Some((
                name.clone(),
                ctx.tpl(file, pos_of(text), &text.value, &reflect_scope)?,
            ))
        })
        .collect();
    Some(prog::Create {
        request: request?,
        id: id?,
        duplicate_id: dup.flatten(),
        reflects,
        carries: cr.carries.iter().map(|c| c.value.clone()).collect(),
    })
}

#[allow(clippy::too_many_arguments)]
fn compile_mapping(
    ctx: &mut Ctx,
    file: &Path,
    m: &model::Mapping,
    sources: &IndexMap<String, prog::Source>,
    schemas: &HashMap<String, SchemaSet>,
    fields: &HashMap<String, Fields>,
    targets: &IndexMap<String, prog::Target>,
    target_specs: &HashMap<String, &model::TargetFile>,
    provision: &IndexMap<String, IndexMap<String, IndexMap<String, Value>>>,
    unreadable: &HashSet<String>,
    vars: &Value,
) -> Option<prog::Mapping> {
    // A mapping written for some profiles only is left out under the others.
    for (name, supported) in &m.profiles {
        let active = sources
            .get(name)
            .map(|s| &s.profile)
            .or_else(|| targets.get(name).map(|t| &t.profile));
        match active {
            Some(p) if !supported.contains(p) => return None,
            Some(_) => {}
            None => {
                ctx.err(
                    Code::M009,
                    file,
                    pos_of(&m.name),
                    format!("mapping `{}` names profiles of `{name}`, which is neither a source nor a target", m.name.value),
                );
            }
        }
    }
    let source_name = &m.source.value;
    let Some(source) = sources.get(source_name) else {
        let near = nearest(source_name, sources.keys().map(String::as_str));
        ctx.err(
            Code::M007,
            file,
            pos_of(&m.source),
            format!("unknown source `{source_name}`"),
        )
        .hint = Some(match near {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!(
                "defined sources: {}",
                sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
        return None;
    };
    let events = m.event.value.to_vec();
    // A source whose schemas cannot be read has one M021 saying so; checking
    // its events and selectors would only repeat it for every mapping.
    let events_known = !unreadable.contains(source_name);
    let schema_set = schemas.get(source_name).filter(|_| events_known);
    let mut ok = true;
    for e in &events {
        if events_known && !source.events.contains(e) {
            ok = false;
            let near = nearest(e, source.events.iter().map(String::as_str));
            ctx.err(
                Code::M008,
                file,
                pos_of(&m.event),
                format!(
                    "source `{source_name}` (profile {}) has no event `{e}`",
                    source.profile
                ),
            )
            .hint = Some(match near {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!("its events: {}", source.events.join(", ")),
            });
        }
    }
    let target_name = &m.target.value;
    let target = targets.get(target_name);
    if target.is_none() {
        ok = false;
        let near = nearest(target_name, targets.keys().map(String::as_str));
        ctx.err(
            Code::M009,
            file,
            pos_of(&m.target),
            format!("unknown target `{target_name}`"),
        )
        .hint = Some(match near {
            Some(n) => format!("did you mean `{n}`?"),
            None => format!(
                "defined targets: {}",
                targets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }

    // selects
    let mut selects = Vec::new();
    let mut select_types: HashMap<String, Option<Kinds>> = HashMap::new();
    let src_fields = fields.get(source_name);
    for (name, spec) in &m.select {
        let pos = pos_of(spec);
        let (from, missing, default) = match &spec.value {
            SelectSpec::Path(p) => (p.to_vec(), model::Missing::Skip, None),
            SelectSpec::Full(f) => (f.from.to_vec(), f.missing, f.default.clone()),
        };
        if MAPPING_ROOTS.contains(&name.as_str()) {
            ctx.err(
                Code::M016,
                file,
                pos,
                format!("`{name}` is a reserved name in templates; call the value otherwise"),
            );
        }
        let mut paths = Vec::new();
        for p in from {
            if let Some(alias) = p.strip_prefix('@') {
                match src_fields.and_then(|f| f.get(alias)) {
                    Some((field_pos, field_file, sels)) => {
                        let mut fits_any = false;
                        let mut last_err = None;
                        for sel in sels {
                            match check_against_events(schema_set, &events, sel) {
                                Ok(()) => fits_any = true,
                                Err(e) => last_err = Some(e),
                            }
                            paths.push(sel.clone());
                        }
                        if !fits_any && let Some((event, nm)) = last_err {
                            // The mistake is written in the source profile:
                            // reported there once, with a note per mapping using it.
                            let hint = no_match_hint(&nm, schema_set, &event);
                            let mut d = Diagnostic::error(Code::M012, field_file, *field_pos, format!(
                                "`@{alias}` (= {}) can never match event `{event}`: `{}` has no `{}`",
                                sels.iter().map(Selector::as_str).collect::<Vec<_>>().join(" | "), nm.valid_prefix, nm.step
                            ))
                            .with_hint(hint);
                            d.notes.push(format!(
                                "used by mapping `{}` at {}:{}:{}",
                                m.name.value,
                                shown_path(&ctx.root, file),
                                pos.via.map_or(pos.line, |v| v.0),
                                pos.via.map_or(pos.col, |v| v.1),
                            ));
                            ctx.diags.push(d);
                        }
                    }
                    None => {
                        let near =
                            src_fields.and_then(|f| nearest(alias, f.keys().map(String::as_str)));
                        ctx.err(
                            Code::M017,
                            file,
                            pos,
                            format!("`@{alias}` is not a field of source `{source_name}`"),
                        )
                        .hint = Some(match near {
                            Some(n) => format!("did you mean `@{n}`?"),
                            None => format!(
                                "fields of `{source_name}`: {}",
                                src_fields
                                    .map(|f| f
                                        .keys()
                                        .map(|k| format!("@{k}"))
                                        .collect::<Vec<_>>()
                                        .join(", "))
                                    .unwrap_or_default()
                            ),
                        });
                    }
                }
            } else if let Some(sel) = ctx.selector(file, pos, &p) {
                if let Some((event, gone)) = deprecated_in(schema_set, &events, &sel) {
                    ctx.diags.push(
                        Diagnostic::warning(
                            Code::M012,
                            file,
                            ctx.inner(file, pos, 0),
                            format!("`{p}` reads `{gone}`, which newer samples of `{event}` no longer carry (renamed or removed?)"),
                        )
                        .with_hint("`mapper schema infer` marked it `deprecated` in the payload schema: read the field that replaced it, or remove the selector"),
                    );
                }
                if let Err((event, nm)) = check_against_events(schema_set, &events, &sel) {
                    let hint = no_match_hint(&nm, schema_set, &event);
                    ctx.err(
                        Code::M012,
                        file,
                        ctx.inner(file, pos, 0),
                        format!(
                            "`{p}` can never match event `{event}`: `{}` has no `{}`",
                            nm.valid_prefix, nm.step
                        ),
                    )
                    .hint = Some(hint);
                }
                paths.push(sel);
            }
        }
        select_types.insert(
            name.clone(),
            select_yield(schema_set, &events, &paths, default.as_ref()),
        );
        selects.push(prog::Select {
            name: name.clone(),
            paths,
            missing,
            default,
        });
    }

    let mut roots: Vec<String> = MAPPING_ROOTS.iter().map(|s| s.to_string()).collect();
    roots.extend(m.select.keys().cloned());
    let scope = Scope {
        roots,
        env: None,
        params: None,
    };

    let when = m
        .when
        .as_ref()
        .and_then(|w| ctx.condition(file, pos_of(w), &w.value, &scope));

    let customer = m.customer.as_ref().map(|c| {
        let link = c.link.as_ref().and_then(|l| ctx.tpl(file, pos_of(l), &l.value, &scope));
        let mut keys = Vec::new();
        for entry in &c.match_keys {
            if entry.len() != 1 {
                ctx.err(Code::M002, file, entry.values().next().map(pos_of).unwrap_or_default(),
                    "each `match:` entry is one `key: template` pair, e.g. `- phone: \"{{ phone | e164 }}\"`");
                continue;
            }
            for (key, value) in entry {
                if let Some(t) = target.and_then(|t| t.customer.as_ref())
                    && !t.find.contains_key(key)
                {
                    ctx.err(Code::M010, file, pos_of(value), format!("target `{target_name}` cannot find a customer by `{key}`"))
                        .hint = Some(format!("keys it can search: {}", t.find.keys().cloned().collect::<Vec<_>>().join(", ")));
                }
                if let Some(tpl) = ctx.tpl(file, pos_of(value), &value.value, &scope) {
                    keys.push((key.clone(), tpl));
                }
            }
        }
        if let Some(t) = target
            && t.customer.is_none()
        {
            ctx.err(Code::M015, file, Pos::UNKNOWN, format!("target `{target_name}` declares no `customer:` capability, so `customer:` cannot be used"));
        }
        prog::CustomerMatch {
            link,
            keys,
            when_unmatched: c.when_unmatched,
            link_source: c.link_source.clone(),
        }
    });

    let mut actions = Vec::new();
    for a in &m.actions {
        let op_name = &a.op.value;
        let op_pos = pos_of(&a.op);
        let Some(t) = target else { continue };
        let spec = target_specs.get(target_name);
        let when = a
            .when
            .as_ref()
            .and_then(|w| ctx.condition(file, pos_of(w), &w.value, &scope));
        let params_pos = a.params.as_ref().map(|p| p.pos).unwrap_or(op_pos);
        if let Some(p) = &a.params
            && p.as_map().is_none()
        {
            ctx.err(
                Code::M002,
                file,
                p.pos,
                format!(
                    "`with:` must be a map of parameters, found {}",
                    p.kind_name()
                ),
            );
            continue;
        }
        let empty = Node {
            pos: params_pos,
            kind: NodeKind::Map(vec![]),
        };
        let params_node = a.params.as_ref().unwrap_or(&empty);
        if op_name == "http" {
            for required in ["method", "path"] {
                if params_node.get(required).is_none() {
                    ctx.err(
                        Code::M011,
                        file,
                        params_pos,
                        format!("`http` needs `{required}`"),
                    )
                    .hint = Some(
                        "`with: { method: POST, path: /v1/x, query: {...}, body: {...} }`".into(),
                    );
                }
            }
            if let Some(v) = ctx.value(file, params_node, &scope) {
                actions.push(prog::Action {
                    op: op_name.clone(),
                    when,
                    params: v,
                    raw_http: true,
                    only_if_created: a.only_if_created,
                });
            }
            continue;
        }
        if let Some(reason) = spec.and_then(|s| s.unsupported.get(op_name)) {
            let msg = format!(
                "target `{target_name}` (profile {}) cannot `{op_name}`: {reason}",
                t.profile
            );
            if a.if_supported {
                ctx.diags.push(Diagnostic::warning(
                    Code::M015,
                    file,
                    op_pos,
                    format!("{msg}; the action is dropped (if_supported)"),
                ));
            } else {
                ctx.err(Code::M015, file, op_pos, msg).hint = Some(
                    "remove the action, or add `if_supported: true` to drop it under this profile"
                        .into(),
                );
            }
            continue;
        }
        let Some(op) = t.operations.get(op_name) else {
            let near = nearest(op_name, t.operations.keys().map(String::as_str));
            ctx.err(
                Code::M010,
                file,
                op_pos,
                format!(
                    "target `{target_name}` (profile {}) has no operation `{op_name}`",
                    t.profile
                ),
            )
            .hint = Some(match near {
                Some(n) => format!("did you mean `{n}`?"),
                None => format!(
                    "operations: {}, http",
                    t.operations.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
            continue;
        };
        let unsupported_params = spec
            .and_then(|s| s.operations.get(op_name))
            .map(|o| &o.unsupported_params);
        let entries = params_node.as_map().unwrap_or(&[]);
        for (k, v) in entries {
            if let Some(reason) = unsupported_params.and_then(|u| u.get(&k.name)) {
                ctx.err(
                    Code::M015,
                    file,
                    k.pos,
                    format!(
                        "`{op_name}` on `{target_name}` cannot take `{}`: {reason}",
                        k.name
                    ),
                );
                continue;
            }
            let Some(param) = op.params.get(&k.name) else {
                let near = nearest(&k.name, op.params.keys().map(String::as_str));
                ctx.err(
                    Code::M011,
                    file,
                    k.pos,
                    format!("`{op_name}` has no parameter `{}`", k.name),
                )
                .hint = Some(match near {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!(
                        "parameters: {}",
                        op.params.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
                continue;
            };
            check_literal(ctx, file, op_name, &k.name, param, v);
            let resolve = |name: &str| resolve_kinds(name, &select_types, vars);
            if let Some(wanted) = Wanted::of_param(param.kind) {
                check_yield(
                    ctx,
                    file,
                    v,
                    &format!("`{op_name}.{}`", k.name),
                    wanted,
                    &resolve,
                    false,
                );
            }
            if let Some(lookup) = &param.keys_from
                && let Some(map) = v.as_map()
            {
                let declared = provision.get(target_name).and_then(|p| p.get(lookup));
                for (key, value) in map {
                    let data_type = declared
                        .and_then(|d| d.get(&key.name))
                        .and_then(|decl| decl.get("data_type"))
                        .and_then(Value::as_str);
                    if let Some(wanted) = data_type.and_then(Wanted::of_data_type) {
                        let what = format!(
                            "custom field `{}` ({})",
                            key.name,
                            data_type.unwrap_or_default()
                        );
                        check_yield(ctx, file, value, &what, wanted, &resolve, true);
                    }
                    if !declared.is_some_and(|d| d.contains_key(&key.name)) {
                        ctx.err(Code::M018, file, key.pos, format!("`{}` is not declared under `provision.{target_name}.{lookup}` in mapper.yaml", key.name))
                            .hint = Some(format!("declare it so it can be created on first use, e.g. `{}: {{ name: …, data_type: TEXT }}`", key.name));
                    }
                }
            }
        }
        for (name, p) in &op.params {
            if p.required && !entries.iter().any(|(k, _)| &k.name == name) {
                ctx.err(
                    Code::M011,
                    file,
                    params_pos,
                    format!("`{op_name}` needs parameter `{name}`"),
                )
                .hint = p.description.clone();
            }
        }
        warn_todo(ctx, file, &m.name.value, params_node);
        if let Some(v) = ctx.value(file, params_node, &scope) {
            actions.push(prog::Action {
                op: op_name.clone(),
                when,
                params: v,
                raw_http: false,
                only_if_created: a.only_if_created,
            });
        }
    }
    if !ok {
        return None;
    }
    if !m.actions.is_empty()
        && actions.is_empty()
        && !ctx.diags.iter().any(|d| d.is_error() && d.file == file)
    {
        // Every action was dropped by `if_supported`: the mapping would only look the customer up.
        ctx.diags.push(Diagnostic::warning(
            Code::M015,
            file,
            pos_of(&m.name),
            format!(
                "mapping `{}` has no action this target profile can do; it is disabled",
                m.name.value
            ),
        ));
        return None;
    }
    Some(prog::Mapping {
        name: m.name.value.clone(),
        file: file.to_path_buf(),
        source: source_name.clone(),
        events,
        when,
        order: m.order,
        target: target_name.clone(),
        selects,
        customer,
        actions,
    })
}

/// What to tell about a selector that cannot match: the declared path it
/// most likely meant (always one, at any depth), the same name under another
/// parent, and, when the schema accepts undeclared properties, the file to
/// declare it in.
fn no_match_hint(nm: &payload_schema::NoMatch, set: Option<&SchemaSet>, event: &str) -> String {
    let file = set
        .and_then(|s| s.files.get(event))
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| format!("the payload schema of `{event}`"));
    let declare = format!(
        "if the payload really carries `{}`, declare it under `properties` of `{}` in {file} (the schema accepts undeclared properties, but `check` trusts only declared ones)",
        nm.step, nm.valid_prefix
    );
    if let Some(e) = &nm.elsewhere
        && nm.nearest.as_deref().is_none_or(|n| n == e)
    {
        return format!("`{}` is declared at `{e}`: did you mean it?", nm.step);
    }
    match (&nm.nearest, &nm.closest) {
        (Some(n), _) => format!("did you mean `{n}`?"),
        (None, Some(c)) if nm.open => format!("{declare}; the nearest declared path is `{c}`"),
        (None, Some(c)) => format!("the nearest declared path is `{c}` (see {file})"),
        (None, None) if nm.open => declare,
        (None, None) => format!("{file} declares no property here"),
    }
}

/// What a destination takes: the kinds of value it accepts, for messages
/// its name, and how to convert what does not fit.
#[derive(Clone, Copy)]
struct Wanted {
    accepts: Kinds,
    name: &'static str,
}

impl Wanted {
    /// A parameter's declared type (`any` takes everything: not judged).
    fn of_param(kind: ParamKind) -> Option<Self> {
        let (accepts, name) = match kind {
            ParamKind::Any => return None,
            ParamKind::String => (Kinds::STRINGS, "text"),
            ParamKind::Number | ParamKind::Integer => (Kinds::NUMBER, "a number"),
            ParamKind::Boolean => (Kinds::BOOLEAN, "a boolean"),
            ParamKind::List => (Kinds::LIST, "a list"),
            ParamKind::Map => (Kinds::OBJECT, "a map"),
        };
        Some(Wanted { accepts, name })
    }

    /// What a GHL custom field of this `data_type` takes; `None` for a type
    /// the checker does not know (not judged).
    fn of_data_type(data_type: &str) -> Option<Self> {
        let scalar = Kinds::STRINGS.union(Kinds::NUMBER).union(Kinds::BOOLEAN);
        let (accepts, name) = match data_type.to_ascii_uppercase().as_str() {
            "NUMERICAL" | "MONETORY" | "MONETARY" => (Kinds::NUMBER, "a number"),
            "DATE" => (Kinds::DATE.union(Kinds::DATETIME), "a date"),
            "TEXT" | "LARGE_TEXT" | "PHONE" | "EMAIL" | "SINGLE_OPTIONS" | "RADIO" => {
                (scalar, "a single value")
            }
            "CHECKBOX" | "MULTIPLE_OPTIONS" => (Kinds::LIST.union(Kinds::STRINGS), "options"),
            _ => return None,
        };
        Some(Wanted { accepts, name })
    }

    /// How to make `got` fit.
    fn hint(self, got: Kinds) -> String {
        if self.accepts.within(Kinds::NUMBER) {
            return "convert it with the `number` filter (`{{ value | number }}`; not a number → missing), or pass a number".into();
        }
        if self.accepts.within(Kinds::BOOLEAN) {
            return "write a condition that yields true or false (`{{ value == 'yes' }}`), or pass true/false".into();
        }
        if self.accepts.within(Kinds::DATE.union(Kinds::DATETIME)) {
            return "convert it with the `date` filter (`{{ value | date }}`; not a date → missing)".into();
        }
        if self.accepts.within(Kinds::LIST) {
            return "make a list: `{{ value | split_list }}` for comma-separated text, or `[value]` in YAML".into();
        }
        if got.within(Kinds::LIST.union(Kinds::NULL)) {
            return "take one item (`{{ values | first }}`) or join them (`{{ values | join(', ') }}`)".into();
        }
        if self.accepts.within(Kinds::STRINGS) {
            return "make it text with the `string` filter (`{{ value | string }}`) or write it inside text".into();
        }
        format!("pass {}", self.name)
    }
}

/// The kinds of value a select can yield, from the payload schemas of its
/// events (`None`: unknown, so not judged).
fn select_yield(
    set: Option<&SchemaSet>,
    events: &[String],
    paths: &[Selector],
    default: Option<&Value>,
) -> Option<Kinds> {
    let set = set?;
    let mut out = Kinds::default();
    for sel in paths {
        for e in events {
            let schema = set.events.get(e)?;
            // An alternative the event's payload cannot have (a `@field`
            // listing every profile's path) finds nothing there: no type.
            if payload_schema::check(schema, sel.steps(), sel.as_str()).is_err() {
                continue;
            }
            for t in payload_schema::types_at(schema, sel.steps(), sel.is_singular())? {
                out = out.union(Kinds::of_schema_type(&t)?);
            }
        }
    }
    if let Some(d) = default {
        out = out.union(Kinds::of_json(d));
    }
    (!out.is_empty()).then_some(out)
}

/// The kinds of a name a mapping template reads: a select (from the payload
/// schema), a `vars.` constant, or a field of `event`.
fn resolve_kinds(
    name: &str,
    selects: &HashMap<String, Option<Kinds>>,
    vars: &Value,
) -> Option<types::Yield> {
    if let Some(var) = name.strip_prefix("vars.") {
        let v = vars.get(var)?;
        return Some(types::Yield {
            kinds: Kinds::of_json(v),
            from: format!("`vars.{var}`"),
        });
    }
    let kinds = match name {
        "event.source" | "event.type" | "event.id" | "event.dedup_key" => Kinds::TEXT,
        // Normalised to RFC 3339 when the event is read; missing when the payload has no time.
        "event.occurred_at" => Kinds::DATETIME.union(Kinds::NULL),
        _ => {
            let kinds = (*selects.get(name)?)?;
            return Some(types::Yield {
                kinds,
                from: format!("`{name}`, as the payload schema declares it"),
            });
        }
    };
    Some(types::Yield {
        kinds,
        from: format!("`{name}`"),
    })
}

/// Holds a template's yield to the kinds its destination takes: an error
/// when it can yield another kind (null aside: a missing value is left out).
fn check_yield(
    ctx: &mut Ctx,
    file: &Path,
    node: &Node,
    what: &str,
    wanted: Wanted,
    resolve: &dyn Fn(&str) -> Option<types::Yield>,
    literals: bool,
) {
    let is_template =
        matches!(&node.kind, NodeKind::Str(t) if t.contains("{{") || t.contains("{%"));
    let text = match &node.kind {
        NodeKind::Str(t) => t.clone(),
        _ => node.to_json().to_string(),
    };
    let y = if is_template {
        types::infer(&text, resolve)
    } else if literals {
        // A literal value, where no parameter type judged it already.
        Some(types::Yield {
            kinds: Kinds::of_json(&node.to_json()),
            from: "a literal".into(),
        })
    } else {
        None
    };
    let Some(y) = y else {
        return;
    };
    let got = y.kinds.without(Kinds::NULL);
    if got.is_empty() || got.within(wanted.accepts) {
        return;
    }
    ctx.err(
        Code::M025,
        file,
        node.pos,
        format!(
            "{what} takes {}, but `{}` can yield {} (from {})",
            wanted.name,
            text.trim(),
            got.without(wanted.accepts).describe(),
            y.from
        ),
    )
    .hint = Some(wanted.hint(got));
}

/// Warns about a `TODO:` placeholder (as `mapper new` writes) left in an
/// action's parameters: the mapping works, but does not do its real job yet.
fn warn_todo(ctx: &mut Ctx, file: &Path, mapping: &str, node: &Node) {
    match &node.kind {
        NodeKind::Str(s) if s.trim_start().starts_with("TODO") => {
            ctx.diags.push(
                Diagnostic::warning(
                    Code::M024,
                    file,
                    node.pos,
                    format!("mapping `{mapping}` still has a placeholder: {s}"),
                )
                .with_hint("replace the action with what the event should do, then `mapper test --update` its test"),
            );
        }
        NodeKind::Seq(items) => items.iter().for_each(|i| warn_todo(ctx, file, mapping, i)),
        NodeKind::Map(entries) => entries
            .iter()
            .for_each(|(_, v)| warn_todo(ctx, file, mapping, v)),
        _ => {}
    }
}

/// The first event whose schema marks what `sel` reads as deprecated.
fn deprecated_in(
    set: Option<&SchemaSet>,
    events: &[String],
    sel: &Selector,
) -> Option<(String, String)> {
    let set = set?;
    events.iter().find_map(|e| {
        let schema = set.events.get(e)?;
        payload_schema::deprecated(schema, sel.steps()).map(|p| (e.clone(), p))
    })
}

fn check_against_events(
    set: Option<&SchemaSet>,
    events: &[String],
    sel: &Selector,
) -> Result<(), (String, Box<payload_schema::NoMatch>)> {
    let Some(set) = set else { return Ok(()) };
    for e in events {
        if let Some(schema) = set.events.get(e) {
            payload_schema::check(schema, sel.steps(), sel.as_str())
                .map_err(|nm| (e.clone(), nm))?;
        }
    }
    Ok(())
}

/// Checks a literal parameter value against its declared type and allowed values.
fn check_literal(ctx: &mut Ctx, file: &Path, op: &str, name: &str, param: &model::Param, v: &Node) {
    let is_template = matches!(&v.kind, NodeKind::Str(s) if s.contains("{{") || s.contains("{%"));
    if is_template {
        return;
    }
    let fits = match param.kind {
        ParamKind::Any => true,
        ParamKind::String => matches!(v.kind, NodeKind::Str(_)),
        ParamKind::Number => matches!(v.kind, NodeKind::Int(_) | NodeKind::Float(_)),
        ParamKind::Integer => matches!(v.kind, NodeKind::Int(_)),
        ParamKind::Boolean => matches!(v.kind, NodeKind::Bool(_)),
        ParamKind::List => matches!(v.kind, NodeKind::Seq(_)),
        ParamKind::Map => matches!(v.kind, NodeKind::Map(_)),
    };
    if !fits {
        ctx.err(
            Code::M020,
            file,
            v.pos,
            format!(
                "`{op}.{name}` takes {:?}, found {}",
                param.kind,
                v.kind_name()
            )
            .to_lowercase(),
        );
    }
    if let Some(allowed) = &param.one_of
        && !allowed.contains(&v.to_json())
    {
        ctx.err(
            Code::M020,
            file,
            v.pos,
            format!(
                "`{op}.{name}` must be one of {}",
                serde_json::to_string(allowed).unwrap_or_default()
            ),
        )
        .hint = Some(format!("found {}", v.to_json()));
    }
}

/// Warns about tags a mapping adds on a target whose own webhooks come back
/// (a source `describes:` it) and are turned into segments minus
/// `vars.not_segments`: a tag this integration writes and that list lacks
/// would come back as a segment on the other side.
fn check_segment_echoes(
    ctx: &mut Ctx,
    mapping_files: &[(PathBuf, &model::MappingFile)],
    target_specs: &HashMap<String, &model::TargetFile>,
    sources: &IndexMap<String, prog::Source>,
    vars: &Value,
) {
    let Some(not_segments) = vars.get("not_segments").and_then(Value::as_array) else {
        return;
    };
    let excluded: Vec<String> = not_segments
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_lowercase)
        .collect();
    for (file, mf) in mapping_files {
        for m in &mf.mappings {
            let target = &m.target.value;
            let described = sources
                .values()
                .any(|s| s.describes.as_deref() == Some(target.as_str()));
            let Some(spec) = target_specs.get(target).filter(|_| described) else {
                continue;
            };
            for a in &m.actions {
                let Some(tracks) = spec
                    .operations
                    .get(&a.op.value)
                    .and_then(|o| o.tracks.as_ref())
                    .filter(|t| t.mode == model::TrackMode::Add)
                else {
                    continue;
                };
                let Some(NodeKind::Seq(items)) = a
                    .params
                    .as_ref()
                    .and_then(|p| p.get(&tracks.list))
                    .map(|n| &n.kind)
                else {
                    continue;
                };
                for item in items {
                    let NodeKind::Str(tag) = &item.kind else {
                        continue;
                    };
                    if tag.contains("{{") || excluded.contains(&tag.to_lowercase()) {
                        continue;
                    }
                    ctx.diags.push(
                        Diagnostic::warning(
                            Code::M023,
                            file,
                            item.pos,
                            format!(
                                "tag `{tag}` written to `{target}` by `{}` would come back as a segment: it is not in `vars.not_segments`",
                                m.name.value
                            ),
                        )
                        .with_hint(format!(
                            "add `{}` to `vars.not_segments` in mapper.yaml, unless it should become a segment",
                            tag.to_lowercase()
                        )),
                    );
                }
            }
        }
    }
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
