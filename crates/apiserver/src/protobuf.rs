//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl sends them
//! (`kubectl create namespace|deployment|service|configmap|secret|job|cronjob`, `kubectl
//! autoscale`, `kubectl drain`'s evictions and deletes, `kubectl create serviceaccount|role|
//! clusterrole|rolebinding|clusterrolebinding|token`, `kubectl auth can-i|whoami`): the `k8s\0` envelope around a
//! `runtime.Unknown` whose `raw` is the object.
//!
//! Berth answers JSON and stores JSON, so a protobuf body is decoded with `k8s-pb`'s types and
//! mapped onto the JSON field names. The mapping covers every field those generators set;
//! other kinds are refused with 415 and a pointer to JSON.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::authentication::v1 as authn;
use k8s_pb::api::authorization::v1 as authz;
use k8s_pb::api::autoscaling::v1 as autoscaling;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{json, Map, Value};

use crate::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn bad(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "the protobuf body could not be decoded as {what}: {e}"
    ))
}

/// Decode a protobuf body into the JSON object it stands for.
pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("a Kubernetes object", "missing the k8s\\0 envelope prefix"))?;
    let unknown = Unknown::decode(body).map_err(|e| bad("runtime.Unknown", e))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(&raw[..]).map_err(|e| bad("Namespace", e))?;
            json!({"metadata": object_meta(ns.metadata)})
        }
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(&raw[..]).map_err(|e| bad("ConfigMap", e))?;
            let mut o = json!({"metadata": object_meta(cm.metadata), "data": cm.data});
            if !cm.binary_data.is_empty() {
                o["binaryData"] = bytes_map(cm.binary_data);
            }
            put(&mut o, "immutable", cm.immutable.map(Value::Bool));
            o
        }
        ("v1", "Secret") => {
            let s = core::Secret::decode(&raw[..]).map_err(|e| bad("Secret", e))?;
            let mut o = json!({"metadata": object_meta(s.metadata), "data": bytes_map(s.data)});
            if !s.string_data.is_empty() {
                o["stringData"] = json!(s.string_data);
            }
            put_str(&mut o, "type", s.r#type);
            put(&mut o, "immutable", s.immutable.map(Value::Bool));
            o
        }
        ("v1", "Service") => {
            let s = core::Service::decode(&raw[..]).map_err(|e| bad("Service", e))?;
            json!({"metadata": object_meta(s.metadata), "spec": service_spec(s.spec.unwrap_or_default())})
        }
        ("apps/v1", "Deployment") => {
            let d = apps::Deployment::decode(&raw[..]).map_err(|e| bad("Deployment", e))?;
            json!({"metadata": object_meta(d.metadata), "spec": deployment_spec(d.spec.unwrap_or_default())})
        }
        ("batch/v1", "Job") => {
            let j = batch::Job::decode(&raw[..]).map_err(|e| bad("Job", e))?;
            json!({"metadata": object_meta(j.metadata), "spec": job_spec(j.spec.unwrap_or_default())})
        }
        ("batch/v1", "CronJob") => {
            let c = batch::CronJob::decode(&raw[..]).map_err(|e| bad("CronJob", e))?;
            json!({"metadata": object_meta(c.metadata), "spec": cronjob_spec(c.spec.unwrap_or_default())})
        }
        ("policy/v1", "Eviction") => {
            let e = policy::Eviction::decode(&raw[..]).map_err(|e| bad("Eviction", e))?;
            let mut o = json!({"metadata": object_meta(e.metadata)});
            put(&mut o, "deleteOptions", e.delete_options.map(delete_options));
            o
        }
        ("v1", "ServiceAccount") => {
            let a = core::ServiceAccount::decode(&raw[..]).map_err(|e| bad("ServiceAccount", e))?;
            let mut o = json!({"metadata": object_meta(a.metadata)});
            put_list(&mut o, "imagePullSecrets", a.image_pull_secrets, |r| {
                json!({"name": r.name.unwrap_or_default()})
            });
            put(
                &mut o,
                "automountServiceAccountToken",
                a.automount_service_account_token.map(Value::Bool),
            );
            o
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let r = rbac::Role::decode(&raw[..]).map_err(|e| bad("Role", e))?;
            let mut o = json!({"metadata": object_meta(r.metadata)});
            put_list(&mut o, "rules", r.rules, policy_rule);
            o
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let r = rbac::ClusterRole::decode(&raw[..]).map_err(|e| bad("ClusterRole", e))?;
            let mut o = json!({"metadata": object_meta(r.metadata)});
            put_list(&mut o, "rules", r.rules, policy_rule);
            if let Some(a) = r.aggregation_rule {
                let selectors: Vec<Value> = a
                    .cluster_role_selectors
                    .into_iter()
                    .filter_map(|s| label_selector(Some(s)))
                    .collect();
                o["aggregationRule"] = json!({"clusterRoleSelectors": selectors});
            }
            o
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let b = rbac::RoleBinding::decode(&raw[..]).map_err(|e| bad("RoleBinding", e))?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let b = rbac::ClusterRoleBinding::decode(&raw[..])
                .map_err(|e| bad("ClusterRoleBinding", e))?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let t = authn::TokenRequest::decode(&raw[..]).map_err(|e| bad("TokenRequest", e))?;
            let s = t.spec.unwrap_or_default();
            let mut spec = json!({"audiences": s.audiences});
            put(&mut spec, "expirationSeconds", s.expiration_seconds.map(|v| json!(v)));
            if let Some(b) = s.bound_object_ref {
                let mut r = json!({});
                put_str(&mut r, "kind", b.kind);
                put_str(&mut r, "apiVersion", b.api_version);
                put_str(&mut r, "name", b.name);
                put_str(&mut r, "uid", b.u_id);
                spec["boundObjectRef"] = r;
            }
            json!({"metadata": object_meta(t.metadata), "spec": spec})
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            let r = authn::SelfSubjectReview::decode(&raw[..])
                .map_err(|e| bad("SelfSubjectReview", e))?;
            json!({"metadata": object_meta(r.metadata)})
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let r = authz::SelfSubjectAccessReview::decode(&raw[..])
                .map_err(|e| bad("SelfSubjectAccessReview", e))?;
            let s = r.spec.unwrap_or_default();
            let mut spec = json!({});
            if let Some(a) = s.resource_attributes {
                let mut ra = json!({});
                put_str(&mut ra, "namespace", a.namespace);
                put_str(&mut ra, "verb", a.verb);
                put_str(&mut ra, "group", a.group);
                put_str(&mut ra, "version", a.version);
                put_str(&mut ra, "resource", a.resource);
                put_str(&mut ra, "subresource", a.subresource);
                put_str(&mut ra, "name", a.name);
                spec["resourceAttributes"] = ra;
            }
            if let Some(a) = s.non_resource_attributes {
                let mut na = json!({});
                put_str(&mut na, "path", a.path);
                put_str(&mut na, "verb", a.verb);
                spec["nonResourceAttributes"] = na;
            }
            json!({"metadata": object_meta(r.metadata), "spec": spec})
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            let r = authz::SelfSubjectRulesReview::decode(&raw[..])
                .map_err(|e| bad("SelfSubjectRulesReview", e))?;
            let mut spec = json!({});
            put_str(&mut spec, "namespace", r.spec.unwrap_or_default().namespace);
            json!({"metadata": object_meta(r.metadata), "spec": spec})
        }
        (_, "DeleteOptions") => {
            let d = meta::DeleteOptions::decode(&raw[..]).map_err(|e| bad("DeleteOptions", e))?;
            delete_options(d)
        }
        ("autoscaling/v1", "HorizontalPodAutoscaler") => {
            let h = autoscaling::HorizontalPodAutoscaler::decode(&raw[..])
                .map_err(|e| bad("HorizontalPodAutoscaler", e))?;
            let spec = h.spec.unwrap_or_default();
            let target = spec.scale_target_ref.unwrap_or_default();
            let mut target_json = json!({});
            put_str(&mut target_json, "apiVersion", target.api_version);
            put_str(&mut target_json, "kind", target.kind);
            put_str(&mut target_json, "name", target.name);
            let mut spec_json = json!({"scaleTargetRef": target_json});
            put(&mut spec_json, "minReplicas", spec.min_replicas.map(|v| json!(v)));
            put(&mut spec_json, "maxReplicas", spec.max_replicas.map(|v| json!(v)));
            put(
                &mut spec_json,
                "targetCPUUtilizationPercentage",
                spec.target_cpu_utilization_percentage.map(|v| json!(v)),
            );
            json!({"metadata": object_meta(h.metadata), "spec": spec_json})
        }
        _ => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf for {api_version} {kind}: send it as JSON (kubectl apply -f, or -o json | kubectl create -f -)"
            )))
        }
    };
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

