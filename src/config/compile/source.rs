//! Compiling a source profile: its payload schemas, verification,
//! event types, ordering keys and routing, each checked with diagnostics.

use super::*;

/// A compiled source profile, its payload schemas and `fields:`, and whether
/// those schemas could be read (when not, its events are unknown, and what
/// mappings say about them is not checked: one M021 says why).
pub(super) type CompiledSource = (prog::Source, SchemaSet, Fields, bool);

pub(super) fn compile_source(
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

pub(super) fn check_verify(ctx: &mut Ctx, file: &Path, v: &model::VerifySpec) {
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
