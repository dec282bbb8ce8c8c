//! Compiling one mapping: its trigger, selectors checked against the
//! source's payload schemas, templates, actions against the target's
//! operations, and the checks that span mappings (segment echoes).

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn compile_mapping(
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
pub(super) fn no_match_hint(
    nm: &payload_schema::NoMatch,
    set: Option<&SchemaSet>,
    event: &str,
) -> String {
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
pub(super) struct Wanted {
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
pub(super) fn select_yield(
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
pub(super) fn resolve_kinds(
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
pub(super) fn check_yield(
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
pub(super) fn warn_todo(ctx: &mut Ctx, file: &Path, mapping: &str, node: &Node) {
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
pub(super) fn deprecated_in(
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

pub(super) fn check_against_events(
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
pub(super) fn check_literal(
    ctx: &mut Ctx,
    file: &Path,
    op: &str,
    name: &str,
    param: &model::Param,
    v: &Node,
) {
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
pub(super) fn check_segment_echoes(
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