fn put(obj: &mut Value, key: &str, v: Option<Value>) {
    if let (Some(v), Some(m)) = (v, obj.as_object_mut()) {
        m.insert(key.to_string(), v);
    }
}

/// Go's protobuf encoder writes every non-pointer string, empty or not: empty means unset.
fn put_str(obj: &mut Value, key: &str, v: Option<String>) {
    put(obj, key, v.filter(|s| !s.is_empty()).map(Value::String));
}

fn put_list<T>(obj: &mut Value, key: &str, items: Vec<T>, f: impl Fn(T) -> Value) {
    if !items.is_empty() {
        put(
            obj,
            key,
            Some(Value::Array(items.into_iter().map(f).collect())),
        );
    }
}

fn put_map(obj: &mut Value, key: &str, m: std::collections::BTreeMap<String, String>) {
    if !m.is_empty() {
        put(obj, key, Some(json!(m)));
    }
}

fn bytes_map(m: std::collections::BTreeMap<String, Vec<u8>>) -> Value {
    use base64::Engine;
    let out: Map<String, Value> = m
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    Value::Object(out)
}

fn object_meta(m: Option<meta::ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut o = json!({});
    put_str(&mut o, "name", m.name);
    put_str(&mut o, "generateName", m.generate_name);
    put_str(&mut o, "namespace", m.namespace);
    put_map(&mut o, "labels", m.labels);
    put_map(&mut o, "annotations", m.annotations);
    put_list(&mut o, "finalizers", m.finalizers, Value::String);
    put_list(&mut o, "ownerReferences", m.owner_references, |r| {
        let mut ro = json!({});
        put_str(&mut ro, "apiVersion", r.api_version);
        put_str(&mut ro, "kind", r.kind);
        put_str(&mut ro, "name", r.name);
        put_str(&mut ro, "uid", r.uid);
        put(&mut ro, "controller", r.controller.map(Value::Bool));
        put(
            &mut ro,
            "blockOwnerDeletion",
            r.block_owner_deletion.map(Value::Bool),
        );
        ro
    });
    o
}

