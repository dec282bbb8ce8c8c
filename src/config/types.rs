//! What a mapping template yields, told at load time from its text: the
//! kinds of value (text, date, number, boolean, list…) `mapper check` holds
//! to a parameter's declared type and to a custom field's `data_type`.
//!
//! The inference reads the expression the way minijinja parses it (filters
//! bind tighter than arithmetic, `if … else`, comparisons, tests), takes the
//! yield of each filter from the engine's registry, and the kinds of the
//! values a template reads from the payload schema. Whatever it cannot tell
//! (an unknown filter, an attribute of an object, a method call) is
//! *unknown*, and an unknown is never judged: a false error would teach
//! people to ignore the check.

use crate::template::filters::{FILTER_YIELDS, FilterYield};

/// A set of value kinds (a union type).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Kinds(u16);

impl Kinds {
    /// Text of no particular shape.
    pub const TEXT: Kinds = Kinds(1);
    /// A calendar date as text (`2025-03-15`).
    pub const DATE: Kinds = Kinds(2);
    /// A point in time as text (`2025-03-15T10:00:00Z`).
    pub const DATETIME: Kinds = Kinds(4);
    /// A number (integer or not).
    pub const NUMBER: Kinds = Kinds(8);
    /// `true` or `false`.
    pub const BOOLEAN: Kinds = Kinds(16);
    /// A list.
    pub const LIST: Kinds = Kinds(32);
    /// An object (a map).
    pub const OBJECT: Kinds = Kinds(64);
    /// `null` or missing: left out of a request, never a type error.
    pub const NULL: Kinds = Kinds(128);
    /// Every kind of string.
    pub const STRINGS: Kinds = Kinds(1 | 2 | 4);

    /// Both sets together.
    pub fn union(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }

    /// This set without the kinds of `other`.
    pub fn without(self, other: Kinds) -> Kinds {
        Kinds(self.0 & !other.0)
    }

