//! ConfigMap and Secret: the keys of their data.

use serde_json::Value;

use crate::validation::FieldError;

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, unique across `data` and `binaryData`.
pub(super) fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut seen = std::collections::HashSet::new();
    for field in ["data", "binaryData", "stringData"] {
        let Some(map) = obj.get(field).and_then(Value::as_object) else {
            continue;
        };
        for k in map.keys() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
                && k != "."
                && k != "..";
            if !ok {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    k,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                     (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                     is '[-._a-zA-Z0-9]+')",
                ));
            } else if field != "stringData" && !seen.insert(k.clone()) {
                errs.push(FieldError::duplicate(format!("{field}[{k}]"), k));
            }
        }
    }
}