fn pod_template(t: Option<core::PodTemplateSpec>) -> Option<Value> {
    let t = t?;
    Some(json!({
        "metadata": object_meta(t.metadata),
        "spec": pod_spec(t.spec.unwrap_or_default()),
    }))
}

fn job_spec(s: batch::JobSpec) -> Value {
    let mut o = json!({});
    let int = |v: Option<i32>| v.map(|v| json!(v));
    put(&mut o, "parallelism", int(s.parallelism));
    put(&mut o, "completions", int(s.completions));
    put(&mut o, "backoffLimit", int(s.backoff_limit));
    put(
        &mut o,
        "activeDeadlineSeconds",
        s.active_deadline_seconds.map(|v| json!(v)),
    );
    put(
        &mut o,
        "ttlSecondsAfterFinished",
        int(s.ttl_seconds_after_finished),
    );
    put(&mut o, "selector", label_selector(s.selector));
    put(&mut o, "manualSelector", s.manual_selector.map(Value::Bool));
    put_str(&mut o, "completionMode", s.completion_mode);
    put(&mut o, "suspend", s.suspend.map(Value::Bool));
    put(&mut o, "template", pod_template(s.template));
    o
}

fn cronjob_spec(s: batch::CronJobSpec) -> Value {
    let mut o = json!({});
    let int = |v: Option<i32>| v.map(|v| json!(v));
    put_str(&mut o, "schedule", s.schedule);
    put(&mut o, "timeZone", s.time_zone.map(Value::String));
    put(
        &mut o,
        "startingDeadlineSeconds",
        s.starting_deadline_seconds.map(|v| json!(v)),
    );
    put_str(&mut o, "concurrencyPolicy", s.concurrency_policy);
    put(&mut o, "suspend", s.suspend.map(Value::Bool));
    put(
        &mut o,
        "successfulJobsHistoryLimit",
        int(s.successful_jobs_history_limit),
    );
    put(
        &mut o,
        "failedJobsHistoryLimit",
        int(s.failed_jobs_history_limit),
    );
    if let Some(t) = s.job_template {
        put(
            &mut o,
            "jobTemplate",
            Some(json!({
                "metadata": object_meta(t.metadata),
                "spec": job_spec(t.spec.unwrap_or_default()),
            })),
        );
    }
    o
}

