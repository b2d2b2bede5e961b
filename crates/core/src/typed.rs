//! Decoding an object against its Kubernetes schema (the `k8s-openapi` types).
//!
//! A body is decoded into its typed struct (type errors and missing required fields come back
//! with their field path), then encoded again. Fields present in the body but absent from the
//! round trip are the fields the schema does not know: with `fieldValidation=Strict` they are
//! errors, otherwise warnings, and in both cases the stored object is the round-tripped one.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::resources::Kind;
use crate::validation::{FieldError, Reason};

/// The decoded object in canonical form, and the paths of fields the schema dropped.
#[derive(Debug)]
pub struct Decoded {
    pub object: Value,
    pub unknown_fields: Vec<String>,
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: Value) -> Result<Decoded, FieldError> {
    let typed: T = serde_path_to_error::deserialize(&obj).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let full = if path == "." || path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            return FieldError::required(full);
        }
        FieldError {
            path: if path == "." { "<root>".into() } else { path },
            reason: Reason::TypeInvalid,
            detail: msg,
        }
    })?;
    let canonical = serde_json::to_value(&typed).map_err(|e| FieldError {
        path: "<root>".into(),
        reason: Reason::Invalid,
        detail: e.to_string(),
    })?;
    let mut unknown_fields = Vec::new();
    diff_unknown(&obj, &canonical, String::new(), &mut unknown_fields);
    Ok(Decoded {
        object: canonical,
        unknown_fields,
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn diff_unknown(orig: &Value, canon: &Value, path: String, out: &mut Vec<String>) {
    match (orig, canon) {
        (Value::Object(o), Value::Object(c)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                match c.get(k) {
                    Some(cv) => diff_unknown(v, cv, join(&path, k), out),
                    None => out.push(join(&path, k)),
                }
            }
        }
        (Value::Array(o), Value::Array(c)) => {
            for (i, (v, cv)) in o.iter().zip(c).enumerate() {
                diff_unknown(v, cv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decode `obj` as `kind`'s schema.
pub fn decode(kind: Kind, obj: Value) -> Result<Decoded, FieldError> {
    use k8s_openapi::api::{
        apps, autoscaling, batch, coordination, core, discovery, policy, rbac, storage,
    };
    match kind {
        Kind::Namespace => round_trip::<core::v1::Namespace>(obj),
        Kind::Pod => round_trip::<core::v1::Pod>(obj),
        Kind::Node => round_trip::<core::v1::Node>(obj),
        Kind::Service => round_trip::<core::v1::Service>(obj),
        Kind::Endpoints => round_trip::<core::v1::Endpoints>(obj),
        Kind::Event => round_trip::<core::v1::Event>(obj),
        Kind::ConfigMap => round_trip::<core::v1::ConfigMap>(obj),
        Kind::Secret => round_trip::<core::v1::Secret>(obj),
        Kind::Deployment => round_trip::<apps::v1::Deployment>(obj),
        Kind::ReplicaSet => round_trip::<apps::v1::ReplicaSet>(obj),
        Kind::Lease => round_trip::<coordination::v1::Lease>(obj),
        Kind::HorizontalPodAutoscaler => {
            round_trip::<autoscaling::v2::HorizontalPodAutoscaler>(obj)
        }
        Kind::EndpointSlice => round_trip::<discovery::v1::EndpointSlice>(obj),
        Kind::Job => round_trip::<batch::v1::Job>(obj),
        Kind::ReplicationController => round_trip::<core::v1::ReplicationController>(obj),
        Kind::CronJob => round_trip::<batch::v1::CronJob>(obj),
        Kind::DaemonSet => round_trip::<apps::v1::DaemonSet>(obj),
        Kind::PodDisruptionBudget => round_trip::<policy::v1::PodDisruptionBudget>(obj),
        Kind::StatefulSet => round_trip::<apps::v1::StatefulSet>(obj),
        Kind::PersistentVolumeClaim => round_trip::<core::v1::PersistentVolumeClaim>(obj),
        Kind::PersistentVolume => round_trip::<core::v1::PersistentVolume>(obj),
        Kind::StorageClass => round_trip::<storage::v1::StorageClass>(obj),
        Kind::ControllerRevision => round_trip::<apps::v1::ControllerRevision>(obj),
        Kind::ServiceAccount => round_trip::<core::v1::ServiceAccount>(obj),
        Kind::Role => round_trip::<rbac::v1::Role>(obj),
        Kind::ClusterRole => round_trip::<rbac::v1::ClusterRole>(obj),
        Kind::RoleBinding => round_trip::<rbac::v1::RoleBinding>(obj),
        Kind::ClusterRoleBinding => round_trip::<rbac::v1::ClusterRoleBinding>(obj),
        Kind::CustomResourceDefinition => round_trip::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(obj),
        // Its definition's schema decides (`crate::schema`), in the registry.
        Kind::Custom => Ok(Decoded {
            object: obj,
            unknown_fields: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_with_paths() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "bogus": 1},
            "data": {"a": "b"},
            "extra": {"x": 1}
        });
        let d = decode(Kind::ConfigMap, obj).unwrap();
        assert_eq!(d.unknown_fields, ["extra", "metadata.bogus"]);
        assert!(d.object.get("extra").is_none());
    }

    #[test]
    fn type_errors_carry_paths() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}
        });
        let e = decode(Kind::Pod, obj).unwrap_err();
        assert_eq!(e.path, "spec.containers[0].ports[0].containerPort");
        assert_eq!(e.reason, Reason::TypeInvalid);
    }
}