    /// True when every kind of this set is in `other`.
    pub fn within(self, other: Kinds) -> bool {
        self.0 & !other.0 == 0
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kind of a JSON Schema `type` (with `date`/`date-time` for strings
    /// of those formats); `None` for a name it does not know.
    pub fn of_schema_type(t: &str) -> Option<Kinds> {
        Some(match t {
            "string" => Kinds::TEXT,
            "date" => Kinds::DATE,
            "date-time" => Kinds::DATETIME,
            "integer" | "number" => Kinds::NUMBER,
            "boolean" => Kinds::BOOLEAN,
            "array" => Kinds::LIST,
            "object" => Kinds::OBJECT,
            "null" => Kinds::NULL,
            _ => return None,
        })
    }

    /// The kind of a JSON value.
    pub fn of_json(v: &serde_json::Value) -> Kinds {
        use serde_json::Value;
        match v {
            Value::Null => Kinds::NULL,
            Value::Bool(_) => Kinds::BOOLEAN,
            Value::Number(_) => Kinds::NUMBER,
            Value::String(s) if looks_like_date(s) => Kinds::DATE,
            Value::String(_) => Kinds::TEXT,
            Value::Array(_) => Kinds::LIST,
            Value::Object(_) => Kinds::OBJECT,
        }
    }

    /// `text or a number`, for messages.
    pub fn describe(self) -> String {
        const NAMES: &[(Kinds, &str)] = &[
            (Kinds::TEXT, "text"),
            (Kinds::DATE, "a date"),
            (Kinds::DATETIME, "a date-time"),
            (Kinds::NUMBER, "a number"),
            (Kinds::BOOLEAN, "a boolean"),
            (Kinds::LIST, "a list"),
            (Kinds::OBJECT, "an object"),
            (Kinds::NULL, "null"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(k, _)| k.within(self) && !k.is_empty())
            .map(|(_, n)| *n)
            .collect();
        names.join(" or ")
    }
}

/// `YYYY-MM-DD`: a literal a DATE field takes as it is.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// What a template yields and what told the checker so (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Yield {
    /// The kinds of value it can yield.
    pub kinds: Kinds,
    /// Where the kinds come from: `filter \`date\``, `a comparison`…
    pub from: String,
}

impl Yield {
    fn new(kinds: Kinds, from: impl Into<String>) -> Self {
        Yield {
            kinds,
            from: from.into(),
        }
    }
}

/// Either operand: both known gives the union, one unknown gives unknown.
fn either(a: Option<Yield>, b: Option<Yield>) -> Option<Yield> {
    let (a, b) = (a?, b?);
    let from = if a.from == b.from {
        a.from
    } else {
        format!("{} and {}", a.from, b.from)
    };
    Some(Yield::new(a.kinds.union(b.kinds), from))
}

/// The yield of a minijinja built-in filter the mappings use.
fn builtin_yield(name: &str) -> Option<Builtin> {
    Some(match name {
        "lower" | "upper" | "trim" | "title" | "capitalize" => Builtin::SameText,
        "string" | "replace" | "join" | "truncate" | "tojson" | "urlencode" | "indent"
        | "format" | "escape" | "e" | "safe" | "center" | "striptags" | "wordwrap" => {
            Builtin::Fixed(Kinds::TEXT)
        }
        "int" | "float" | "round" | "abs" | "length" | "count" | "sum" | "wordcount" => {
            Builtin::Fixed(Kinds::NUMBER)
        }
        "bool" => Builtin::Fixed(Kinds::BOOLEAN),
        "list" | "sort" | "unique" | "map" | "select" | "reject" | "selectattr" | "rejectattr"
        | "items" | "dictsort" | "batch" | "slice" | "split" | "lines" | "chain" | "zip" => {
            Builtin::Fixed(Kinds::LIST)
        }
        "default" | "d" => Builtin::Default,
        "first" | "last" | "min" | "max" | "random" | "reverse" => Builtin::Element,
        _ => return None,
    })
}

/// How a built-in filter's yield relates to its input.
enum Builtin {
    Fixed(Kinds),
    /// Text filters that keep a date a date (`trim`, `lower`).
    SameText,
    /// `default(x)`: the input when present, else `x`.
    Default,
    /// An item of a list, or a character (or the reverse) of a string.
    Element,
}

fn apply_filter(name: &str, input: Option<Yield>, args: &[Option<Yield>]) -> Option<Yield> {
    let from = format!("filter `{name}`");
    if let Some((_, y)) = FILTER_YIELDS.iter().find(|(n, _)| *n == name) {
        let kinds = match y {
            FilterYield::Text => Kinds::TEXT,
            FilterYield::Date => Kinds::DATE,
            FilterYield::DateTime => Kinds::DATETIME,
            FilterYield::Number => Kinds::NUMBER,
            FilterYield::List => Kinds::LIST,
            FilterYield::Any => return None,
        };
        return Some(Yield::new(kinds, from));
    }
    match builtin_yield(name)? {
        Builtin::Fixed(k) => Some(Yield::new(k, from)),
        Builtin::SameText => match input {
            Some(y)
                if !y.kinds.without(Kinds::NULL).is_empty()
                    && y.kinds.within(Kinds::STRINGS.union(Kinds::NULL)) =>
            {
                Some(Yield::new(y.kinds, from))
            }
            _ => Some(Yield::new(Kinds::TEXT, from)),
        },
        Builtin::Default => {
            // `default()` with no argument gives the empty string.
            let fallback = match args.first() {
                Some(a) => a.clone(),
                None => Some(Yield::new(Kinds::TEXT, "`default()`")),
            };
            let present = input.map(|y| Yield::new(y.kinds.without(Kinds::NULL), y.from));
            let out = either(present, fallback)?;
            Some(Yield::new(
                out.kinds,
                format!("{} through `default`", out.from),
            ))
        }
        Builtin::Element => {
            let y = input?;
            let k = y.kinds.without(Kinds::NULL);
            (!k.is_empty() && k.within(Kinds::STRINGS)).then(|| Yield::new(Kinds::TEXT, from))
        }
    }
}

/// What a mapping string yields: `None` for a literal (no template), and
/// for a template whose type cannot be told. `resolve` gives the yield of a
/// name or dotted path the template reads (`balance`, `vars.x`, `event.id`).
pub fn infer(text: &str, resolve: &dyn Fn(&str) -> Option<Yield>) -> Option<Yield> {
    if !text.contains("{{") && !text.contains("{%") {
        return None;
    }
    let Some(inner) = sole_expression(text) else {
        // Text around a template, several templates, or a block: rendered text.
        return Some(Yield::new(Kinds::TEXT, "text with a template in it"));
    };
    let toks = tokenize(inner)?;
    if toks.len() > MAX_TOKENS {
        return None;
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        resolve,
    };
    let y = p.expr().ok()?;
    if p.pos != p.toks.len() {
        return None;
    }
    y
}

/// The expression of a string that is exactly one `{{ … }}`.
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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Num,
    Str(String),
    Op(&'static str),
}

const OPS2: &[&str] = &["==", "!=", "<=", ">=", "//", "**"];
const OPS1: &[&str] = &[
    "|", "(", ")", "[", "]", "{", "}", ",", ".", ":", "<", ">", "+", "-", "*", "/", "%", "~", "=",
];

/// The tokens of an expression; `None` for a character it does not know.
fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Name(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '_' || chars[i] == '.')
            {
                // `1.foo` is not a number followed by an attribute in practice.
                i += 1;
            }
            out.push(Tok::Num);
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                let d = *chars.get(i)?;
                i += 1;
                match d {
                    '\\' => {
                        text.push(*chars.get(i)?);
                        i += 1;
                    }
                    d if d == c => break,
                    d => text.push(d),
                }
            }
            out.push(Tok::Str(text));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if let Some(op) = OPS2.iter().find(|o| **o == two) {
                out.push(Tok::Op(op));
                i += 2;
            } else if let Some(op) = OPS1.iter().find(|o| o.starts_with(c)) {
                out.push(Tok::Op(op));
                i += 1;
            } else {
                return None;
            }
        }
    }
    Some(out)
}

