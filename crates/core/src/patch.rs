//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386), and Kubernetes' strategic
//! merge patch for the kinds Berth serves.
//!
//! Strategic merge differs from merge patch on lists: a list with a merge key (containers by
//! `name`, container ports by `containerPort`, ...) is merged item by item, and the patch may
//! carry directives: `$patch: replace|delete|merge`, `$setElementOrder/<list>`,
//! `$deleteFromPrimitiveList/<list>` and `$retainKeys`.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the JSON patch is not a list of operations")]
    JsonPatchBody(#[source] serde_json::Error),
    #[error("applying the JSON patch failed")]
    JsonPatch(#[source] json_patch::PatchError),
    #[error("a merge patch must be a JSON object")]
    NotAnObject,
    #[error("unknown patch directive {0:?}: use replace, merge or delete")]
    Directive(String),
}

/// Apply an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(PatchError::JsonPatchBody)?;
    json_patch::patch(target, &ops).map_err(PatchError::JsonPatch)
}

/// Apply an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject);
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// How a list field merges under strategic merge patch.
enum ListStrategy {
    /// Items are objects matched by this key.
    MergeKey(&'static str),
    /// Items are scalars merged as a set.
    Set,
    /// The patch's list replaces the target's.
    Replace,
}

/// The merge strategy of a list field, by its name (and, for `ports`, by its items: container
/// ports merge on `containerPort`, service ports on `port`).
fn list_strategy(field: &str, sample: Option<&Value>) -> ListStrategy {
    use ListStrategy::*;
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => MergeKey("name"),
        "volumeMounts" => MergeKey("mountPath"),
        "volumeDevices" => MergeKey("devicePath"),
        "hostAliases" => MergeKey("ip"),
        "conditions" | "addresses" => MergeKey("type"),
        "ownerReferences" => MergeKey("uid"),
        "taints" => MergeKey("key"),
        "topologySpreadConstraints" => MergeKey("topologyKey"),
        "finalizers" => Set,
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                MergeKey("containerPort")
            } else {
                MergeKey("port")
            }
        }
        _ => Replace,
    }
}

/// Apply a strategic merge patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::NotAnObject);
    };
    merge_map(target, p)
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(&Value::Object(patch.clone()));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::Directive(other.to_string())),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Value::Array(order) = v {
                orders.push((field, order));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), v) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let obj = target.as_object_mut().expect("target is an object");
        match v {
            Value::Null => {
                obj.remove(k);
            }
            Value::Object(pm) => {
                let entry = obj.entry(k.clone()).or_insert(Value::Null);
                merge_map(entry, pm)?;
            }
            Value::Array(items) => {
                let merged = merge_list(k, obj.remove(k), items)?;
                obj.insert(k.clone(), merged);
            }
            scalar => {
                obj.insert(k.clone(), scalar.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        if let Some(obj) = target.as_object_mut() {
            obj.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = target.get_mut(field) {
            reorder(field, list, order);
        }
    }
    Ok(())
}

fn merge_list(field: &str, current: Option<Value>, patch: &[Value]) -> Result<Value, PatchError> {
    let current = match current {
        Some(Value::Array(c)) => c,
        _ => Vec::new(),
    };
    // A `{"$patch": "replace"}` item replaces the whole list with the other items.
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let items = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(items));
    }
    let sample = patch.first().or(current.first());
    match list_strategy(field, sample) {
        ListStrategy::Replace => Ok(strip_directives(&Value::Array(patch.to_vec()))),
        ListStrategy::Set => {
            let mut out = current;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeKey(key) => {
            let mut out = current;
            for item in patch {
                let Value::Object(pm) = item else {
                    // Scalars in a keyed list: nothing to match on, append.
                    out.push(item.clone());
                    continue;
                };
                let id = pm.get(key);
                let pos = out.iter().position(|c| id.is_some() && c.get(key) == id);
                let delete = pm.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_map(&mut out[i], pm)?,
                    (None, false) => out.push(strip_directives(item)),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Order `list` as `order` names its items (by merge key, or by value for scalars); items the
/// order does not mention keep their relative place after the ordered ones.
fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let key = match list_strategy(field, order.first().or(list.first())) {
        ListStrategy::MergeKey(k) => Some(k),
        _ => None,
    };
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let rank = |v: &Value| -> usize {
        let vid = id(v);
        order
            .iter()
            .position(|o| id(o) == vid)
            .unwrap_or(order.len())
    };
    list.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_keep_order() {
        let mut target = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "a:2"}]
        }});
        strategic_merge(&mut target, &patch).unwrap();
        assert_eq!(
            target,
            json!({"spec": {"containers": [
                {"name": "b", "image": "b:1"}, {"name": "a", "image": "a:2"}
            ]}})
        );
    }

    #[test]
    fn delete_directive_and_null_remove() {
        let mut target = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}},
            "spec": {"containers": [{"name": "b", "$patch": "delete"}]}});
        strategic_merge(&mut target, &patch).unwrap();
        assert_eq!(
            target,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"containers": [{"name": "a"}]}})
        );
    }

    #[test]
    fn plain_lists_replace_and_finalizers_union() {
        let mut target = json!({"args": ["x"], "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"args": ["y"], "metadata": {"finalizers": ["f2"]}});
        strategic_merge(&mut target, &patch).unwrap();
        assert_eq!(
            target,
            json!({"args": ["y"], "metadata": {"finalizers": ["f1", "f2"]}})
        );
    }

    #[test]
    fn ports_merge_on_the_right_key() {
        let mut svc = json!({"ports": [{"port": 80, "name": "http"}]});
        strategic_merge(
            &mut svc,
            &json!({"ports": [{"port": 443, "name": "https"}]}),
        )
        .unwrap();
        assert_eq!(svc["ports"].as_array().unwrap().len(), 2);
    }
}
