//! The registry: Kubernetes' REST semantics over the store, with no HTTP in sight.
//!
//! ```text
//!  handler ─▶ Registry::{create, update, patch, delete, get, list, watch}
//!               │ check type and namespace ─▶ decode against the schema (typed)
//!               │ system fields (uid, creationTimestamp, generation, deletionTimestamp)
//!               │ status split ─▶ defaults ─▶ kind hooks (service IPs, namespaces)
//!               │ validate ─▶ Store (compare-and-swap on resourceVersion)
//! ```
//!
//! Objects are stored as JSON without `resourceVersion`; it is the key's `mod_revision` and
//! is put back on every read, as Kubernetes does over etcd.

mod custom;
mod delete;
mod eviction;
mod list;
mod managed;
pub(crate) mod mirror;
mod namespace;
pub mod peers;
mod service;
pub use service::{is_system_address, KUBERNETES_IP};
pub mod service_account;
mod subresource;

use std::sync::Arc;

use berth_core::custom::Catalog;
use berth_core::kinds::{self, convert};
use berth_core::patch;
use berth_core::resources::{self, Kind, Resource};
use berth_core::schema;
use berth_core::typed;
use berth_store::{KeyValue, Revision, Store, StoreError};
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::status::ApiError;

pub use delete::DeleteOptions;
pub use list::{ListParams, ListResult, WatchEvent};

/// How strictly unknown fields are treated (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter {other:?} is not supported: use Ignore, Warn or Strict"
            ))),
        }
    }
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub field_manager: Option<String>,
    /// An apply takes over the fields it conflicts on (`force=true`).
    pub force: bool,
    /// The client's `User-Agent`, which names the manager of a write without `fieldManager`.
    pub user_agent: Option<String>,
    /// A last check of the object exactly as it would be stored (defaulted, validated, after
    /// any patch or apply), run before every store write of this request: the authorizer's
    /// escalation check.
    pub admit: Option<Admit>,
}

/// See [`WriteOptions::admit`].
#[derive(Clone)]
pub struct Admit(pub std::sync::Arc<dyn Fn(&Value) -> Result<(), ApiError> + Send + Sync>);

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admit(..)")
    }
}

impl WriteOptions {
    fn admit(&self, obj: &Value) -> Result<(), ApiError> {
        match &self.admit {
            Some(check) => (check.0)(obj),
            None => Ok(()),
        }
    }
}

impl WriteOptions {
    /// Who this write's fields belong to.
    pub fn manager(&self) -> String {
        match self.field_manager.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => managed::manager_from_user_agent(self.user_agent.as_deref()),
        }
    }
}

/// The top-level fields a write to `part` of `res` leaves to the other endpoint (and whose
/// ownership it does not track).
fn reset_fields(res: &Resource, part: Part) -> &'static [&'static str] {
    match (res.status, part) {
        (true, Part::Main) => &["status"],
        (true, Part::Status) => &["spec"],
        (false, _) => &[],
    }
}

/// The result of a write: the object as stored, whether it was created, and warnings for
/// the `Warning` header.
#[derive(Debug)]
pub struct Outcome {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// The patch formats (`Content-Type` of a PATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: status changes are ignored where a status subresource exists.
    Main,
    /// The `status` subresource: only status changes are kept.
    Status,
}

#[derive(Clone)]
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    /// Serialises allocation of service cluster IPs and node ports.
    alloc: Arc<tokio::sync::Mutex<()>>,
    /// Namespace name -> terminating, kept from a watch (as Kubernetes' namespace lifecycle
    /// admission keeps an informer), so creates need not read the store. A miss reads it.
    namespaces: Arc<std::sync::RwLock<std::collections::HashMap<String, bool>>>,
    /// The kinds CustomResourceDefinitions add, kept from a watch on the definitions.
    pub custom: Arc<Catalog>,
}

/// The current time, to the second, as Kubernetes writes timestamps.
pub(crate) fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .expect("now is in range")
        .to_string()
}

fn meta(obj: &Value, field: &str) -> Option<Value> {
    obj.get("metadata").and_then(|m| m.get(field)).cloned()
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub(crate) fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn rv_of(obj: &Value) -> Option<Revision> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// The stored value with `resourceVersion` restored.
pub(crate) fn from_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    read_kv(kv, false)
}

/// The stored value with `resourceVersion` restored, without its managedFields if `omit_managed`.
pub(crate) fn read_kv(kv: &KeyValue, omit_managed: bool) -> Result<Value, ApiError> {
    let mut obj = parse_value(&kv.value, omit_managed)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(obj)
}