/// `Err` means the expression is not understood: the whole template is then unknown.
type R = Result<Option<Yield>, ()>;

/// How long an expression may be before the checker gives up on it (a bound
/// on the recursion of prefix operators such as `not not …`).
const MAX_TOKENS: usize = 2000;

/// How deep expressions may nest before the checker gives up on them.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    resolve: &'a dyn Fn(&str) -> Option<Yield>,
}

const KEYWORDS: &[&str] = &["if", "else", "and", "or", "not", "is", "in"];

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Name(n)) if n == kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), ()> {
        if self.eat_op(op) { Ok(()) } else { Err(()) }
    }

    fn name(&mut self) -> Result<String, ()> {
        match self.peek() {
            Some(Tok::Name(n)) => {
                let n = n.clone();
                self.pos += 1;
                Ok(n)
            }
            _ => Err(()),
        }
    }

    /// `a if cond else b` (no `else`: missing when the condition fails).
    fn expr(&mut self) -> R {
        // Nesting beyond what anyone writes: not judged, and never a stack overflow.
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(());
        }
        let out = self.conditional();
        self.depth -= 1;
        out
    }

    fn conditional(&mut self) -> R {
        let then = self.or()?;
        if self.eat_kw("if") {
            self.or()?;
            let other = if self.eat_kw("else") {
                self.expr()?
            } else {
                Some(Yield::new(Kinds::NULL, "`if` without `else`"))
            };
            return Ok(either(then, other).map(|y| {
                Yield::new(y.kinds, format!("the branches of `if … else` ({})", y.from))
            }));
        }
        Ok(then)
    }

    /// `a or b` and `a and b` give one of their operands, as in Python.
    fn or(&mut self) -> R {
        let mut left = self.and()?;
        while self.eat_kw("or") {
            let right = self.and()?;
            left = either(left, right);
        }
        Ok(left)
    }

    fn and(&mut self) -> R {
        let mut left = self.not()?;
        while self.eat_kw("and") {
            let right = self.not()?;
            left = either(left, right);
        }
        Ok(left)
    }

    fn not(&mut self) -> R {
        if self.eat_kw("not") {
            self.not()?;
            return Ok(Some(Yield::new(Kinds::BOOLEAN, "`not`")));
        }
        self.compare()
    }

    fn compare(&mut self) -> R {
        let mut left = self.concat()?;
        loop {
            let is_cmp = matches!(
                self.peek(),
                Some(Tok::Op("==" | "!=" | "<" | ">" | "<=" | ">="))
            ) || matches!(self.peek(), Some(Tok::Name(n)) if n == "in")
                || (matches!(self.peek(), Some(Tok::Name(n)) if n == "not")
                    && matches!(self.peek_at(1), Some(Tok::Name(n)) if n == "in"));
            if !is_cmp {
                return Ok(left);
            }
            // `not in`: the `not`, then the operator itself.
            self.eat_kw("not");
            self.pos += 1;
            self.concat()?;
            left = Some(Yield::new(Kinds::BOOLEAN, "a comparison"));
        }
    }

    fn concat(&mut self) -> R {
        let mut left = self.sum()?;
        while self.eat_op("~") {
            self.sum()?;
            left = Some(Yield::new(Kinds::TEXT, "`~`"));
        }
        Ok(left)
    }

    fn sum(&mut self) -> R {
        let mut left = self.product()?;
        loop {
            let plus = if self.eat_op("+") {
                true
            } else if self.eat_op("-") {
                false
            } else {
                return Ok(left);
            };
            let right = self.product()?;
            left = arithmetic(left, right, plus);
        }
    }

    fn product(&mut self) -> R {
        let mut left = self.power()?;
        while ["*", "/", "//", "%"].iter().any(|op| self.eat_op(op)) {
            let right = self.power()?;
            left = arithmetic(left, right, false);
        }
        Ok(left)
    }

    fn power(&mut self) -> R {
        let mut left = self.unary()?;
        while self.eat_op("**") {
            let right = self.unary()?;
            left = arithmetic(left, right, false);
        }
        Ok(left)
    }

    fn unary(&mut self) -> R {
        if self.eat_op("-") || self.eat_op("+") {
            let v = self.unary()?;
            return Ok(v.filter(|y| y.kinds.without(Kinds::NULL).within(Kinds::NUMBER)));
        }
        self.postfix()
    }

    /// A primary followed by attributes, subscripts, calls, filters and tests.
    fn postfix(&mut self) -> R {
        let (mut value, mut path) = self.primary()?;
        loop {
            if self.eat_op(".") {
                let attr = match self.peek() {
                    Some(Tok::Name(n)) => n.clone(),
                    Some(Tok::Num) => String::from("0"),
                    _ => return Err(()),
                };
                self.pos += 1;
                path = path.map(|p| format!("{p}.{attr}"));
                value = path.as_deref().and_then(|p| (self.resolve)(p));
            } else if self.eat_op("[") {
                let mut parts = 0;
                while !self.eat_op("]") {
                    if !self.eat_op(":") {
                        self.expr()?;
                    }
                    parts += 1;
                    if parts > 8 {
                        return Err(());
                    }
                }
                path = None;
                // A character or a slice of text is text; an item of a list is unknown.
                value = value.filter(|y| {
                    let k = y.kinds.without(Kinds::NULL);
                    !k.is_empty() && k.within(Kinds::STRINGS)
                });
                value = value.map(|_| Yield::new(Kinds::TEXT, "a subscript of text"));
            } else if matches!(self.peek(), Some(Tok::Op("("))) {
                self.args()?;
                value = match path.as_deref() {
                    Some("lookup") => Some(Yield::new(Kinds::TEXT, "`lookup(…)`, an id")),
                    Some("range") => Some(Yield::new(Kinds::LIST, "`range(…)`")),
                    _ => None,
                };
                path = None;
            } else if self.eat_op("|") {
                let name = self.name()?;
                let args = if matches!(self.peek(), Some(Tok::Op("("))) {
                    self.args()?
                } else {
                    Vec::new()
                };
                value = apply_filter(&name, value, &args);
                path = None;
            } else if self.eat_kw("is") {
                self.eat_kw("not");
                self.name()?;
                if matches!(self.peek(), Some(Tok::Op("("))) {
                    self.args()?;
                } else if matches!(self.peek(), Some(Tok::Num | Tok::Str(_))) {
                    self.pos += 1;
                }
                value = Some(Yield::new(Kinds::BOOLEAN, "a test"));
                path = None;
            } else {
                return Ok(value);
            }
        }
    }

    /// `( a, b, key=c )`: the yield of each argument.
    fn args(&mut self) -> Result<Vec<Option<Yield>>, ()> {
        self.expect_op("(")?;
        let mut out = Vec::new();
        while !self.eat_op(")") {
            if matches!(self.peek(), Some(Tok::Name(_)))
                && matches!(self.peek_at(1), Some(Tok::Op("=")))
            {
                self.pos += 2;
            }
            out.push(self.expr()?);
            if !self.eat_op(",") {
                self.expect_op(")")?;
                break;
            }
        }
        Ok(out)
    }

    /// A literal, a name, a parenthesised expression, a list or a map; with
    /// the dotted path when it is a name (resolved as attributes follow).
    fn primary(&mut self) -> Result<(Option<Yield>, Option<String>), ()> {
        let tok = self.peek().cloned().ok_or(())?;
        self.pos += 1;
        match tok {
            Tok::Num => Ok((Some(Yield::new(Kinds::NUMBER, "a number literal")), None)),
            Tok::Str(s) => {
                let kinds = Kinds::of_json(&serde_json::Value::String(s));
                Ok((Some(Yield::new(kinds, "a string literal")), None))
            }
            Tok::Name(n) => match n.as_str() {
                "true" | "false" | "True" | "False" => {
                    Ok((Some(Yield::new(Kinds::BOOLEAN, n.clone())), None))
                }
                "none" | "None" => Ok((Some(Yield::new(Kinds::NULL, "`none`")), None)),
                k if KEYWORDS.contains(&k) => Err(()),
                _ => Ok(((self.resolve)(&n), Some(n))),
            },
            Tok::Op("(") => {
                let v = self.expr()?;
                if self.eat_op(",") {
                    while !self.eat_op(")") {
                        self.expr()?;
                        if !self.eat_op(",") {
                            self.expect_op(")")?;
                            break;
                        }
                    }
                    return Ok((Some(Yield::new(Kinds::LIST, "a tuple")), None));
                }
                self.expect_op(")")?;
                Ok((v, None))
            }
            Tok::Op("[") => {
                while !self.eat_op("]") {
                    self.expr()?;
                    if !self.eat_op(",") {
                        self.expect_op("]")?;
                        break;
                    }
                }
                Ok((Some(Yield::new(Kinds::LIST, "a list literal")), None))
            }
            Tok::Op("{") => {
                while !self.eat_op("}") {
                    self.expr()?;
                    self.expect_op(":")?;
                    self.expr()?;
                    if !self.eat_op(",") {
                        self.expect_op("}")?;
                        break;
                    }
                }
                Ok((Some(Yield::new(Kinds::OBJECT, "a map literal")), None))
            }
            Tok::Op(_) => Err(()),
        }
    }
}