fn delete_options(d: meta::DeleteOptions) -> Value {
    let mut o = json!({});
    put(
        &mut o,
        "gracePeriodSeconds",
        d.grace_period_seconds.map(|v| json!(v)),
    );
    if let Some(p) = d.preconditions {
        let mut po = json!({});
        put_str(&mut po, "uid", p.uid);
        put_str(&mut po, "resourceVersion", p.resource_version);
        put(&mut o, "preconditions", Some(po));
    }
    put(
        &mut o,
        "orphanDependents",
        d.orphan_dependents.map(Value::Bool),
    );
    put_str(&mut o, "propagationPolicy", d.propagation_policy);
    put_list(&mut o, "dryRun", d.dry_run, Value::String);
    o
}

fn policy_rule(r: rbac::PolicyRule) -> Value {
    let mut o = json!({"verbs": r.verbs});
    put_list(&mut o, "apiGroups", r.api_groups, Value::String);
    put_list(&mut o, "resources", r.resources, Value::String);
    put_list(&mut o, "resourceNames", r.resource_names, Value::String);
    put_list(
        &mut o,
        "nonResourceURLs",
        r.non_resource_ur_ls,
        Value::String,
    );
    o
}

fn binding(
    metadata: Option<meta::ObjectMeta>,
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
) -> Value {
    let mut o = json!({"metadata": object_meta(metadata)});
    put_list(&mut o, "subjects", subjects, |s| {
        let mut v = json!({});
        put_str(&mut v, "kind", s.kind);
        // An empty apiGroup is meaningful (ServiceAccounts): keep what was sent.
        put(&mut v, "apiGroup", s.api_group.map(Value::String));
        put_str(&mut v, "name", s.name);
        put_str(&mut v, "namespace", s.namespace);
        v
    });
    let r = role_ref.unwrap_or_default();
    let mut rr = json!({});
    put_str(&mut rr, "apiGroup", r.api_group);
    put_str(&mut rr, "kind", r.kind);
    put_str(&mut rr, "name", r.name);
    o["roleRef"] = rr;
    o
}

fn label_selector(s: Option<meta::LabelSelector>) -> Option<Value> {
    let s = s?;
    let mut o = json!({});
    put_map(&mut o, "matchLabels", s.match_labels);
    put_list(
        &mut o,
        "matchExpressions",
        s.match_expressions,
        |e| json!({"key": e.key, "operator": e.operator, "values": e.values}),
    );
    Some(o)
}

fn int_or_string(v: k8s_pb::apimachinery::pkg::util::intstr::IntOrString) -> Value {
    match (v.r#type, v.int_val, v.str_val) {
        (Some(1), _, Some(s)) => json!(s),
        (_, Some(i), _) => json!(i),
        (_, _, Some(s)) => json!(s),
        _ => json!(0),
    }
}

fn quantities(
    m: std::collections::BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>,
) -> Value {
    let out: Map<String, Value> = m
        .into_iter()
        .map(|(k, q)| (k, json!(q.string.unwrap_or_default())))
        .collect();
    Value::Object(out)
}

fn container(c: core::Container) -> Value {
    let mut o = json!({});
    put_str(&mut o, "name", c.name);
    put_str(&mut o, "image", c.image);
    put_list(&mut o, "command", c.command, Value::String);
    put_list(&mut o, "args", c.args, Value::String);
    put_str(&mut o, "workingDir", c.working_dir);
    put_list(&mut o, "ports", c.ports, |p| {
        let mut po = json!({});
        put_str(&mut po, "name", p.name);
        put(&mut po, "containerPort", p.container_port.map(|v| json!(v)));
        put(
            &mut po,
            "hostPort",
            p.host_port.filter(|v| *v != 0).map(|v| json!(v)),
        );
        put_str(&mut po, "protocol", p.protocol);
        po
    });
    put_list(&mut o, "env", c.env, |e| {
        let mut eo = json!({});
        put_str(&mut eo, "name", e.name);
        put_str(&mut eo, "value", e.value);
        eo
    });
    if let Some(r) = c.resources {
        let mut ro = json!({});
        if !r.limits.is_empty() {
            ro["limits"] = quantities(r.limits);
        }
        if !r.requests.is_empty() {
            ro["requests"] = quantities(r.requests);
        }
        o["resources"] = ro;
    }
    put_str(&mut o, "imagePullPolicy", c.image_pull_policy);
    put(&mut o, "stdin", c.stdin.map(Value::Bool));
    put(&mut o, "tty", c.tty.map(Value::Bool));
    o
}

