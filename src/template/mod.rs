//! Templates and conditions, compiled once per mapping set.
//!
//! A string in a mapping is one of three things, decided at load time:
//! - plain text (no `{{`/`{%`): a literal;
//! - exactly one `{{ expression }}`: evaluated to a typed value (a number
//!   stays a number, a list a list), never rendered to text and parsed back;
//! - text with templates in it: rendered to a string.
//!
//! Undefined names are errors (strict mode). At run time a value that is
//! missing makes its field *omitted*, which is how `missing: skip` works.

pub mod filters;
pub mod native;
pub mod scope;

use minijinja::value::Serde;
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, Expression, State, Template, UndefinedBehavior};
use native::{Call, Defaults, Outcome, Step, is_ident, plain_path};
use scope::Scope;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Index of a compiled template in its [`Templates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TplId(usize);

/// How a string of a mapping is evaluated.
#[derive(Debug, Clone)]
pub enum StrTpl {
    /// No template syntax.
    Literal(String),
    /// `{{ a.b }}` or `{{ item[1] }}`: a plain lookup, answered without running the template engine.
    Var(Vec<Step>),
    /// `{{ lookup('kind', a.b) }}`: the id lookup of target templates, answered directly.
    Lookup { kind: String, key: Vec<Step> },
    /// `{{ a.b | trim | lower }}` with native filters; `fallback` when a value is unusual.
    Pipe {
        base: Vec<Step>,
        calls: Vec<Call>,
        fallback: TplId,
    },
    /// `"/contacts/{{ customer.id }}"`: text and plain lookups.
    Concat {
        pieces: Vec<native::Piece>,
        fallback: TplId,
    },
    /// `{{ expr }}`: a typed value.
    Expr(TplId),
    /// Text with templates: a string.
    Text(TplId),
}

/// What the compiler learnt about one template.
#[derive(Debug, Clone)]
pub struct TplInfo {
    pub tpl: StrTpl,
    /// Dotted names it reads (`params.first_name`, `phone`).
    pub vars: BTreeSet<String>,
    /// Filters it uses that do not exist.
    pub unknown_filters: Vec<String>,
    /// Tests (`is x`) it uses that do not exist.
    pub unknown_tests: Vec<String>,
}

/// A template that does not compile.
#[derive(Debug, Clone)]
pub struct TplError {
    pub message: String,
    /// Character offset of the problem inside the string, when known.
    pub offset: Option<usize>,
}

enum Source {
    Expr(String),
    Text(String),
}

/// Collects and checks templates, then freezes them into [`Templates`].
pub struct TemplateBuilder {
    env: Environment<'static>,
    defaults: Defaults,
    sources: Vec<Source>,
    probes: Mutex<HashMap<String, bool>>,
}

impl Default for TemplateBuilder {
    fn default() -> Self {
        Self::new(Defaults {
            phone_region: "US".into(),
            time_zone: "UTC".into(),
        })
    }
}

/// The environment every template runs in: strict undefined, no auto-escaping,
/// our filters, and `lookup()`.
pub fn environment(defaults: Value) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    filters::register(&mut env);
    env.add_function("lookup", lookup);
    env.add_global("defaults", defaults);
    env
}

/// `lookup("custom_field", "loyalty_points")`: the id of a named thing on the
/// target. Known ids (from the cache, or a test's `known:`) are returned;
/// otherwise a `${lookup:kind:key}` placeholder that the executor resolves.
fn lookup(state: &State, kind: String, key: String) -> Value {
    if let Some(known) = state.lookup("known")
        && let Ok(of_kind) = known.get_attr(&kind)
        && let Ok(id) = of_kind.get_item(&Value::from(key.as_str()))
        && !id.is_undefined()
    {
        return id;
    }
    Value::from(placeholder(&format!("lookup:{kind}:{key}")))
}

/// The text that stands for a value only known at delivery time.
pub fn placeholder(what: &str) -> String {
    format!("${{{what}}}")
}

impl TemplateBuilder {
    /// A builder whose templates see `defaults` (the project settings).
    pub fn new(defaults: Defaults) -> Self {
        let as_value = minijinja::context!(
            phone_region => defaults.phone_region.clone(),
            time_zone => defaults.time_zone.clone(),
        );
        Self {
            env: environment(as_value),
            defaults,
            sources: Vec::new(),
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// Classifies and compiles one mapping string.
    pub fn add(&mut self, text: &str) -> Result<TplInfo, TplError> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(TplInfo {
                tpl: StrTpl::Literal(text.to_string()),
                vars: BTreeSet::new(),
                unknown_filters: vec![],
                unknown_tests: vec![],
            });
        }
        if let Some(inner) = sole_expression(text) {
            let base = text.find(inner).map_or(0, |i| text[..i].chars().count());
            return self
                .add_expression(inner)
                .map_err(|mut e| {
                    e.offset = Some(base + e.offset.unwrap_or(0));
                    e
                })
                .map(|mut info| {
                    // Fast paths: the compiled expression stays as the fallback.
                    if let Some(path) = plain_path(inner) {
                        info.tpl = StrTpl::Var(path);
                    } else if let Some((kind, key)) = lookup_call(inner) {
                        info.tpl = StrTpl::Lookup { kind, key };
                    } else if let (Some((base, calls)), StrTpl::Expr(fallback)) =
                        (native::parse_pipeline(inner), &info.tpl)
                    {
                        info.tpl = StrTpl::Pipe {
                            base,
                            calls,
                            fallback: *fallback,
                        };
                    }
                    info
                });
        }
        let tmpl = self
            .env
            .template_from_str(text)
            .map_err(|e| to_error(&e, text, 0))?;
        let vars = tmpl.undeclared_variables(true).into_iter().collect();
        let (unknown_filters, unknown_tests) = self.unknown_names(text, true);
        let id = TplId(self.sources.len());
        self.sources.push(Source::Text(text.to_string()));
        let tpl = match native::parse_interpolation(text) {
            Some(pieces) => StrTpl::Concat {
                pieces,
                fallback: id,
            },
            None => StrTpl::Text(id),
        };
        Ok(TplInfo {
            tpl,
            vars,
            unknown_filters,
            unknown_tests,
        })
    }

    /// Compiles a condition or `{{ }}`-less expression.
    pub fn add_expression(&mut self, expr: &str) -> Result<TplInfo, TplError> {
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| to_error(&e, expr, 0))?;
        let vars = compiled.undeclared_variables(true).into_iter().collect();
        let (unknown_filters, unknown_tests) = self.unknown_names(expr, false);
        let id = TplId(self.sources.len());
        self.sources.push(Source::Expr(expr.to_string()));
        Ok(TplInfo {
            tpl: StrTpl::Expr(id),
            vars,
            unknown_filters,
            unknown_tests,
        })
    }

    /// True when `name` is a global or function of the environment (`lookup`, `range`, `defaults`).
    pub fn is_global(&self, name: &str) -> bool {
        self.probe(&format!("g:{name}"), || {
            self.env
                .render_str(&format!("{{{{ {name} is defined }}}}"), ())
                .map(|s| s.eq_ignore_ascii_case("true"))
                .unwrap_or(false)
        })
    }

    fn probe(&self, key: &str, run: impl FnOnce() -> bool) -> bool {
        if let Ok(cache) = self.probes.lock()
            && let Some(known) = cache.get(key)
        {
            return *known;
        }
        let answer = run();
        if let Ok(mut cache) = self.probes.lock() {
            cache.insert(key.to_string(), answer);
        }
        answer
    }

    fn filter_exists(&self, name: &str) -> bool {
        self.probe(&format!("f:{name}"), || {
            !matches!(
                self.env.render_str(&format!("{{{{ 1 | {name} }}}}"), ()),
                Err(e) if e.kind() == ErrorKind::UnknownFilter
            )
        })
    }

    fn test_exists(&self, name: &str) -> bool {
        self.probe(&format!("t:{name}"), || {
            !matches!(
                self.env.render_str(&format!("{{{{ 1 is {name} }}}}"), ()),
                Err(e) if e.kind() == ErrorKind::UnknownTest
            )
        })
    }

    /// minijinja only notices an unknown filter when it runs; we look for them at load.
    fn unknown_names(&self, text: &str, delimited: bool) -> (Vec<String>, Vec<String>) {
        let mut filters_missing = Vec::new();
        let mut tests_missing = Vec::new();
        for (kind, name) in scan_filters_and_tests(text, delimited) {
            match kind {
                '|' if !self.filter_exists(&name) => filters_missing.push(name),
                'i' if !self.test_exists(&name) => tests_missing.push(name),
                _ => {}
            }
        }
        (filters_missing, tests_missing)
    }

    /// Freezes the collected templates.
    pub fn finish(self) -> Result<Templates, TplError> {
        let sources = self.sources;
        let mut env = self.env;
        for (i, source) in sources.iter().enumerate() {
            if let Source::Text(s) = source {
                env.add_template_owned(format!("t{i}"), s.clone())
                    .map_err(|e| to_error(&e, s, 0))?;
            }
        }
        let cell = Cell::try_new(env, |env| {
            let mut out = Vec::with_capacity(sources.len());
            for source in sources {
                out.push(match source {
                    Source::Expr(s) => Piece::Expr(
                        env.compile_expression_owned(s.clone())
                            .map_err(|e| to_error(&e, &s, 0))?,
                    ),
                    Source::Text(s) => Piece::Text(
                        env.get_template(&format!("t{}", out.len()))
                            .map_err(|e| to_error(&e, &s, 0))?,
                    ),
                });
            }
            Ok::<_, TplError>(out)
        })?;
        Ok(Templates {
            cell,
            defaults: self.defaults,
        })
    }
}

enum Piece<'env> {
    Expr(Expression<'env, 'static>),
    Text(Template<'env, 'env>),
}

type Pieces<'env> = Vec<Piece<'env>>;

self_cell::self_cell!(
    struct Cell {
        owner: Environment<'static>,
        #[covariant]
        dependent: Pieces,
    }
);

/// The frozen templates of a mapping set.
pub struct Templates {
    cell: Cell,
    defaults: Defaults,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({})", self.cell.borrow_dependent().len())
    }
}

/// Why a template failed at run time.
#[derive(Debug, Clone)]
pub enum EvalError {
    /// It read a value that is not there: the field is omitted.
    Missing(String),
    /// Anything else: the record fails with this message.
    Failed(String),
}

impl Templates {
    /// Evaluates a compiled string against a context.
    pub fn eval(&self, tpl: &StrTpl, ctx: &Value) -> Result<Value, EvalError> {
        match tpl {
            StrTpl::Literal(s) => Ok(Value::from(s.as_str())),
            // The shapes evaluated natively have one implementation, over JSON scopes
            // (what plans use); an engine context is converted for them.
            StrTpl::Var(_)
            | StrTpl::Lookup { .. }
            | StrTpl::Pipe { .. }
            | StrTpl::Concat { .. } => {
                let json =
                    serde_json::to_value(ctx).map_err(|e| EvalError::Failed(e.to_string()))?;
                let mut scope = Scope::new();
                if let serde_json::Value::Object(map) = &json {
                    for (name, value) in map {
                        scope.set(name, value);
                    }
                }
                self.eval_scope(tpl, &scope).map(|v| Value::from(Serde(v)))
            }
            StrTpl::Expr(id) => {
                let pieces = self.cell.borrow_dependent();
                let Some(Piece::Expr(expr)) = pieces.get(id.0) else {
                    return Err(EvalError::Failed(
                        "internal: template id out of range".into(),
                    ));
                };
                let v = expr.eval(ctx.clone()).map_err(classify)?;
                if v.is_undefined() {
                    return Err(EvalError::Missing(expr_source(expr)));
                }
                Ok(v)
            }
            StrTpl::Text(id) => {
                let pieces = self.cell.borrow_dependent();
                let Some(Piece::Text(tmpl)) = pieces.get(id.0) else {
                    return Err(EvalError::Failed(
                        "internal: template id out of range".into(),
                    ));
                };
                tmpl.render(ctx.clone()).map(Value::from).map_err(classify)
            }
        }
    }

    /// Evaluates a compiled string in a JSON scope, giving JSON. Plain
    /// lookups, native pipelines and interpolations never touch the template
    /// engine; other templates see the scope converted once.
    pub fn eval_scope(&self, tpl: &StrTpl, scope: &Scope) -> Result<serde_json::Value, EvalError> {
        let resolve = |p: &[Step]| scope.walk(p).map(|v| Value::from(Serde(v)));
        let engine_value = match tpl {
            StrTpl::Literal(s) => return Ok(serde_json::Value::String(s.clone())),
            StrTpl::Var(path) => {
                return scope
                    .walk(path)
                    .filter(|v| !v.is_null())
                    .cloned()
                    .ok_or(EvalError::Missing(String::new()));
            }
            StrTpl::Lookup { kind, key } => {
                let owned;
                let key: &str = match scope.walk(key) {
                    Some(serde_json::Value::String(s)) => s,
                    Some(v) if !v.is_null() => {
                        owned = Value::from(Serde(v)).to_string();
                        &owned
                    }
                    _ => return Err(EvalError::Missing(String::new())),
                };
                let known = scope
                    .get("known")
                    .and_then(|k| k.get(kind))
                    .and_then(|of_kind| of_kind.get(key))
                    .filter(|id| !id.is_null());
                if let Some(id) = known {
                    return Ok(id.clone());
                }
                // `${lookup:kind:key}`, built without the formatting machinery (hot path).
                let mut text = String::with_capacity(kind.len() + key.len() + 11);
                text.push_str("${lookup:");
                text.push_str(kind);
                text.push(':');
                text.push_str(key);
                text.push('}');
                return Ok(serde_json::Value::String(text));
            }
            StrTpl::Pipe {
                base,
                calls,
                fallback,
            } => match native::pipeline_with(&resolve, base, calls, &self.defaults) {
                Outcome::Value(v) => v,
                Outcome::Missing => return Err(EvalError::Missing(String::new())),
                Outcome::Fallback => self.eval(&StrTpl::Expr(*fallback), scope.engine_view())?,
            },
            StrTpl::Concat { pieces, fallback } => match native::interpolate_with(&resolve, pieces)
            {
                Outcome::Value(v) => v,
                Outcome::Missing => return Err(EvalError::Missing(String::new())),
                Outcome::Fallback => self.eval(&StrTpl::Text(*fallback), scope.engine_view())?,
            },
            StrTpl::Expr(_) | StrTpl::Text(_) => self.eval(tpl, scope.engine_view())?,
        };
        scalar_to_json(&engine_value).map(Ok).unwrap_or_else(|| {
            serde_json::to_value(&engine_value).map_err(|e| EvalError::Failed(e.to_string()))
        })
    }

    /// [`Templates::truthy`] in a JSON scope.
    pub fn truthy_scope(&self, tpl: &StrTpl, scope: &Scope) -> Result<bool, EvalError> {
        match tpl {
            StrTpl::Expr(_) | StrTpl::Text(_) => self.truthy(tpl, scope.engine_view()),
            _ => match self.eval_scope(tpl, scope) {
                Ok(v) => Ok(Value::from(Serde(&v)).is_true()),
                Err(EvalError::Missing(_)) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Evaluates a condition: true, false, or why it could not be decided.
    pub fn truthy(&self, tpl: &StrTpl, ctx: &Value) -> Result<bool, EvalError> {
        match self.eval(tpl, ctx) {
            Ok(v) => Ok(v.is_true()),
            Err(EvalError::Missing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Strings and booleans converted without going through serde (numbers keep
/// serde's path, which tells integers from floats exactly).
fn scalar_to_json(v: &Value) -> Option<serde_json::Value> {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::String => v.as_str().map(|s| serde_json::Value::String(s.to_string())),
        ValueKind::Bool => Some(serde_json::Value::Bool(v.is_true())),
        _ => None,
    }
}

fn expr_source(expr: &Expression<'_, '_>) -> String {
    format!("{expr:?}")
}

fn classify(e: minijinja::Error) -> EvalError {
    if e.kind() == ErrorKind::UndefinedError {
        EvalError::Missing(e.detail().unwrap_or("undefined value").to_string())
    } else {
        let mut msg = e.kind().to_string();
        if let Some(d) = e.detail() {
            msg.push_str(": ");
            msg.push_str(d);
        }
        EvalError::Failed(msg)
    }
}

fn to_error(e: &minijinja::Error, text: &str, base: usize) -> TplError {
    let offset = e.range().map(|r| {
        base + text
            .get(..r.start.min(text.len()))
            .map_or(0, |s| s.chars().count())
    });
    let mut message = e.kind().to_string();
    if let Some(d) = e.detail() {
        message.push_str(": ");
        message.push_str(d);
    }
    TplError { message, offset }
}

/// `"{{ x | e164 }}"` → `Some("x | e164")` when the string is exactly one expression.
fn sole_expression(text: &str) -> Option<&str> {
    let t = text.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    Some(inner.trim())
}

/// `lookup('kind', a.b)` → ("kind", steps of a.b).
fn lookup_call(expr: &str) -> Option<(String, Vec<Step>)> {
    let args = expr.strip_prefix("lookup(")?.strip_suffix(')')?;
    let (kind, key) = args.split_once(',')?;
    let kind = kind.trim();
    let kind = kind
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| kind.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
    if !is_ident(kind) {
        return None;
    }
    Some((kind.to_string(), plain_path(key.trim())?))
}

/// Finds `| name` (filters) and `is [not] name` (tests) outside string literals.
/// `delimited` restricts the scan to `{{ }}` / `{% %}` blocks.
fn scan_filters_and_tests(text: &str, delimited: bool) -> Vec<(char, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut inside = !delimited;
    let mut quote: Option<char> = None;
    let ident = |start: usize| -> (String, usize) {
        let mut j = start;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let s = j;
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            j += 1;
        }
        (chars[s..j].iter().collect(), j)
    };
    while i < chars.len() {
        let c = chars[i];
        if delimited && !inside {
            if c == '{' && matches!(chars.get(i + 1), Some('{') | Some('%')) {
                inside = true;
                i += 2;
                continue;
            }
            i += 1;
            continue;
        }
        if let Some(q) = quote {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '}' | '%' if delimited && chars.get(i + 1) == Some(&'}') => {
                inside = false;
                i += 2;
                continue;
            }
            '|' => {
                let (name, next) = ident(i + 1);
                if !name.is_empty() {
                    out.push(('|', name));
                }
                i = next;
                continue;
            }
            'i' if chars.get(i + 1) == Some(&'s')
                && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_'))
                && chars.get(i + 2).is_some_and(|c| c.is_whitespace()) =>
            {
                let (mut name, mut next) = ident(i + 2);
                if name == "not" {
                    (name, next) = ident(next);
                }
                if !name.is_empty() {
                    out.push(('i', name));
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn classifies_strings() {
        let mut b = TemplateBuilder::default();
        assert!(matches!(
            b.add("Card Holder").unwrap().tpl,
            StrTpl::Literal(_)
        ));
        assert!(matches!(b.add("{{ phone }}").unwrap().tpl, StrTpl::Var(_)));
        assert!(matches!(
            b.add("{{ phone | e164 }}").unwrap().tpl,
            StrTpl::Pipe { .. }
        ));
        assert!(matches!(
            b.add("{{ balance + 1 }}").unwrap().tpl,
            StrTpl::Expr(_)
        ));
        assert!(matches!(
            b.add("Feedback: {{ comment }}").unwrap().tpl,
            StrTpl::Concat { .. }
        ));
        assert!(matches!(
            b.add("{% if a %}x{% endif %}").unwrap().tpl,
            StrTpl::Text(_)
        ));
    }

    #[test]
    fn keeps_types_and_reports_missing() {
        let mut b = TemplateBuilder::default();
        let n = b.add("{{ balance | number }}").unwrap();
        let t = b.add("Rated {{ rating }}/5").unwrap();
        let m = b.add("{{ nothing_here | lower }}").unwrap();
        let d = b.add("{{ nothing_here | default('x') }}").unwrap();
        let ts = b.finish().unwrap();
        let ctx = Value::from(minijinja::value::Serde(
            serde_json::json!({"balance": "12", "rating": 5}),
        ));
        assert_eq!(ts.eval(&n.tpl, &ctx).unwrap(), Value::from(12));
        assert_eq!(ts.eval(&t.tpl, &ctx).unwrap(), Value::from("Rated 5/5"));
        assert!(matches!(ts.eval(&m.tpl, &ctx), Err(EvalError::Missing(_))));
        assert_eq!(ts.eval(&d.tpl, &ctx).unwrap(), Value::from("x"));
    }

    #[test]
    fn finds_unknown_filters_and_names() {
        let mut b = TemplateBuilder::default();
        let info = b
            .add("{{ phone | e164 | nosuch }} and {{ 'a|b' | upper }}")
            .unwrap();
        assert_eq!(info.unknown_filters, vec!["nosuch".to_string()]);
        let info = b
            .add_expression("reward is defined and x is not fancy")
            .unwrap();
        assert_eq!(info.unknown_tests, vec!["fancy".to_string()]);
        assert!(info.vars.contains("reward"));
        assert!(b.is_global("lookup"));
        assert!(!b.is_global("phone"));
    }

    #[test]
    fn syntax_errors_have_offsets() {
        let mut b = TemplateBuilder::default();
        let e = b.add("{{ phone | }}").unwrap_err();
        assert!(e.message.contains("syntax"), "{e:?}");
    }

    /// Native pipelines and interpolations must give what minijinja gives.
    #[test]
    fn native_paths_agree_with_minijinja() {
        let templates = [
            "{{ v | trim }}",
            "{{ v | lower }}",
            "{{ v | upper }}",
            "{{ v | string }}",
            "{{ v | number }}",
            "{{ v | abs_int }}",
            "{{ v | digits }}",
            "{{ v | email }}",
            "{{ v | e164 }}",
            "{{ v | e164('GB') }}",
            "{{ v | date }}",
            "{{ v | datetime }}",
            "{{ v | unix }}",
            "{{ v | default('x') | lower }}",
            "{{ missing | default(v) | string }}",
            "{{ missing | default('D') }}",
            "{{ v | trim | lower }}",
            "id-{{ v }}/x",
            "{{ v }}{{ v }}",
            "{{ missing }}-x",
            "{{ o.k }}!",
        ];
        let values = [
            serde_json::json!(" Ana.Lima@Example.COM "),
            serde_json::json!("(415) 555-2671"),
            serde_json::json!(12),
            serde_json::json!(-15.5),
            serde_json::json!("12"),
            serde_json::json!("2019-07-12 07:59:21"),
            serde_json::json!(1765579011),
            serde_json::json!(true),
            serde_json::json!(null),
            serde_json::json!([1, 2]),
            serde_json::json!({"k": "v"}),
            serde_json::json!("020 7946 0958"),
            serde_json::json!(""),
        ];
        let mut b = TemplateBuilder::default();
        let compiled: Vec<(String, StrTpl)> = templates
            .iter()
            .map(|t| (t.to_string(), b.add(t).unwrap().tpl))
            .collect();
        let ts = b.finish().unwrap();
        let mut native_checked = 0;
        for (text, tpl) in &compiled {
            let reference = match tpl {
                StrTpl::Pipe { fallback, .. } => StrTpl::Expr(*fallback),
                StrTpl::Concat { fallback, .. } => StrTpl::Text(*fallback),
                _ => continue,
            };
            for v in &values {
                let ctx = Value::from(minijinja::value::Serde(serde_json::json!({"v": v, "o": v})));
                let fast = ts.eval(tpl, &ctx);
                let slow = ts.eval(&reference, &ctx);
                let data = serde_json::json!({"v": v, "o": v});
                let mut scope = Scope::new();
                scope.set("v", &data["v"]);
                scope.set("o", &data["o"]);
                let from_scope = ts.eval_scope(tpl, &scope);
                match (&from_scope, &slow) {
                    (Ok(a), Ok(b)) => assert_eq!(
                        Some(a),
                        serde_json::to_value(b).ok().as_ref(),
                        "scope: {text} with {v}"
                    ),
                    (Err(EvalError::Missing(_)), Err(EvalError::Missing(_))) => {}
                    (Err(EvalError::Failed(_)), Err(EvalError::Failed(_))) => {}
                    _ => panic!("{text} with {v}: scope {from_scope:?} vs minijinja {slow:?}"),
                }
                match (&fast, &slow) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{text} with {v}"),
                    (Err(EvalError::Missing(_)), Err(EvalError::Missing(_))) => {}
                    (Err(EvalError::Failed(_)), Err(EvalError::Failed(_))) => {}
                    _ => panic!("{text} with {v}: native {fast:?} vs minijinja {slow:?}"),
                }
                native_checked += 1;
            }
        }
        assert!(native_checked > 200, "{native_checked}");
    }

    #[test]
    fn fast_paths_match_the_engine() {
        assert_eq!(
            plain_path("item[1]"),
            Some(vec![Step::Attr("item".into()), Step::Index(1)])
        );
        assert_eq!(plain_path("a.b[0][2].c").map(|p| p.len()), Some(5));
        assert_eq!(plain_path("a.b + 1"), None);
        assert_eq!(plain_path("a[x]"), None);
        assert_eq!(
            lookup_call("lookup('custom_field', item[0])").map(|(k, _)| k),
            Some("custom_field".into())
        );
        assert_eq!(lookup_call("lookup(kind, item[0])"), None);
        let mut b = TemplateBuilder::default();
        let by_var = b.add("{{ lookup('field', item[0]) }}").unwrap();
        assert!(matches!(by_var.tpl, StrTpl::Lookup { .. }));
        let ts = b.finish().unwrap();
        let ctx = context!(item => vec!["points", "x"], known => context!(field => context!(points => "f1")));
        assert_eq!(ts.eval(&by_var.tpl, &ctx).unwrap(), Value::from("f1"));
        let ctx = context!(item => vec!["other"]);
        assert_eq!(
            ts.eval(&by_var.tpl, &ctx).unwrap(),
            Value::from("${lookup:field:other}")
        );
    }

    #[test]
    fn lookup_uses_known_ids_or_placeholders() {
        let mut b = TemplateBuilder::default();
        let l = b
            .add("{{ lookup('custom_field', 'loyalty_points') }}")
            .unwrap();
        let ts = b.finish().unwrap();
        let none = context!();
        assert_eq!(
            ts.eval(&l.tpl, &none).unwrap(),
            Value::from("${lookup:custom_field:loyalty_points}")
        );
        let known = context!(known => context!(custom_field => context!(loyalty_points => "cf_9")));
        assert_eq!(ts.eval(&l.tpl, &known).unwrap(), Value::from("cf_9"));
    }
}

#[cfg(test)]
mod set_templates {
    use super::*;
    use crate::template::scope::Scope;
    use serde_json::json;

    /// The set arithmetic target profiles' `reflects:` use for tags.
    #[test]
    fn tag_sets_add_and_remove() {
        let mut b = TemplateBuilder::default();
        let add = b
            .add("{{ ((mirror.tags | default([])) + params.tags) | unique | list }}")
            .unwrap();
        let remove = b
            .add("{{ (mirror.tags | default([])) | reject('in', params.tags) | list }}")
            .unwrap();
        let ts = b.finish().unwrap();
        let mirror = json!({"tags": ["vip"]});
        let params = json!({"tags": ["card holder", "vip"]});
        let mut scope = Scope::new();
        scope.set("mirror", &mirror);
        scope.set("params", &params);
        assert_eq!(
            ts.eval_scope(&add.tpl, &scope).unwrap(),
            json!(["vip", "card holder"])
        );
        assert_eq!(ts.eval_scope(&remove.tpl, &scope).unwrap(), json!([]));
        let empty = json!({});
        let mut fresh = Scope::new();
        fresh.set("mirror", &empty);
        fresh.set("params", &params);
        assert_eq!(
            ts.eval_scope(&add.tpl, &fresh).unwrap(),
            json!(["card holder", "vip"])
        );
    }
}
