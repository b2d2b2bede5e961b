//! Structural schemas: what a CustomResourceDefinition's `openAPIV3Schema` does to the
//! objects of its kind on the way in, in Kubernetes' order.
//!
//! 1. [`prune`]: fields the schema does not name are dropped (and reported, so strict field
//!    validation can refuse them), unless `x-kubernetes-preserve-unknown-fields` or
//!    `additionalProperties` keeps them; a `null` where the schema does not allow one is
//!    dropped too.
//! 2. [`default`]: absent fields with a `default` get it, at every depth.
//! 3. [`validate`]: types, `required`, `enum`, bounds, lengths, patterns, list types and
//!    `allOf`/`anyOf`/`oneOf`/`not`, each error with its field path and Kubernetes' wording.
//!
//! At the root (and in `x-kubernetes-embedded-resource` objects) `apiVersion`, `kind` and
//! `metadata` are the server's: never pruned, and not validated here.

use serde_json::{Map, Value};

use crate::validation::{FieldError, Reason};

const ENVELOPE: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Drop what `schema` does not know from `obj` (a whole object: its envelope is kept), and
/// return the paths dropped.
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut dropped = Vec::new();
    prune_at(schema, obj, "", true, &mut dropped);
    dropped
}

fn prune_at(schema: &Value, v: &mut Value, path: &str, envelope: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keep_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || additional == Some(&Value::Bool(true));
            let embedded = envelope || flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let at = join(path, &key);
                if embedded && ENVELOPE.contains(&key.as_str()) {
                    // The root's metadata is the server's; an embedded one keeps what
                    // object metadata has, which this layer does not police.
                    continue;
                }
                let sub = props
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        let child = map.get_mut(&key).expect("listed");
                        if child.is_null() && !flag(sub, "nullable") {
                            map.remove(&key);
                            continue;
                        }
                        prune_at(sub, child, &at, false, out);
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&key);
                        out.push(at);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(sub, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

/// Give every absent field that has a `default` its default, at every depth.
pub fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, sub) in props {
                    let absent = match map.get(key) {
                        None => true,
                        Some(Value::Null) => !flag(sub, "nullable"),
                        Some(_) => false,
                    };
                    if absent {
                        if let Some(d) = sub.get("default") {
                            map.insert(key.clone(), d.clone());
                        }
                    }
                    if let Some(child) = map.get_mut(key) {
                        default(sub, child);
                    }
                }
            }
            if let Some(sub) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    default(sub, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    default(sub, item);
                }
            }
        }
        _ => {}
    }
}

/// Every way `obj` breaks `schema`, with field paths (`spec.replicas`). `old` is the stored
/// object an update replaces: the `x-kubernetes-validations` rules that compare with it
/// (`oldSelf`) run only where it has a value to compare with.
pub fn validate(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_at(schema, obj, old, "", true, &mut errs);
    errs
}