/// `+` of numbers is a number, of text text, of lists a list; the other
/// operators give numbers from numbers. Anything else: unknown.
fn arithmetic(left: Option<Yield>, right: Option<Yield>, plus: bool) -> Option<Yield> {
    let (l, r) = (left?, right?);
    let (lk, rk) = (l.kinds.without(Kinds::NULL), r.kinds.without(Kinds::NULL));
    if lk.is_empty() || rk.is_empty() {
        return None;
    }
    let both = |k: Kinds| lk.within(k) && rk.within(k);
    if both(Kinds::NUMBER) {
        Some(Yield::new(Kinds::NUMBER, "arithmetic"))
    } else if plus && both(Kinds::STRINGS) {
        Some(Yield::new(Kinds::TEXT, "`+` of text"))
    } else if plus && both(Kinds::LIST) {
        Some(Yield::new(Kinds::LIST, "`+` of lists"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(name: &str) -> Option<Yield> {
        let k = match name {
            "name" => Kinds::TEXT,
            "points" => Kinds::NUMBER,
            "when" => Kinds::DATETIME,
            "tags" => Kinds::LIST,
            "maybe" => Kinds::TEXT.union(Kinds::NULL),
            "vars.flag" => Kinds::BOOLEAN,
            _ => return None,
        };
        Some(Yield::new(k, format!("`{name}`")))
    }

    fn kinds(text: &str) -> Option<Kinds> {
        infer(text, &resolve).map(|y| y.kinds)
    }

    #[test]
    fn literals_and_text() {
        assert_eq!(kinds("plain"), None);
        assert_eq!(kinds("Hello {{ name }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{% if x %}a{% endif %}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ 12 }}"), Some(Kinds::NUMBER));
        assert_eq!(kinds("{{ 'a' }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ '2025-01-02' }}"), Some(Kinds::DATE));
        assert_eq!(kinds("{{ true }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ [1, 2] }}"), Some(Kinds::LIST));
        assert_eq!(kinds("{{ {'a': 1} }}"), Some(Kinds::OBJECT));
    }

    #[test]
    fn names_filters_and_operators() {
        assert_eq!(kinds("{{ name }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ vars.flag }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ unknown_name }}"), None);
        assert_eq!(kinds("{{ name | number }}"), Some(Kinds::NUMBER));
        assert_eq!(kinds("{{ name | date }}"), Some(Kinds::DATE));
        assert_eq!(
            kinds("{{ when | datetime(tz='UTC') }}"),
            Some(Kinds::DATETIME)
        );
        assert_eq!(kinds("{{ when | trim }}"), Some(Kinds::DATETIME));
        assert_eq!(kinds("{{ name | split_list }}"), Some(Kinds::LIST));
        assert_eq!(kinds("{{ tags | join(', ') }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ tags | first }}"), None);
        assert_eq!(kinds("{{ name | first }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ tags | pick('id', 1, 'value') }}"), None);
        assert_eq!(
            kinds("{{ tags | pick('id', 1, 'value') | number }}"),
            Some(Kinds::NUMBER)
        );
        assert_eq!(kinds("{{ name | no_such_filter }}"), None);
        assert_eq!(kinds("{{ name == 'x' }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ name is defined }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ 'a' not in tags }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ not name }}"), Some(Kinds::BOOLEAN));
        assert_eq!(kinds("{{ points + 1 }}"), Some(Kinds::NUMBER));
        assert_eq!(kinds("{{ -points | abs }}"), Some(Kinds::NUMBER));
        assert_eq!(kinds("{{ name ~ points }}"), Some(Kinds::TEXT));
        assert_eq!(
            kinds("{{ lookup('custom_field', 'x') }}"),
            Some(Kinds::TEXT)
        );
        assert_eq!(kinds("{{ name.attr }}"), None);
        assert_eq!(kinds("{{ name[0] }}"), Some(Kinds::TEXT));
        assert_eq!(kinds("{{ tags[0] }}"), None);
        assert_eq!(kinds("{{ name | }}"), None, "not understood: unknown");
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(kinds(&deep), None, "too deep: unknown, no overflow");
        let long = format!("{{{{ {}1 }}}}", "not ".repeat(100_000));
        assert_eq!(kinds(&long), None, "too long: unknown, no overflow");
        let fine = format!("{{{{ {}1{} }}}}", "(".repeat(20), ")".repeat(20));
        assert_eq!(kinds(&fine), Some(Kinds::NUMBER));
    }

    #[test]
    fn default_and_conditionals() {
        assert_eq!(kinds("{{ maybe | default('x') }}"), Some(Kinds::TEXT));
        assert_eq!(
            kinds("{{ points | default('0') }}"),
            Some(Kinds::NUMBER.union(Kinds::TEXT))
        );
        assert_eq!(kinds("{{ points | default(0) }}"), Some(Kinds::NUMBER));
        assert_eq!(kinds("{{ unknown_name | default(0) }}"), None);
        assert_eq!(
            kinds("{{ name if points > 1 else points }}"),
            Some(Kinds::TEXT.union(Kinds::NUMBER))
        );
        assert_eq!(
            kinds("{{ points if name }}"),
            Some(Kinds::NUMBER.union(Kinds::NULL))
        );
        assert_eq!(
            kinds("{{ (name | number) if name is defined else 0 }}"),
            Some(Kinds::NUMBER)
        );
        assert_eq!(kinds("{{ name or 'x' }}"), Some(Kinds::TEXT));
    }

    #[test]
    fn every_project_filter_has_a_yield() {
        for f in crate::template::filters::FILTERS {
            assert!(
                FILTER_YIELDS.iter().any(|(n, _)| n == f),
                "filter `{f}` has no entry in FILTER_YIELDS"
            );
        }
    }
}
