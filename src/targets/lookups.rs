//! Ids by name on a target: a cached listing per lookup (GHL custom fields,
//! pipelines, stages), created from `provision:` when missing, and the
//! `${lookup:…}` placeholders of a request resolved with them.

use super::Outcome;
use super::http::{Answer, Failure, Http, scalar};
use crate::engine::plan::RequestPlan;
use crate::program::{Lookup, Program, Target};
use crate::template::scope::Scope;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A cached listing is listed again after this long.
const LISTING_TTL: Duration = Duration::from_secs(600);
/// A key missing from a listing this young is created without listing again
/// (a create refused as a duplicate still lists again).
const LISTING_FRESH: Duration = Duration::from_secs(60);

type Key = (String, String);

/// The id caches of one executor.
#[derive(Default)]
pub struct Lookups {
    /// (target, lookup) → key → id, listed once.
    ids: Mutex<HashMap<Key, HashMap<String, String>>>,
    /// When each lookup was last listed: listings are refreshed after
    /// `LISTING_TTL` (people add custom fields in GHL while mapper runs),
    /// and a listing younger than `LISTING_FRESH` is trusted on a miss.
    listed_at: Mutex<HashMap<Key, Instant>>,
    /// Serialises listing and creating per lookup: parallel events needing
    /// the same new custom field must not create it twice.
    gates: Mutex<HashMap<Key, Arc<Mutex<()>>>>,
    /// `known` as plans read it, rebuilt when a listing changes (not for
    /// every event).
    known: std::sync::RwLock<Arc<Value>>,
}

/// What the lookup stage needs of the executor.
pub struct Ctx<'a> {
    pub program: &'a Program,
    pub http: &'a Http,
    /// The target's `env`, as templates see it.
    pub env: &'a Value,
    /// Where replicas on one database lock what they provision.
    pub store: &'a crate::store::Store,
    /// The connection whose ids these are.
    pub connection: &'a str,
}

impl Lookups {
    /// Lists every lookup of `target` not listed lately, so templates that
    /// read ids (a GHL webhook's custom fields are keyed by id) see them on
    /// the first event too. A failure here is retried when an action needs
    /// the lookup.
    pub async fn preload(&self, ctx: &Ctx<'_>, target: &Target) {
        for (kind, lookup) in &target.lookups {
            let key = (target.name.clone(), kind.clone());
            if self.listed_within(&key, LISTING_TTL).await {
                continue;
            }
            let gate = self.gate(&key).await;
            let _held = gate.lock().await;
            // Events delivered in parallel wait for the one listing.
            if self.listed_within(&key, LISTING_TTL).await {
                continue;
            }
            if let Ok(ids) = list(ctx, target, lookup).await {
                self.listed_at
                    .lock()
                    .await
                    .insert(key.clone(), Instant::now());
                self.store_ids(key, ids).await;
            }
        }
    }