/// A value as Kubernetes shows it in an error: strings quoted, numbers as they are, and
/// objects and lists by their type.
fn show(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> FieldError {
    FieldError {
        path: path.to_string(),
        reason: Reason::Invalid,
        detail: format!("{}: {detail}", show(v)),
    }
}

/// The path as the messages name it (`spec.replicas in body ...`).
fn named(path: &str) -> &str {
    if path.is_empty() {
        "body"
    } else {
        path
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn validate_at(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    envelope: bool,
    errs: &mut Vec<FieldError>,
) {
    if v.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            let ty = schema["type"].as_str().unwrap_or_default();
            errs.push(invalid(
                path,
                v,
                format!("{} in body must be of type {ty}", named(path)),
            ));
        }
        return;
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if int_or_string {
        if !(v.is_string() || type_matches("integer", v)) {
            errs.push(invalid(
                path,
                v,
                format!("{} in body must be of type integer or string", named(path)),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(ty, v) {
            errs.push(FieldError {
                path: path.to_string(),
                reason: Reason::TypeInvalid,
                detail: format!(
                    "{}: {} in body must be of type {ty}: {}",
                    show(v),
                    named(path),
                    show(v)
                ),
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errs.push(FieldError {
                path: path.to_string(),
                reason: Reason::NotSupported,
                detail: format!("{}: supported values: {}", show(v), list.join(", ")),
            });
        }
    }
    match v {
        Value::String(s) => string_rules(schema, s, v, path, errs),
        Value::Number(_) => number_rules(schema, v, path, errs),
        Value::Array(items) => array_rules(schema, items, v, path, errs),
        Value::Object(map) => object_rules(schema, map, old, path, envelope, errs),
        _ => {}
    }
    combinators(schema, v, path, errs);
    rules(schema, v, old, path, errs);
}

fn string_rules(schema: &Value, s: &str, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if chars > max {
            errs.push(FieldError {
                path: path.to_string(),
                reason: Reason::TooLong,
                detail: format!("may not be more than {max} bytes"),
            });
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if chars < min {
            errs.push(invalid(
                path,
                v,
                format!(
                    "{} in body should be at least {min} chars long",
                    named(path)
                ),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile was refused with the CRD.
        if regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(s)) {
            errs.push(invalid(
                path,
                v,
                format!("{} in body should match '{pattern}'", named(path)),
            ));
        }
    }
}

fn number_rules(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(n) = v.as_f64() else { return };
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!(
                    "{} in body should be {how} {}",
                    named(path),
                    schema["minimum"]
                ),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!(
                    "{} in body should be {how} {}",
                    named(path),
                    schema["maximum"]
                ),
            ));
        }
    }
    if let Some(m) = bound("multipleOf").filter(|m| *m > 0.0) {
        if (n / m).fract() != 0.0 {
            errs.push(invalid(
                path,
                v,
                format!(
                    "{} in body should be a multiple of {}",
                    named(path),
                    schema["multipleOf"]
                ),
            ));
        }
    }
}

fn array_rules(schema: &Value, items: &[Value], v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if len > max {
            errs.push(FieldError {
                path: path.to_string(),
                reason: Reason::TooMany,
                detail: format!("{len}: must have at most {max} items"),
            });
        }
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if len < min {
            errs.push(invalid(
                path,
                v,
                format!("{} in body should have at least {min} items", named(path)),
            ));
        }
    }
    let list_type = schema
        .get("x-kubernetes-list-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if list_type == "set" || flag(schema, "uniqueItems") {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                errs.push(FieldError {
                    path: format!("{path}[{i}]"),
                    reason: Reason::Duplicate,
                    detail: show(item),
                });
            }
        }
    }
    if list_type == "map" {
        let keys: Vec<&str> = schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key_of = |item: &Value| -> Vec<Value> {
            keys.iter()
                .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                .collect()
        };
        for (i, item) in items.iter().enumerate() {
            let k = key_of(item);
            if items[..i].iter().any(|o| key_of(o) == k) {
                let shown: Vec<String> = keys
                    .iter()
                    .zip(&k)
                    .map(|(name, val)| format!("{name}:{val}"))
                    .collect();
                errs.push(FieldError {
                    path: format!("{path}[{i}]"),
                    reason: Reason::Duplicate,
                    detail: format!("map[{}]", shown.join(" ")),
                });
            }
        }
    }
    if let Some(sub) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate_at(sub, item, None, &format!("{path}[{i}]"), false, errs);
        }
    }
}

fn object_rules(
    schema: &Value,
    map: &Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    envelope: bool,
    errs: &mut Vec<FieldError>,
) {
    let embedded = envelope || flag(schema, "x-kubernetes-embedded-resource");
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if map.get(key).is_none_or(Value::is_null) && !(envelope && ENVELOPE.contains(&key)) {
            errs.push(FieldError::required(join(path, key)));
        }
    }
    let count = map.len() as u64;
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
        if count > max {
            errs.push(FieldError {
                path: path.to_string(),
                reason: Reason::TooMany,
                detail: format!("{count}: must have at most {max} items"),
            });
        }
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
        if count < min {
            errs.push(invalid(
                path,
                &Value::Object(map.clone()),
                format!(
                    "{} in body should have at least {min} properties",
                    named(path)
                ),
            ));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if embedded && ENVELOPE.contains(&key.as_str()) {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(key)).or(additional) {
            let was = old.and_then(|o| o.get(key));
            validate_at(sub, child, was, &join(path, key), false, errs);
        }
    }
}

/// Does `v` pass `schema` (at `path`) with no error?
fn passes(schema: &Value, v: &Value, path: &str) -> bool {
    let mut errs = Vec::new();
    validate_at(schema, v, None, path, false, &mut errs);
    errs.is_empty()
}

