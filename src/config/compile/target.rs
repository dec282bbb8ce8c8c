//! Compiling a target profile: its operations, customer capability,
//! lookups, rate limits and coalescing, each checked with diagnostics.

use super::*;

pub(super) fn compile_target(ctx: &mut Ctx, tp: &TargetProfile) -> Option<prog::Target> {
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
pub(super) fn compile_op_coalesce(
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

pub(super) fn compile_create(
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
