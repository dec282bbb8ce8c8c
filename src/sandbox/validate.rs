//! Request-body validation in the manner of GHL's NestJS `ValidationPipe`
//! (`whitelist` + `forbidNonWhitelisted`): the accepted properties are those
//! of the DTO in the official OpenAPI spec, anything else is reported as
//! `property X should not exist`, and every violation is listed (422 with a
//! `message` array). `null` counts as absent for optional properties
//! (`@IsOptional`).

use serde_json::{Map, Value};

/// The type a property must have.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Str,
    Bool,
    Num,
    /// `type: object` in the spec with no further constraint: anything.
    Any,
    /// An object (no deeper checks).
    Object,
    StrArray,
    /// An array of anything.
    Array,
    Enum(&'static [&'static str]),
    /// `customFields`: items `{id, key, field_value}`; `require_id` when the
    /// spec's item schemas all require `id` (contacts), otherwise `id` or
    /// `key` (opportunities: "Pass either `id` or `key`").
    CustomFields {
        require_id: bool,
    },
}

/// The accepted properties of a body and the required ones.
pub(crate) struct Dto {
    pub props: &'static [(&'static str, Kind)],
    pub required: &'static [&'static str],
}

/// Every violation of `dto` by `body`, in NestJS's wording.
pub(crate) fn validate(dto: &Dto, body: &Map<String, Value>) -> Vec<String> {
    let mut errors = Vec::new();
    for key in body.keys() {
        if !dto.props.iter().any(|(name, _)| name == key) {
            errors.push(format!("property {key} should not exist"));
        }
    }
    for (name, kind) in dto.props {
        let value = body.get(*name).filter(|v| !v.is_null());
        let required = dto.required.contains(name);
        match value {
            None if required => errors.extend(missing(name, *kind)),
            None => {}
            Some(v) => check(name, *kind, v, &mut errors),
        }
    }
    errors
}

fn missing(name: &str, kind: Kind) -> Vec<String> {
    let mut out = vec![format!("{name} should not be empty")];
    match kind {
        Kind::Str => out.push(format!("{name} must be a string")),
        Kind::StrArray | Kind::Array => out.push(format!("{name} must be an array")),
        Kind::Enum(values) => out.push(one_of(name, values)),
        Kind::Bool => out.push(format!("{name} must be a boolean value")),
        Kind::Num => out.push(number(name)),
        _ => {}
    }
    out
}

fn one_of(name: &str, values: &[&str]) -> String {
    format!(
        "{name} must be one of the following values: {}",
        values.join(", ")
    )
}

fn number(name: &str) -> String {
    format!("{name} must be a number conforming to the specified constraints")
}

fn check(name: &str, kind: Kind, value: &Value, errors: &mut Vec<String>) {
    match kind {
        Kind::Str if !value.is_string() => errors.push(format!("{name} must be a string")),
        Kind::Bool if !value.is_boolean() => errors.push(format!("{name} must be a boolean value")),
        Kind::Num if !value.is_number() => errors.push(number(name)),
        Kind::Object if !value.is_object() => errors.push(format!("{name} must be an object")),
        Kind::Array if !value.is_array() => errors.push(format!("{name} must be an array")),
        Kind::StrArray => match value.as_array() {
            None => errors.push(format!("{name} must be an array")),
            Some(items) if items.iter().any(|i| !i.is_string()) => {
                errors.push(format!("each value in {name} must be a string"));
            }
            Some(_) => {}
        },
        Kind::Enum(values) if !value.as_str().is_some_and(|s| values.contains(&s)) => {
            errors.push(one_of(name, values));
        }
        Kind::CustomFields { require_id } => check_custom_fields(name, require_id, value, errors),
        _ => {}
    }
}

fn check_custom_fields(name: &str, require_id: bool, value: &Value, errors: &mut Vec<String>) {
    let Some(items) = value.as_array() else {
        errors.push(format!("{name} must be an array"));
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("{name}.{i}");
        let Some(item) = item.as_object() else {
            errors.push(format!("{prefix} must be an object"));
            continue;
        };
        for key in item.keys() {
            if !matches!(key.as_str(), "id" | "key" | "field_value") {
                errors.push(format!("{prefix}.property {key} should not exist"));
            }
        }
        for key in ["id", "key"] {
            if let Some(v) = item.get(key).filter(|v| !v.is_null())
                && !v.is_string()
            {
                errors.push(format!("{prefix}.{key} must be a string"));
            }
        }
        let has = |k: &str| item.get(k).is_some_and(|v| !v.is_null());
        if require_id && !has("id") {
            errors.push(format!("{prefix}.id should not be empty"));
        } else if !require_id && !has("id") && !has("key") {
            errors.push(format!("{prefix}.id or {prefix}.key should not be empty"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DTO: Dto = Dto {
        props: &[
            ("name", Kind::Str),
            ("tags", Kind::StrArray),
            ("customFields", Kind::CustomFields { require_id: true }),
        ],
        required: &["name"],
    };

    fn errors(body: Value) -> Vec<String> {
        validate(&DTO, body.as_object().unwrap())
    }

    #[test]
    fn unknown_properties_and_types_are_listed() {
        assert_eq!(
            errors(json!({"name": 1, "gender": "x", "tags": ["a", 2]})),
            vec![
                "property gender should not exist",
                "name must be a string",
                "each value in tags must be a string"
            ]
        );
        assert_eq!(
            errors(json!({})),
            vec!["name should not be empty", "name must be a string"]
        );
    }

    #[test]
    fn custom_field_items_take_id_key_field_value_only() {
        assert_eq!(
            errors(
                json!({"name": "a", "customFields": [{"id": "x", "value": 1}, {"key": "k", "field_value": 1}]})
            ),
            vec![
                "customFields.0.property value should not exist",
                "customFields.1.id should not be empty"
            ]
        );
        assert!(
            errors(json!({"name": "a", "customFields": [{"id": "x", "field_value": [1]}]}))
                .is_empty()
        );
    }
}