fn combinators(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let list = |key: &str| -> Vec<&Value> {
        schema
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    for sub in list("allOf") {
        validate_at(sub, v, None, path, false, errs);
    }
    let any = list("anyOf");
    if !any.is_empty() && !any.iter().any(|s| passes(s, v, path)) {
        errs.push(invalid(
            path,
            v,
            format!(
                "{} in body must validate at least one schema (anyOf)",
                named(path)
            ),
        ));
    }
    let one = list("oneOf");
    if !one.is_empty() {
        let n = one.iter().filter(|s| passes(s, v, path)).count();
        if n != 1 {
            errs.push(invalid(
                path,
                v,
                format!(
                    "{} in body must validate one and only one schema (oneOf)",
                    named(path)
                ),
            ));
        }
    }
    if let Some(not) = schema.get("not") {
        if passes(not, v, path) {
            errs.push(invalid(
                path,
                v,
                format!("{} in body must not validate the schema (not)", named(path)),
            ));
        }
    }
}

/// The `x-kubernetes-validations` rules at this level: CEL expressions (the `cel` crate)
/// over `self` (the value here) and, for transition rules, `oldSelf` (its stored value).
fn rules(schema: &Value, v: &Value, old: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        let transition = text.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let at = match rule.get("fieldPath").and_then(Value::as_str) {
            Some(f) if !f.is_empty() => format!("{path}{f}"),
            _ => path.to_string(),
        };
        let outcome = cel::Program::compile(text)
            .map_err(|e| e.to_string())
            .and_then(|program| {
                let mut ctx = cel::Context::default();
                ctx.add_variable("self", v).map_err(|e| e.to_string())?;
                if let Some(o) = old {
                    ctx.add_variable("oldSelf", o).map_err(|e| e.to_string())?;
                }
                program.execute(&ctx).map_err(|e| e.to_string())
            });
        let message = match outcome {
            Ok(cel::Value::Bool(true)) => continue,
            Ok(cel::Value::Bool(false)) => match rule.get("message").and_then(Value::as_str) {
                Some(m) if !m.is_empty() => m.to_string(),
                _ => format!("failed rule: {text}"),
            },
            Ok(other) => format!("rule {text:?} gave {other:?}, not a bool"),
            Err(e) => format!("rule {text:?} could not be evaluated: {e}"),
        };
        let reason = match rule.get("reason").and_then(Value::as_str) {
            Some("FieldValueRequired") => Reason::Required,
            Some("FieldValueForbidden") => Reason::Forbidden,
            Some("FieldValueDuplicate") => Reason::Duplicate,
            _ => Reason::Invalid,
        };
        let detail = if reason == Reason::Invalid {
            format!("{}: {message}", show(v))
        } else {
            message
        };
        errs.push(FieldError {
            path: at,
            reason,
            detail,
        });
    }
}

