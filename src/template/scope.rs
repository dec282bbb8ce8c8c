//! The names a template sees, kept as JSON.
//!
//! Plain lookups, native pipelines and interpolations read the JSON directly;
//! a scope is turned into a minijinja value only when a template needs the
//! template engine, and then once.

use super::native::Step;
use minijinja::value::{Serde, Value as MjValue};
use serde_json::Value;
use std::cell::OnceCell;
use std::collections::BTreeMap;

/// Named JSON values, with an optional enclosing scope.
pub struct Scope<'a> {
    entries: Vec<(&'a str, &'a Value)>,
    parent: Option<&'a Scope<'a>>,
    engine_view: OnceCell<MjValue>,
}

impl<'a> Scope<'a> {
    /// An empty scope.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            parent: None,
            engine_view: OnceCell::new(),
        }
    }

    /// A scope whose names fall back to `parent`'s.
    pub fn child(parent: &'a Scope<'a>) -> Self {
        Self {
            parent: Some(parent),
            ..Self::new()
        }
    }

    /// Adds (or shadows) a name.
    pub fn set(&mut self, name: &'a str, value: &'a Value) {
        self.entries.push((name, value));
        self.engine_view = OnceCell::new();
    }

    /// The value of a name.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.entries
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .or_else(|| self.parent.and_then(|p| p.get(name)))
    }

    /// Follows a path of names and indexes; `None` when a step finds nothing.
    pub fn walk(&self, path: &[Step]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let Step::Attr(name) = first else {
            return None;
        };
        let mut cur = self.get(name)?;
        for step in rest {
            cur = match (step, cur) {
                (Step::Attr(a), Value::Object(map)) => map.get(a)?,
                (Step::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// The scope as a minijinja value, built on first use.
    pub fn engine_view(&self) -> &MjValue {
        self.engine_view.get_or_init(|| {
            let mut map = BTreeMap::new();
            self.collect(&mut map);
            MjValue::from(map)
        })
    }

    fn collect(&self, into: &mut BTreeMap<String, MjValue>) {
        if let Some(parent) = self.parent {
            parent.collect(into);
        }
        for (name, value) in &self.entries {
            into.insert((*name).to_string(), MjValue::from(Serde(*value)));
        }
    }
}

impl Default for Scope<'_> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_shadow_and_fall_back() {
        let outer_v = json!({"a": [1, {"b": 2}]});
        let inner_v = json!("item");
        let mut outer = Scope::new();
        outer.set("x", &outer_v);
        let mut inner = Scope::child(&outer);
        inner.set("item", &inner_v);
        let path = vec![
            Step::Attr("x".into()),
            Step::Attr("a".into()),
            Step::Index(1),
            Step::Attr("b".into()),
        ];
        assert_eq!(inner.walk(&path), Some(&json!(2)));
        assert_eq!(inner.get("item"), Some(&json!("item")));
        assert_eq!(outer.get("item"), None);
        let view = inner.engine_view();
        assert_eq!(view.get_attr("item").unwrap(), MjValue::from("item"));
    }
}