fn pod_spec(s: core::PodSpec) -> Value {
    let mut o = json!({});
    put_list(&mut o, "containers", s.containers, container);
    put_list(&mut o, "initContainers", s.init_containers, container);
    put_str(&mut o, "restartPolicy", s.restart_policy);
    put_map(&mut o, "nodeSelector", s.node_selector);
    put_str(&mut o, "serviceAccountName", s.service_account_name);
    put(
        &mut o,
        "terminationGracePeriodSeconds",
        s.termination_grace_period_seconds.map(|v| json!(v)),
    );
    o
}

fn deployment_spec(s: apps::DeploymentSpec) -> Value {
    let mut o = json!({});
    put(&mut o, "replicas", s.replicas.map(|v| json!(v)));
    put(&mut o, "selector", label_selector(s.selector));
    put(&mut o, "template", pod_template(s.template));
    if let Some(st) = s.strategy {
        let mut so = json!({});
        put_str(&mut so, "type", st.r#type);
        if let Some(ru) = st.rolling_update {
            let mut ro = json!({});
            put(
                &mut ro,
                "maxUnavailable",
                ru.max_unavailable.map(int_or_string),
            );
            put(&mut ro, "maxSurge", ru.max_surge.map(int_or_string));
            so["rollingUpdate"] = ro;
        }
        o["strategy"] = so;
    }
    put(
        &mut o,
        "minReadySeconds",
        s.min_ready_seconds.map(|v| json!(v)),
    );
    put(
        &mut o,
        "revisionHistoryLimit",
        s.revision_history_limit.map(|v| json!(v)),
    );
    put(&mut o, "paused", s.paused.map(Value::Bool));
    put(
        &mut o,
        "progressDeadlineSeconds",
        s.progress_deadline_seconds.map(|v| json!(v)),
    );
    o
}

fn service_spec(s: core::ServiceSpec) -> Value {
    let mut o = json!({});
    put_list(&mut o, "ports", s.ports, |p| {
        let mut po = json!({});
        put_str(&mut po, "name", p.name);
        put_str(&mut po, "protocol", p.protocol);
        put(&mut po, "port", p.port.map(|v| json!(v)));
        put(&mut po, "targetPort", p.target_port.map(int_or_string));
        put(
            &mut po,
            "nodePort",
            p.node_port.filter(|v| *v != 0).map(|v| json!(v)),
        );
        po
    });
    put_map(&mut o, "selector", s.selector);
    put_str(&mut o, "clusterIP", s.cluster_ip);
    put_str(&mut o, "type", s.r#type);
    put_str(&mut o, "externalName", s.external_name);
    put_list(&mut o, "externalIPs", s.external_ips, Value::String);
    put_str(&mut o, "sessionAffinity", s.session_affinity);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn deployment_from_the_generator_decodes() {
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(2),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: [("app".to_string(), "web".to_string())].into(),
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx:1".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let obj = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(obj["kind"], "Deployment");
        assert_eq!(obj["spec"]["replicas"], 2);
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1"
        );
        assert_eq!(obj["spec"]["selector"]["matchLabels"]["app"], "web");
    }

    #[test]
    fn garbage_is_a_bad_request_not_a_panic() {
        assert_eq!(decode(b"nope").unwrap_err().code.as_u16(), 400);
        assert_eq!(decode(b"k8s\0\xff\xff\xff").unwrap_err().code.as_u16(), 400);
        let other = envelope("apps/v1", "DaemonSet", vec![]);
        assert_eq!(decode(&other).unwrap_err().code.as_u16(), 415);
    }
}