/// A stored value, without its managedFields if `omit_managed`.
pub(crate) fn parse_value(bytes: &[u8], omit_managed: bool) -> serde_json::Result<Value> {
    if omit_managed {
        berth_core::stored::parse_omitting_managed(bytes)
    } else {
        serde_json::from_slice(bytes)
    }
}

fn to_bytes(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    serde_json::to_vec(&obj).expect("a JSON value serializes")
}

/// Everything of an object except metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

/// Kinds that `PUT` may create (Kubernetes' `AllowCreateOnUpdate`).
fn create_on_update(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Endpoints | Kind::EndpointSlice | Kind::Event | Kind::Lease
    )
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char)
        .collect()
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Registry {
            store,
            alloc: Arc::new(tokio::sync::Mutex::new(())),
            namespaces: Arc::default(),
            custom: Arc::default(),
        }
    }

    /// The resource `served`'s objects are stored as: itself, or the version of its kind
    /// the store keeps (an older version served beside, a custom kind's storage version).
    pub fn storage_of(&self, served: &Resource) -> Result<&'static Resource, ApiError> {
        if served.kind == Kind::Custom {
            return self.custom.of(served).map(|c| c.storage).ok_or_else(|| {
                ApiError::path_not_found(&format!(
                    "{}: its CustomResourceDefinition is gone",
                    served.qualified()
                ))
            });
        }
        Ok(resources::of_kind(served.kind))
    }

    /// Every check of `obj` before it is stored (over `old`, on an update): its kind's
    /// rules, a custom kind's schema.
    fn validate(
        &self,
        res: &Resource,
        obj: &Value,
        old: Option<&Value>,
    ) -> Vec<berth_core::FieldError> {
        let mut errs = kinds::validate(res, obj);
        if res.kind == Kind::Custom {
            if let Some(c) = self.custom.of(res) {
                errs.extend(berth_core::schema::validate(&c.schema, obj, old));
            }
        }
        errs
    }

    /// The store underneath (for the health check and the benchmark).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) async fn get_kv(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<KeyValue>, ApiError> {
        self.store
            .get(&res.key(ns, name))
            .await
            .map_err(|e| ApiError::from_store(res, name, e))
    }

    pub async fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        match self.get_kv(res, ns, name).await? {
            Some(kv) => from_kv(&kv),
            None => Err(ApiError::not_found(res, name)),
        }
    }

    /// Check `apiVersion`, `kind` and namespace of a body against the request, decode it
    /// against the schema, and return it in canonical form.
    fn admit_body(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut body: Value,
        validation: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value, ApiError> {
        let Some(map) = body.as_object_mut() else {
            return Err(ApiError::bad_request(format!(
                "the body of a {} must be a JSON object",
                res.kind_name
            )));
        };
        let want_version = res.api_version();
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), json!(want_version));
            }
            Some(v) if v == want_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({want_version})"
                )))
            }
        }
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), json!(res.kind_name));
            }
            Some(k) if k == res.kind_name => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({}); post it to its own resource path",
                    res.kind_name
                )))
            }
        }
        let m = meta_mut(&mut body);
        if res.namespaced {
            let url_ns = ns.unwrap_or("default");
            match m.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(url_ns));
                }
                Some(n) if n == url_ns => {}
                Some(n) => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({n}) does not match the namespace sent on the request ({url_ns})"
                    )))
                }
            }
        } else {
            m.remove("namespace");
        }
        let decoded = typed::decode(res.kind, body).map_err(|e| {
            let name = String::new();
            if e.reason == berth_core::validation::Reason::TypeInvalid {
                ApiError::bad_request(format!(
                    "{} in body: {}: {}",
                    res.kind_name, e.path, e.detail
                ))
            } else {
                ApiError::invalid(res, &name, &[e])
            }
        })?;
        let mut decoded = decoded;
        if res.kind == Kind::Custom {
            // The definition's schema: unknown fields pruned, defaults filled in.
            let custom = self.custom.of(res).ok_or_else(|| {
                ApiError::path_not_found(&format!(
                    "{}: its CustomResourceDefinition is gone",
                    res.qualified()
                ))
            })?;
            decoded.unknown_fields = schema::prune(&custom.schema, &mut decoded.object);
            schema::default(&custom.schema, &mut decoded.object);
        }
        if !decoded.unknown_fields.is_empty() {
            let msgs: Vec<String> = decoded
                .unknown_fields
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            match validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )))
                }
                FieldValidation::Warn => warnings.extend(msgs),
                FieldValidation::Ignore => {}
            }
        }
        Ok(decoded.object)
    }

    /// `POST`: create an object.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Outcome, ApiError> {
        self.create_inner(res, ns, body, opts, false).await
    }

    /// Create; `applied`: the body is an apply's result and carries its managedFields.
    async fn create_inner(
        &self,
        res: &Resource,
        ns: Option<&str>,
        body: Value,
        opts: &WriteOptions,
        applied: bool,
    ) -> Result<Outcome, ApiError> {
        let mut warnings = Vec::new();
        let mut obj = self.admit_body(res, ns, body, opts.validation, &mut warnings)?;
        let m = meta_mut(&mut obj);
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            if let Some(prefix) = m.get("generateName").and_then(Value::as_str) {
                let name = format!("{prefix}{}", generate_suffix());
                m.insert("name".into(), json!(name));
            }
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
        if res.generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        // Status is the system's to write, except where the writer is the status's owner
        // from the start (a node registering itself).
        if res.status && res.kind != Kind::Node {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        kinds::default(res.kind, &mut obj);
        let ns_name = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        if res.namespaced {
            self.check_namespace_open(res, ns_name.as_deref().unwrap_or("default"), name_of(&obj))
                .await?;
        }
        if res.kind == Kind::Pod {
            service_account::admit_pod(self, &mut obj).await?;
        }
        let errs = self.validate(res, &obj, None);
        if !errs.is_empty() {
            return Err(ApiError::invalid(res, name_of(&obj), &errs));
        }
        opts.admit(&obj)?;
        let _alloc_guard;
        if res.kind == Kind::Service {
            _alloc_guard = self.alloc.lock().await;
            service::allocate_and_claim(self, &mut obj, None, opts.dry_run).await?;
        }
        if !applied {
            let (manager, api_version, time) = (opts.manager(), res.api_version(), now());
            managed::on_create(
                &mut obj,
                &managed::Writer {
                    manager: &manager,
                    api_version: &api_version,
                    subresource: None,
                    reset: reset_fields(res, Part::Main),
                    now: &time,
                },
            );
        }
        let name = name_of(&obj).to_string();
        if opts.dry_run {
            return Ok(Outcome {
                object: obj,
                created: true,
                warnings,
            });
        }
        let created = self
            .store
            .create(&res.key(ns_name.as_deref(), &name), to_bytes(&obj))
            .await;
        if created.is_err() && res.kind == Kind::Service {
            service::release(self, &obj, None).await;
        }
        let kv = created.map_err(|e| ApiError::from_store(res, &name, e))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        Ok(Outcome {
            object: obj,
            created: true,
            warnings,
        })
    }

    /// `PUT`: replace an object (or its status), honouring a `resourceVersion` precondition.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        body: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Outcome, ApiError> {
        let body_name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let current = self.get_kv(res, ns, name).await?;
        let Some(current) = current else {
            if create_on_update(res.kind) && part == Part::Main {
                return self.create(res, ns, body, opts).await;
            }
            return Err(ApiError::not_found(res, name));
        };
        let mut warnings = Vec::new();
        let new = self.admit_body(res, ns, body, opts.validation, &mut warnings)?;
        if let Some(rv) = rv_of(&new) {
            if rv != current.mod_revision {
                return Err(ApiError::modified(res, name));
            }
        }
        let mut out = self
            .write_update(res, &current, new, part, opts, false)
            .await?;
        out.warnings = warnings;
        Ok(out)
    }

    /// Carry system fields over from `current`, apply defaults and validation, and write
    /// `new` if anything changed.
    pub(crate) async fn write_update(
        &self,
        res: &Resource,
        current: &KeyValue,
        mut new: Value,
        part: Part,
        opts: &WriteOptions,
        applied: bool,
    ) -> Result<Outcome, ApiError> {
        let old = from_kv(current)?;
        let name = name_of(&old).to_string();
        if part == Part::Status {
            // Only status changes, and annotations as Kubernetes' status strategies allow
            // (the deployment controller writes its revision annotation this way, so that
            // `generation` stays put); everything else stays as stored.
            let status = new.get("status").cloned();
            let annotations = new.pointer("/metadata/annotations").cloned();
            let applied_fields = new.pointer("/metadata/managedFields").cloned();
            new = old.clone();
            if let (true, Some(m)) = (applied, applied_fields) {
                meta_mut(&mut new).insert("managedFields".into(), m);
            }
            match annotations {
                Some(a) => {
                    meta_mut(&mut new).insert("annotations".into(), a);
                }
                None => {
                    meta_mut(&mut new).remove("annotations");
                }
            }
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        } else if res.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        {
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match meta(&old, f) {
                    Some(v) => m.insert(f.into(), v),
                    None => m.remove(f),
                };
            }
            m.remove("selfLink");
        }
        kinds::default(res.kind, &mut new);
        if !applied {
            let (manager, api_version, time) = (opts.manager(), res.api_version(), now());
            managed::on_update(
                &old,
                &mut new,
                &managed::Writer {
                    manager: &manager,
                    api_version: &api_version,
                    subresource: (part == Part::Status).then_some("status"),
                    reset: reset_fields(res, part),
                    now: &time,
                },
            )?;
        }
        if res.generation && part != Part::Status {
            let mut changed = spec_part(&old) != spec_part(&new);
            if res.kind == Kind::Deployment {
                changed |= meta(&old, "annotations") != meta(&new, "annotations");
            }
            if changed {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                meta_mut(&mut new).insert("generation".into(), json!(g + 1));
            }
        }
        let mut errs = self.validate(res, &new, Some(&old));
        errs.extend(kinds::validate_update(res, &old, &new));
        if !errs.is_empty() {
            return Err(ApiError::invalid(res, &name, &errs));
        }
        opts.admit(&new)?;
        let _alloc_guard;
        if res.kind == Kind::Service {
            _alloc_guard = self.alloc.lock().await;
            service::allocate_and_claim(self, &mut new, Some(&old), opts.dry_run).await?;
        }
        meta_mut(&mut new).insert(
            "resourceVersion".into(),
            json!(current.mod_revision.to_string()),
        );
        // A write that changes nothing is not a write: resourceVersion stays.
        if new == old || opts.dry_run {
            return Ok(Outcome {
                object: new,
                created: false,
                warnings: Vec::new(),
            });
        }
        // The last finalizer gone from an object being deleted: it goes now.
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers_empty
            && delete::finalizers_done(res, &new)
        {
            let kv = self
                .store
                .delete(&current.key, Some(current.mod_revision))
                .await
                .map_err(|e| ApiError::from_store(res, &name, e))?;
            meta_mut(&mut new).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
            return Ok(Outcome {
                object: new,
                created: false,
                warnings: Vec::new(),
            });
        }
        let updated = self
            .store
            .update(&current.key, to_bytes(&new), current.mod_revision)
            .await;
        if res.kind == Kind::Service {
            // What the write gave up, or what the failed write had claimed.
            match &updated {
                Ok(_) => service::release(self, &old, Some(&new)).await,
                Err(_) => service::release(self, &new, Some(&old)).await,
            }
        }
        let kv = updated.map_err(|e| ApiError::from_store(res, &name, e))?;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        Ok(Outcome {
            object: new,
            created: false,
            warnings: Vec::new(),
        })
    }

    /// `PATCH`: apply a patch to the stored object and write it, retrying on a concurrent
    /// write unless the patch itself pins a `resourceVersion`.
    #[allow(clippy::too_many_arguments)]
    /// `PATCH`: apply a patch written in `served`'s version. For an older version served
    /// beside the stored one (`resources::ALSO_SERVED`) the patch applies to the object as
    /// that version shows it, and the result is stored converted back; the answer is in the
    /// storage version, like every other registry call's.
    pub async fn patch(
        &self,
        served: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        part: Part,
        opts: &WriteOptions,
    ) -> Result<Outcome, ApiError> {
        let res = self.storage_of(served)?;
        // Only a resourceVersion the patch itself names is a precondition; the one the
        // patched object carries is just the stored one, and a write that loses a race with
        // another is retried on the newer object, as Kubernetes does.
        let pinned_by_patch = match kind {
            PatchType::Json => body.as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|op| op.get("path") == Some(&json!("/metadata/resourceVersion")))
            }),
            _ => body.pointer("/metadata/resourceVersion").is_some(),
        };
        for _ in 0..8 {
            let (manager, api_version, time) = (opts.manager(), res.api_version(), now());
            let writer = managed::Writer {
                manager: &manager,
                api_version: &api_version,
                subresource: (part == Part::Status).then_some("status"),
                reset: reset_fields(res, part),
                now: &time,
            };
            let Some(current) = self.get_kv(res, ns, name).await? else {
                if kind == PatchType::Apply && part == Part::Main {
                    let mut obj = managed::on_apply(&Value::Null, body, &writer, opts.force)?;
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    return self.create_inner(res, ns, obj, opts, true).await;
                }
                return Err(ApiError::not_found(res, name));
            };
            let mut obj = convert::from_storage(served, from_kv(&current)?);
            if kind == PatchType::Apply {
                obj = managed::on_apply(&obj, body, &writer, opts.force)?;
            } else {
                apply_patch(&mut obj, kind, body)?;
            }
            let obj = convert::to_storage(served, res, obj)
                .map_err(|e| ApiError::unconvertible(served, name, e))?;
            let mut warnings = Vec::new();
            let obj = self.admit_body(res, ns, obj, opts.validation, &mut warnings)?;
            if name_of(&obj) != name {
                return Err(ApiError::bad_request(format!(
                    "the patch may not change metadata.name (from {name} to {})",
                    name_of(&obj)
                )));
            }
            let pinned = rv_of(&obj);
            if pinned.is_some_and(|rv| rv != current.mod_revision) {
                return Err(ApiError::modified(res, name));
            }
            let applied = kind == PatchType::Apply;
            match self
                .write_update(res, &current, obj, part, opts, applied)
                .await
            {
                Err(e) if e.reason == "Conflict" && !pinned_by_patch => continue,
                Ok(mut out) => {
                    out.warnings = warnings;
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// Refuse new objects in a namespace that is missing or terminating.
    async fn check_namespace_open(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let nsres = resources::of_kind(Kind::Namespace);
        let cached = self
            .namespaces
            .read()
            .expect("namespace cache")
            .get(ns)
            .copied();
        let terminating = match cached {
            Some(terminating) => terminating,
            // Not seen by the watch yet (or the cache is rebuilding): ask the store.
            None => match self.get_kv(nsres, None, ns).await? {
                None => return Err(ApiError::not_found(nsres, ns)),
                Some(kv) => from_kv(&kv)?
                    .pointer("/metadata/deletionTimestamp")
                    .is_some(),
            },
        };
        if terminating {
            return Err(ApiError::forbidden(format!(
                "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                res.qualified()
            )));
        }
        Ok(())
    }

    /// Create the Services every cluster has, if they are missing.
    pub async fn ensure_system_services(
        &self,
        api: std::net::SocketAddr,
        api_ip: std::net::Ipv4Addr,
        cluster_dns: std::net::Ipv4Addr,
    ) -> Result<(), ApiError> {
        service::ensure_system(self, api, api_ip, cluster_dns).await
    }

    /// Move what an earlier Berth stored under its own key layout
    /// ([`Resource::legacy_key_prefix`]) to Kubernetes' ([`Resource::key_prefix`]), once per
    /// store (a marker key records it), before anything else reads or writes. Objects keep
    /// their contents; they get new resourceVersions. Only for a store one server opens (a
    /// SQLite file): it does not guard against another server moving keys at once.
    pub async fn adopt_kubernetes_layout(&self) -> Result<(), ApiError> {
        const DONE: &str = "/registry/berth/layout";
        let failed = |what: &str, e: StoreError| {
            ApiError::internal(format!(
                "moving stored objects to Kubernetes' key layout: {what}: {e}"
            ))
        };
        if self
            .store
            .get(DONE)
            .await
            .map_err(|e| failed(DONE, e))?
            .is_some()
        {
            return Ok(());
        }
        let mut moved = 0usize;
        for res in resources::RESOURCES {
            let (old, new) = (res.legacy_key_prefix(), res.key_prefix());
            if old == new {
                // CustomResourceDefinitions: where they always were.
                continue;
            }
            loop {
                let page = self
                    .store
                    .list(
                        &old,
                        berth_store::ListOptions {
                            start_after: None,
                            limit: Some(500),
                        },
                    )
                    .await
                    .map_err(|e| failed(&old, e))?;
                if page.items.is_empty() {
                    break;
                }
                for kv in page.items {
                    let to = format!("{new}{}", &kv.key[old.len()..]);
                    match self.store.create(&to, kv.value.to_vec()).await {
                        Ok(_) => {}
                        // Moved by a start that stopped half-way: the same value is there.
                        Err(StoreError::AlreadyExists { .. }) => {
                            let there = self.store.get(&to).await.map_err(|e| failed(&to, e))?;
                            if there.is_none_or(|t| t.value != kv.value) {
                                return Err(ApiError::internal(format!(
                                    "moving stored objects to Kubernetes' key layout: {to} already holds something else than {}; remove one of them",
                                    kv.key
                                )));
                            }
                        }
                        Err(e) => return Err(failed(&to, e)),
                    }
                    match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => moved += 1,
                        Err(e) => return Err(failed(&kv.key, e)),
                    }
                }
            }
        }
        match self.store.create(DONE, b"kubernetes".to_vec()).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(failed(DONE, e)),
        }
        if moved > 0 {
            tracing::info!(moved, "moved stored objects to Kubernetes' key layout");
        }
        Ok(())
    }

    /// Create the namespaces every cluster starts with, if they are missing.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let nsres = resources::of_kind(Kind::Namespace);
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self
                .create(nsres, None, body, &WriteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        // The built-in default StorageClass, unless someone removed or replaced it before.
        let classes = resources::of_kind(Kind::StorageClass);
        if self
            .list(classes, None, &ListParams::default())
            .await?
            .items
            .is_empty()
        {
            let class = berth_core::kinds::storage::local_path_class();
            match self
                .create(classes, None, class, &WriteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        namespace::resume_terminating(self).await?;
        custom::spawn(self.clone()).await?;
        namespace::spawn_cache(self.clone(), self.namespaces.clone()).await
    }
}

/// Apply a patch of the given type to a JSON object.
pub fn apply_patch(obj: &mut Value, kind: PatchType, body: &Value) -> Result<(), ApiError> {
    let bad =
        |e: patch::PatchError| ApiError::bad_request(berth_core::error::Chain(&e).to_string());
    match kind {
        PatchType::Json => patch::json_patch(obj, body).map_err(bad),
        PatchType::Merge => patch::merge_patch(obj, body).map_err(bad),
        PatchType::Strategic | PatchType::Apply => patch::strategic_merge(obj, body).map_err(bad),
    }
}

/// Map a store error for a list or watch (no single object named).
pub(crate) fn store_err(res: &Resource, e: StoreError) -> ApiError {
    ApiError::from_store(res, "", e)
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use berth_store::{SqliteOptions, SqliteStore};

    /// A store an earlier Berth wrote (`/registry/<group|core>/<plural>/...`) is moved to
    /// Kubernetes' layout once: every object is readable at its new key with the same
    /// contents, nothing is left at the old ones, and definitions stay where they were.
    #[tokio::test]
    async fn objects_stored_under_the_earlier_layout_move_once_and_keep_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).unwrap());
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "a", "namespace": "default", "uid": "u1"},
                        "data": {"k": "v"}});
        let svc = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "s", "namespace": "default", "uid": "u2"}});
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1",
                         "kind": "CustomResourceDefinition", "metadata": {"name": "x.e.com"}});
        let old = [
            ("/registry/core/configmaps/default/a", &cm),
            ("/registry/core/services/default/s", &svc),
            (
                "/registry/apiextensions.k8s.io/customresourcedefinitions/x.e.com",
                &crd,
            ),
        ];
        for (k, v) in old {
            store.create(k, v.to_string().into_bytes()).await.unwrap();
        }
        let reg = Registry::new(store.clone());
        reg.adopt_kubernetes_layout().await.unwrap();
        let read = |k: &'static str| {
            let store = store.clone();
            async move {
                store
                    .get(k)
                    .await
                    .unwrap()
                    .map(|kv| serde_json::from_slice::<Value>(&kv.value).unwrap())
            }
        };
        assert_eq!(read("/registry/configmaps/default/a").await, Some(cm));
        assert_eq!(read("/registry/services/specs/default/s").await, Some(svc));
        assert_eq!(
            read("/registry/apiextensions.k8s.io/customresourcedefinitions/x.e.com").await,
            Some(crd)
        );
        assert_eq!(read("/registry/core/configmaps/default/a").await, None);
        assert_eq!(read("/registry/core/services/default/s").await, None);
        let served = reg
            .get(resources::of_kind(Kind::ConfigMap), Some("default"), "a")
            .await
            .unwrap();
        assert_eq!(served["data"]["k"], "v");

        // Once: a second start moves nothing, even what looks old.
        store
            .create("/registry/core/configmaps/default/late", b"{}".to_vec())
            .await
            .unwrap();
        reg.adopt_kubernetes_layout().await.unwrap();
        assert!(read("/registry/core/configmaps/default/late")
            .await
            .is_some());
    }
}