    /// Ids already listed, as the plan's `known` (lookup kind → key → id).
    pub fn known(&self) -> Arc<Value> {
        match self.known.read() {
            Ok(known) => known.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Keeps a listing and rebuilds `known`.
    async fn store_ids(&self, key: Key, listed: HashMap<String, String>) {
        let mut ids = self.ids.lock().await;
        ids.insert(key, listed);
        let mut out = serde_json::Map::new();
        for ((_, kind), listed) in ids.iter() {
            let entry = out
                .entry(kind.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(map) = entry {
                for (k, v) in listed {
                    map.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        let rebuilt = Arc::new(Value::Object(out));
        match self.known.write() {
            Ok(mut known) => *known = rebuilt,
            Err(poisoned) => *poisoned.into_inner() = rebuilt,
        }
    }

    /// Replaces every `${lookup:KIND:KEY}` in a request with the id, keeping
    /// the JSON tree's shape: a string that is the placeholder alone becomes
    /// the id, one that embeds it has it spliced in.
    pub async fn resolve(
        &self,
        ctx: &Ctx<'_>,
        target: &Target,
        request: &mut RequestPlan,
    ) -> Result<(), Outcome> {
        let mut wanted = Vec::new();
        collect(&Value::String(request.path.clone()), &mut wanted);
        for part in [&request.query, &request.body].into_iter().flatten() {
            collect(part, &mut wanted);
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let mut found = HashMap::new();
        for (kind, key) in wanted {
            let id = self.id(ctx, target, &kind, &key).await?;
            found.insert(format!("${{lookup:{kind}:{key}}}"), id);
        }
        let splice = |text: &str| {
            let mut out = text.to_string();
            for (placeholder, id) in &found {
                out = out.replace(placeholder, id);
            }
            out
        };
        request.path = splice(&request.path);
        request.url = splice(&request.url);
        for part in [&mut request.query, &mut request.body]
            .into_iter()
            .flatten()
        {
            map_strings(part, &splice);
        }
        Ok(())
    }

    /// The id of `key` in a target's lookup: cached listing, else created from `provision:`.
    pub async fn id(
        &self,
        ctx: &Ctx<'_>,
        target: &Target,
        kind: &str,
        key: &str,
    ) -> Result<String, Outcome> {
        let cache_key = (target.name.clone(), kind.to_string());
        let cached = |ids: &HashMap<Key, HashMap<String, String>>| {
            ids.get(&cache_key).and_then(|m| m.get(key)).cloned()
        };
        if let Some(id) = cached(&*self.ids.lock().await) {
            return Ok(id);
        }
        let gate = self.gate(&cache_key).await;
        let _held = gate.lock().await;
        if let Some(id) = cached(&*self.ids.lock().await) {
            return Ok(id);
        }
        let Some(lookup) = target.lookups.get(kind) else {
            return Err(Outcome::Permanent(format!(
                "target `{}` has no lookup `{kind}`",
                target.name
            )));
        };
        let fresh = if self.listed_within(&cache_key, LISTING_FRESH).await {
            self.ids.lock().await.get(&cache_key).cloned()
        } else {
            None
        };
        let mut ids = match fresh {
            Some(ids) => ids,
            None => {
                let ids = list(ctx, target, lookup).await?;
                self.listed_at
                    .lock()
                    .await
                    .insert(cache_key.clone(), Instant::now());
                ids
            }
        };
        if !ids.contains_key(key)
            && let Some(create) = &lookup.create
            && let Some(decl) = ctx
                .program
                .provision
                .get(&target.name)
                .and_then(|p| p.get(kind))
                .and_then(|d| d.get(key))
        {
            // Other replicas may be about to create the same item: one
            // creates it, the others wait and find it in a fresh listing
            // (GHL does not document refusing a second field of one name).
            // This process's own deliveries are already kept apart by `gate`.
            let everywhere = ctx
                .store
                .lock_people(&[format!(
                    "provision\u{1f}{}\u{1f}{}\u{1f}{kind}\u{1f}{key}",
                    ctx.connection, target.name
                )])
                .await
                .map_err(Outcome::store)?;
            if everywhere.is_shared() {
                ids = list(ctx, target, lookup).await?;
            }
            if let Some(id) = ids.get(key).cloned() {
                drop(everywhere);
                self.store_ids(cache_key, ids).await;
                return Ok(id);
            }
            let mut item = decl.clone();
            if let Value::Object(map) = &mut item {
                map.entry("key".to_string())
                    .or_insert_with(|| Value::String(key.to_string()));
            }
            let request = {
                let mut scope = Scope::new();
                scope.set("item", &item);
                scope.set("env", ctx.env);
                ctx.program
                    .render_request(target, &create.request, &scope)
                    .map_err(|e| Outcome::Permanent(e.0))?
            };
            match ctx.http.send(target, &request).await {
                Answer::Ok(v) => {
                    if let Some(id) = create.id.select(&v).and_then(|v| scalar(&v)) {
                        ids.insert(key.to_string(), id);
                    }
                }
                Answer::Failed(Failure {
                    error,
                    transient: false,
                    ..
                }) => {
                    // Someone else (another replica, a person in the UI) may
                    // have created it since the listing: list once more.
                    ids = list(ctx, target, lookup).await?;
                    if !ids.contains_key(key) {
                        return Err(Outcome::Permanent(error));
                    }
                }
                Answer::Failed(failure) => return Err(Outcome::from_failure(failure)),
            }
        }
        let found = ids.get(key).cloned();
        self.store_ids(cache_key, ids).await;
        found.ok_or_else(|| {
            Outcome::Permanent(format!(
                "`{key}` is not a {kind} of target `{}` and is not declared under provision.{}.{kind}",
                target.name, target.name
            ))
        })
    }

    async fn gate(&self, key: &Key) -> Arc<Mutex<()>> {
        self.gates
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Whether a lookup was listed less than `age` ago.
    async fn listed_within(&self, key: &Key, age: Duration) -> bool {
        self.listed_at
            .lock()
            .await
            .get(key)
            .is_some_and(|at| at.elapsed() < age)
    }
}

/// Lists a lookup: key → id.
async fn list(
    ctx: &Ctx<'_>,
    target: &Target,
    lookup: &Lookup,
) -> Result<HashMap<String, String>, Outcome> {
    let request = {
        let mut scope = Scope::new();
        scope.set("env", ctx.env);
        ctx.program
            .render_request(target, &lookup.list, &scope)
            .map_err(|e| Outcome::Permanent(e.0))?
    };
    let listed = match ctx.http.send(target, &request).await {
        Answer::Ok(v) => v,
        Answer::Failed(failure) => return Err(Outcome::from_failure(failure)),
    };
    let mut ids = HashMap::new();
    for item in lookup.items.query(&listed) {
        let mut scope = Scope::new();
        scope.set("item", item);
        scope.set("env", ctx.env);
        let k = ctx.program.templates.eval_scope(&lookup.key, &scope);
        let i = ctx.program.templates.eval_scope(&lookup.id, &scope);
        if let (Ok(k), Ok(i)) = (k, i)
            && let (Some(k), Some(i)) = (scalar(&k), scalar(&i))
        {
            ids.insert(k, i);
        }
    }
    Ok(ids)
}

/// The (kind, key) of every `${lookup:KIND:KEY}` in a tree, each once.
fn collect(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${lookup:") {
                let inner = &rest[start + 9..];
                let Some(end) = inner.find('}') else { break };
                if let Some((kind, key)) = inner[..end].split_once(':') {
                    let pair = (kind.to_string(), key.to_string());
                    if !out.contains(&pair) {
                        out.push(pair);
                    }
                }
                rest = &inner[end + 1..];
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect(i, out)),
        _ => {}
    }
}

/// Applies `f` to every string of a tree.
fn map_strings(v: &mut Value, f: &impl Fn(&str) -> String) {
    match v {
        Value::String(s) if s.contains("${") => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| map_strings(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| map_strings(i, f)),
        _ => {}
    }
}

/// The first `${…}` left in a request, if any: a value delivery could not
/// know (a customer field nothing taught us yet).
pub fn unresolved(request: &RequestPlan) -> Option<String> {
    fn find(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => s.find("${").map(|at| {
                let rest: String = s[at..].chars().take_while(|c| *c != '}').collect();
                format!("{rest}}}")
            }),
            Value::Array(items) => items.iter().find_map(find),
            Value::Object(map) => map.values().find_map(find),
            _ => None,
        }
    }
    find(&Value::String(request.path.clone()))
        .or_else(|| request.query.as_ref().and_then(find))
        .or_else(|| request.body.as_ref().and_then(find))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_found_anywhere_in_the_tree_once_each() {
        let mut out = Vec::new();
        collect(
            &json!({"customFields": [{"id": "${lookup:custom_field:points}", "v": 1},
                     {"id": "${lookup:custom_field:points}"}],
                    "note": "stage ${lookup:stage:Won} of ${lookup:pipeline:Main}"}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                ("custom_field".to_string(), "points".to_string()),
                ("stage".to_string(), "Won".to_string()),
                ("pipeline".to_string(), "Main".to_string()),
            ]
        );
    }

    #[test]
    fn a_left_over_placeholder_is_named() {
        let request = RequestPlan {
            method: "PUT".into(),
            url: "http://h/cards/x".into(),
            path: "/cards/x".into(),
            query: None,
            body: Some(json!({"card": "${customer.card_id}", "n": 3})),
        };
        assert_eq!(
            unresolved(&request),
            Some("${customer.card_id}".to_string())
        );
    }
}

#[cfg(test)]
mod known_tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn known_follows_every_listing_kept() {
        let lookups = Lookups::default();
        assert_eq!(*lookups.known(), json!(null), "nothing listed yet");
        let key = ("ghl".to_string(), "custom_field".to_string());
        lookups
            .store_ids(
                key.clone(),
                HashMap::from([("bonus_points".into(), "f1".into())]),
            )
            .await;
        assert_eq!(
            *lookups.known(),
            json!({"custom_field": {"bonus_points": "f1"}})
        );
        lookups
            .store_ids(key, HashMap::from([("bonus_points".into(), "f2".into())]))
            .await;
        assert_eq!(
            *lookups.known(),
            json!({"custom_field": {"bonus_points": "f2"}})
        );
    }
}