/// Why `schema` cannot serve as a CRD version's schema, if it cannot: every level must say
/// its type (unless it preserves unknown fields or is an int-or-string), and patterns must
/// compile. `path` names the schema in the CRD (`spec.versions[0].schema.openAPIV3Schema`).
pub fn check_structural(schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(map) = schema.as_object() else {
        errs.push(FieldError {
            path: path.to_string(),
            reason: Reason::Invalid,
            detail: "must be an object".into(),
        });
        return;
    };
    let typed = map.get("type").and_then(Value::as_str).is_some();
    if !typed
        && !flag(schema, "x-kubernetes-preserve-unknown-fields")
        && !flag(schema, "x-kubernetes-int-or-string")
    {
        errs.push(FieldError::required_because(
            format!("{path}.type"),
            "must not be empty for specified object fields",
        ));
    }
    if let Some(p) = map.get("pattern").and_then(Value::as_str) {
        if let Err(e) = regex::Regex::new(p) {
            errs.push(FieldError::invalid(
                format!("{path}.pattern"),
                p,
                format!("must be a valid regular expression: {e}"),
            ));
        }
    }
    for (i, rule) in map
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        let at = format!("{path}.x-kubernetes-validations[{i}].rule");
        if text.is_empty() {
            errs.push(FieldError::required(at));
        } else if let Err(e) = cel::Program::compile(text) {
            errs.push(FieldError::invalid(
                at,
                text,
                format!("compilation failed: {e}"),
            ));
        }
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            check_structural(sub, &format!("{path}.properties[{k}]"), errs);
        }
    }
    if let Some(items) = map.get("items") {
        check_structural(items, &format!("{path}.items"), errs);
    }
    if let Some(add) = map.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(add, &format!("{path}.additionalProperties"), errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "minLength": 1, "maxLength": 20,
                                  "pattern": "^[a-z:0-9]+$"},
                        "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
                        "ports": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object", "properties": {
                                      "name": {"type": "string"},
                                      "port": {"x-kubernetes-int-or-string": true}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "note": {"type": "string", "nullable": true},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "integer"}}},
            },
        })
    }

    #[test]
    fn unknown_fields_are_pruned_where_nothing_keeps_them() {
        let mut obj = json!({
            "apiVersion": "x.io/v1", "kind": "App", "metadata": {"name": "a", "anything": 1},
            "spec": {"image": "web", "bogus": 1, "labels": {"a": "b"},
                     "extra": {"free": {"form": true}}, "ports": [{"name": "p", "junk": 2}],
                     "replicas": null, "note": null},
            "top": true,
        });
        let dropped = prune(&schema(), &mut obj);
        assert_eq!(dropped, ["spec.bogus", "spec.ports[0].junk", "top"]);
        assert_eq!(obj["metadata"]["anything"], 1);
        assert_eq!(obj["spec"]["extra"]["free"]["form"], true);
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert!(
            obj["spec"].get("replicas").is_none(),
            "a null not allowed is dropped"
        );
        assert!(obj["spec"]["note"].is_null() && obj["spec"].get("note").is_some());
    }

    #[test]
    fn defaults_fill_absent_fields_at_every_depth() {
        let mut obj = json!({"spec": {"image": "web", "mode": "fast"}});
        default(&schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["mode"], "fast", "a given value is kept");
        let mut empty = json!({});
        default(&schema(), &mut empty);
        assert!(empty.get("spec").is_none(), "no default for spec itself");
    }

    #[test]
    fn errors_carry_paths_and_kubernetes_wording() {
        let obj = json!({
            "apiVersion": "x.io/v1", "kind": "App", "metadata": {"name": "a"},
            "spec": {"replicas": "three", "mode": "slow",
                     "ports": [{"name": "a", "port": 80}, {"name": "a", "port": "http"},
                               {"name": "b", "port": true}],
                     "labels": {"x": 1}},
        });
        let errs: Vec<String> = validate(&schema(), &obj, None)
            .iter()
            .map(|e| e.to_string())
            .collect();
        let want = [
            "spec.image: Required value",
            "spec.replicas: Invalid type: \"three\": spec.replicas in body must be of type integer: \"three\"",
            "spec.mode: Unsupported value: \"slow\": supported values: \"fast\", \"safe\"",
            "spec.ports: Too many: 3: must have at most 2 items",
            "spec.ports[1]: Duplicate value: map[name:\"a\"]",
            "spec.ports[2].port: Invalid value: true: spec.ports[2].port in body must be of type integer or string",
            "spec.labels.x: Invalid type: 1: spec.labels.x in body must be of type string: 1",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");

        let bounds = json!({"spec": {"image": "UPPER", "replicas": 11}});
        let errs: Vec<String> = validate(&schema(), &bounds, None)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "spec.image: Invalid value: \"UPPER\": spec.image in body should match '^[a-z:0-9]+$'",
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            ]
        );
        assert!(validate(
            &schema(),
            &json!({"spec": {"image": "web:1", "replicas": 3}}),
            None
        )
        .is_empty());
    }

    #[test]
    fn cel_rules_check_self_and_transitions_against_the_old_value() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "min may not exceed max"},
                {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable",
                 "fieldPath": ".mode"},
            ],
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"},
                           "mode": {"type": "string"}}}}});
        let ok = json!({"spec": {"min": 1, "max": 3, "mode": "a"}});
        assert!(validate(&s, &ok, None).is_empty());
        let errs: Vec<String> = validate(
            &s,
            &json!({"spec": {"min": 4, "max": 3, "mode": "a"}}),
            None,
        )
        .iter()
        .map(|e| e.to_string())
        .collect();
        assert_eq!(
            errs,
            ["spec: Invalid value: \"object\": min may not exceed max"]
        );
        // A transition rule runs on updates only.
        let changed = json!({"spec": {"min": 1, "max": 3, "mode": "b"}});
        assert!(validate(&s, &changed, None).is_empty());
        let errs: Vec<String> = validate(&s, &changed, Some(&ok))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            ["spec.mode: Invalid value: \"object\": mode is immutable"]
        );
        // A rule that does not compile is the definition's error.
        let mut errs = Vec::new();
        check_structural(
            &json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a <"}]}),
            "s",
            &mut errs,
        );
        assert_eq!(errs[0].path, "s.x-kubernetes-validations[0].rule");
    }

    #[test]
    fn combinators_and_structural_checks() {
        let s = json!({"type": "object", "properties": {"v": {
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+%$"}]}}});
        assert!(validate(&s, &json!({"v": 5}), None).is_empty());
        assert!(validate(&s, &json!({"v": "50%"}), None).is_empty());
        assert_eq!(validate(&s, &json!({"v": "half"}), None).len(), 1);

        let mut errs = Vec::new();
        check_structural(
            &json!({"type": "object", "properties": {"a": {"properties": {}}, "b": {"type": "string", "pattern": "("}}}),
            "spec.versions[0].schema.openAPIV3Schema",
            &mut errs,
        );
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.versions[0].schema.openAPIV3Schema.properties[a].type",
                "spec.versions[0].schema.openAPIV3Schema.properties[b].pattern",
            ]
        );
    }
}
