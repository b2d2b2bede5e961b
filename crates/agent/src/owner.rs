//! Whose pods the pod sync runs, and what it needs from them beside the runtime: where a
//! pod's status and Events go, where its ConfigMaps and Secrets come from, and what follows
//! once a deleted pod's containers are gone. A node agent's pods are the Kubernetes API's
//! ([`ApiOwner`]); the instances service, which runs container groups as pods of its own,
//! keeps the answers itself. ("Host" in Berth means a machine, or a Docker engine of the
//! instances pool; never this.)

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{json, Value};

use crate::runtime::PodRef;

/// Which kind of object a pod reads configuration from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::ConfigMap => "configmap",
            SourceKind::Secret => "secret",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("API call {operation} failed")]
    Api {
        operation: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// The pod sync's view of everything that is not the runtime.
#[async_trait::async_trait]
pub trait PodOwner: Send + Sync + 'static {
    /// Publish a pod's status (the whole `status` object).
    async fn write_status(&self, pod: &PodRef, status: &Value) -> Result<(), OwnerError>;

    /// Record an Event about a pod; best effort, never fails the caller.
    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String);

    /// The data of a ConfigMap or Secret as bytes by key; `None` when it does not exist.
    async fn source(
        &self,
        namespace: &str,
        kind: SourceKind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, OwnerError>;

    /// Everything of a deleting pod has been stopped and removed.
    async fn deleted(&self, pod: &PodRef) -> Result<(), OwnerError>;

    /// A token of the pod's ServiceAccount, bound to the pod, for `audience` (the API's when
    /// None), valid for about `seconds`; or why there is none here.
    async fn service_account_token(
        &self,
        _pod: &Pod,
        _audience: Option<&str>,
        _seconds: i64,
    ) -> Result<Result<String, String>, OwnerError> {
        Ok(Err(
            "serviceAccountToken projections (ServiceAccount tokens are not served here)".into(),
        ))
    }

    /// Where the volume bound to a PersistentVolumeClaim lives on this host, or why it cannot
    /// be mounted yet.
    async fn claim_path(
        &self,
        _namespace: &str,
        claim: &str,
    ) -> Result<Result<std::path::PathBuf, String>, OwnerError> {
        Ok(Err(format!(
            "persistentVolumeClaim {claim:?}: claims are not served here"
        )))
    }
}

/// A node agent's pods' owner: the Kubernetes API, with the node's credentials.
pub struct ApiOwner {
    pub client: kube::Client,
    pub node: String,
}

#[async_trait::async_trait]
impl PodOwner for ApiOwner {
    async fn write_status(&self, r: &PodRef, status: &Value) -> Result<(), OwnerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &r.namespace);
        let patch = Patch::Merge(json!({ "status": status }));
        match api
            .patch_status(&r.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(OwnerError::Api {
                operation: "patch pod status",
                source,
            }),
        }
    }

    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String) {
        let about = berth_core::events::Involved {
            api_version: "v1",
            kind: "Pod",
            namespace: &pod.namespace,
            name: &pod.name,
            uid: &pod.uid,
        };
        let mut ev =
            berth_core::events::event(about, type_, reason, &message, "kubelet", Timestamp::now());
        ev["source"]["host"] = json!(self.node);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        tokio::spawn(async move {
            let Ok(ev) = serde_json::from_value(ev) else {
                return;
            };
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "could not record an event");
            }
        });
    }

    async fn source(
        &self,
        ns: &str,
        kind: SourceKind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, OwnerError> {
        let failed = |source| OwnerError::Api {
            operation: "read configuration",
            source,
        };
        Ok(match kind {
            SourceKind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(failed)?
                .map(|cm| {
                    let mut out: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    out.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    out
                }),
            SourceKind::Secret => Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(failed)?
                .map(|s| {
                    let mut out: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    out.extend(
                        s.string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    out
                }),
        })
    }

    async fn deleted(&self, r: &PodRef) -> Result<(), OwnerError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &r.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(r.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&r.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(source) => Err(OwnerError::Api {
                operation: "delete pod",
                source,
            }),
        }
    }

    async fn service_account_token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<Result<String, String>, OwnerError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let mut spec = json!({"expirationSeconds": seconds, "boundObjectRef": {
            "kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid}});
        if let Some(a) = audience {
            spec["audiences"] = json!([a]);
        }
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": spec});
        let req = http::Request::post(format!(
            "/api/v1/namespaces/{ns}/serviceaccounts/{account}/token"
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("JSON"))
        .expect("a valid request");
        match self.client.request::<Value>(req).await {
            Ok(answer) => Ok(answer
                .pointer("/status/token")
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| "the TokenRequest came back without a token".to_string())),
            // The account is missing or the request refused: the pod cannot start yet.
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => Ok(Err(format!(
                "a token for ServiceAccount {ns}/{account}: {}",
                e.message
            ))),
            Err(source) => Err(OwnerError::Api {
                operation: "request a ServiceAccount token",
                source,
            }),
        }
    }

    async fn claim_path(
        &self,
        ns: &str,
        claim: &str,
    ) -> Result<Result<std::path::PathBuf, String>, OwnerError> {
        let failed = |source| OwnerError::Api {
            operation: "read a volume claim",
            source,
        };
        let pvc = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .get_opt(claim)
            .await
            .map_err(failed)?;
        let Some(pvc) = pvc else {
            return Ok(Err(format!("persistentvolumeclaim {claim:?} not found")));
        };
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty());
        let (true, Some(volume)) = (bound, volume) else {
            return Ok(Err(format!(
                "persistentvolumeclaim {claim:?} is not bound yet"
            )));
        };
        let pv = Api::<PersistentVolume>::all(self.client.clone())
            .get_opt(&volume)
            .await
            .map_err(failed)?;
        let spec = pv.and_then(|pv| pv.spec).unwrap_or_default();
        // A local volume lives on the nodes its affinity names by hostname: not elsewhere.
        let hosts: Vec<Vec<String>> = spec
            .node_affinity
            .as_ref()
            .and_then(|a| a.required.as_ref())
            .map(|r| {
                r.node_selector_terms
                    .iter()
                    .filter_map(|t| {
                        t.match_expressions
                            .iter()
                            .flatten()
                            .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
                    })
                    .map(|e| e.values.clone().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        if !hosts.is_empty() && !hosts.iter().flatten().any(|h| *h == self.node) {
            return Ok(Err(format!(
                "persistentvolume {volume:?} is on node {:?}, not this one",
                hosts.concat().join(",")
            )));
        }
        let path = spec
            .host_path
            .map(|h| h.path)
            .or(spec.local.map(|l| l.path));
        Ok(path.map(std::path::PathBuf::from).ok_or_else(|| {
            format!("persistentvolume {volume:?} is neither a hostPath nor a local volume")
        }))
    }
}
