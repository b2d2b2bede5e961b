//! Volumes that outlive pods: binding PersistentVolumeClaims to PersistentVolumes, and the
//! built-in local-path provisioner.
//!
//! A claim that names no class gets the default one. A claim is bound to a volume made for it
//! in advance (`spec.volumeName`), else to the smallest Available volume of its class that
//! fits, else, for a class of the local-path provisioner, to a volume provisioned for it: a
//! directory on the node of the first pod that uses the claim (`WaitForFirstConsumer`),
//! created by that node's agent when the pod starts, with a node affinity so every later pod
//! of the claim goes back to that node. A volume whose claim is gone is Released and, under
//! the `Delete` reclaim policy, deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_core::kinds::storage::DEFAULT_CLASS;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::api_err;
use crate::events::{involved_in, record};
use crate::status::write_status;
use crate::{Context, Error};

const COMPONENT: &str = "persistentvolume-controller";
pub use berth_core::kinds::storage::{LOCAL_PATH, LOCAL_PATH_DIR};
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The built-in default StorageClass.
pub fn local_path_class() -> StorageClass {
    serde_json::from_value(berth_core::kinds::storage::local_path_class())
        .expect("a valid StorageClass")
}

/// What to do for one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing (bound, or waiting for a consumer or a volume).
    Wait(Option<String>),
    /// Set the claim's class to this (the default).
    SetClass(String),
    /// Bind to this existing volume.
    Bind(String),
    /// Provision a volume on this node, then bind to it.
    Provision { node: String },
}

fn storage_of(
    q: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> u64 {
    q.get("storage")
        .and_then(|q| berth_core::quantity::bytes(&q.0))
        .unwrap_or(0)
}

/// Decide one claim, given every volume and class, and the node of a scheduled pod that uses
/// it (if any).
pub fn plan(
    claim: &PersistentVolumeClaim,
    volumes: &[PersistentVolume],
    classes: &[StorageClass],
    consumer_node: Option<&str>,
) -> Step {
    let spec = claim.spec.clone().unwrap_or_default();
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound || claim.metadata.deletion_timestamp.is_some() {
        return Step::Wait(None);
    }
    let Some(class_name) = spec.storage_class_name.clone() else {
        let default = classes.iter().find(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS))
                .is_some_and(|v| v == "true")
        });
        return match default {
            Some(c) => Step::SetClass(c.metadata.name.clone().unwrap_or_default()),
            None => Step::Wait(Some(
                "no storage class is set and there is no default".into(),
            )),
        };
    };
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    // A volume reserved for this claim: by uid, or (made before the claim) by name.
    let claims_it = |v: &PersistentVolume| {
        v.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| match r.uid.as_deref() {
                Some(u) => u == uid,
                None => r.name == claim.metadata.name && r.namespace == claim.metadata.namespace,
            })
    };
    if let Some(name) = spec.volume_name.as_ref().filter(|n| !n.is_empty()) {
        return match volumes
            .iter()
            .find(|v| v.metadata.name.as_ref() == Some(name))
        {
            Some(v) if v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) || claims_it(v) => {
                Step::Bind(name.clone())
            }
            Some(_) => Step::Wait(Some(format!("volume {name:?} is bound to another claim"))),
            None => Step::Wait(Some(format!("volume {name:?} does not exist"))),
        };
    }
    // A volume already made for this claim (a pass that stopped half-way).
    if let Some(v) = volumes.iter().find(|v| claims_it(v)) {
        return Step::Bind(v.metadata.name.clone().unwrap_or_default());
    }
    let want = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(storage_of)
        .unwrap_or(0);
    let modes = spec.access_modes.clone().unwrap_or_default();
    let fitting = volumes
        .iter()
        .filter(|v| {
            let s = v.spec.clone().unwrap_or_default();
            s.claim_ref.is_none()
                && s.storage_class_name.as_deref().unwrap_or("") == class_name
                && s.capacity.as_ref().map(storage_of).unwrap_or(0) >= want
                && modes
                    .iter()
                    .all(|m| s.access_modes.iter().flatten().any(|have| have == m))
        })
        .min_by_key(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .map(storage_of)
        });
    if let Some(v) = fitting {
        return Step::Bind(v.metadata.name.clone().unwrap_or_default());
    }
    let class = classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&class_name));
    match class {
        Some(c) if c.provisioner == LOCAL_PATH => match consumer_node {
            Some(node) => Step::Provision {
                node: node.to_string(),
            },
            None => Step::Wait(Some(
                "waiting for first consumer to be created before binding".into(),
            )),
        },
        Some(c) => Step::Wait(Some(format!(
            "waiting for a volume to be created by {:?} or by hand",
            c.provisioner
        ))),
        None => Step::Wait(Some(format!(
            "storageclass.storage.k8s.io {class_name:?} not found"
        ))),
    }
}

/// The volume the local-path provisioner makes for a claim on `node`.
pub fn local_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
) -> PersistentVolume {
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let spec = claim.spec.clone().unwrap_or_default();
    let base = class
        .parameters
        .as_ref()
        .and_then(|p| p.get("path"))
        .cloned()
        .unwrap_or_else(|| LOCAL_PATH_DIR.into());
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pvc-{uid}"),
            "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PATH},
        },
        "spec": {
            "capacity": {"storage": spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned()).map(|q| q.0).unwrap_or_else(|| "1Gi".into())},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "volumeMode": "Filesystem",
            "hostPath": {"path": format!("{base}/pvc-{uid}_{ns}_{name}"), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }))
    .expect("a valid PersistentVolume")
}

/// The node of a scheduled pod in the claim's namespace that uses it.
fn consumer(ctx: &Context, claim: &PersistentVolumeClaim) -> Option<String> {
    let ns = claim.metadata.namespace.as_deref()?;
    let name = claim.metadata.name.as_deref()?;
    ctx.pods.state().iter().find_map(|p: &Arc<Pod>| {
        if p.metadata.namespace.as_deref() != Some(ns) {
            return None;
        }
        let spec = p.spec.as_ref()?;
        let uses = spec.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == name)
        });
        uses.then(|| spec.node_name.clone()).flatten()
    })
}

pub async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.synced().await?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound || claim.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let classes = Api::<StorageClass>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing storage classes".into()))?
        .items;
    let volumes = pvs
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing persistent volumes".into()))?
        .items;
    let node = consumer(&ctx, &claim);
    let about = || involved_in("v1", "PersistentVolumeClaim", &claim.metadata);
    let volume = match plan(&claim, &volumes, &classes, node.as_deref()) {
        Step::Wait(why) => {
            if let Some(why) = why {
                let reason = if why.starts_with("waiting for first consumer") {
                    "WaitForFirstConsumer"
                } else {
                    "ProvisioningFailed"
                };
                if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending") {
                    write_status(&claims, &name, json!({"phase": "Pending"}), "claim").await?;
                }
                let uid = claim.metadata.uid.clone().unwrap_or_default();
                if ctx.noted(format!("claim/{uid}"), &why) {
                    record(&ctx.client, about(), "Normal", reason, &why, COMPONENT);
                }
            }
            return Ok(Action::await_change());
        }
        Step::SetClass(class) => {
            claims
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"storageClassName": class}})),
                )
                .await
                .map_err(api_err(format!("setting the class of claim {ns}/{name}")))?;
            return Ok(Action::await_change());
        }
        Step::Bind(v) => v,
        Step::Provision { node } => {
            let class_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
                .unwrap_or_default();
            let class = classes
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(&class_name))
                .cloned()
                .unwrap_or_else(local_path_class);
            let pv = local_volume(&claim, &class, &node);
            let pv_name = pv.metadata.name.clone().unwrap_or_default();
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    let msg = format!("Successfully provisioned volume {pv_name} on node {node}");
                    record(
                        &ctx.client,
                        about(),
                        "Normal",
                        "ProvisioningSucceeded",
                        &msg,
                        COMPONENT,
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api_err(format!("provisioning a volume for {ns}/{name}"))(e)),
            }
            claims
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {SELECTED_NODE: node}}})),
                )
                .await
                .map_err(api_err(format!("annotating claim {ns}/{name}")))?;
            pv_name
        }
    };
    bind(&ctx, &claim, &volume).await?;
    Ok(Action::await_change())
}

/// Tie a claim and a volume to each other: the volume's `claimRef`, the claim's
/// `volumeName`, and both Bound.
async fn bind(ctx: &Context, claim: &PersistentVolumeClaim, volume: &str) -> Result<(), Error> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    // Pinned to the volume as it was read: of two claims that chose the same volume at once,
    // one wins and the other plans again.
    let current = pvs
        .get(volume)
        .await
        .map_err(api_err(format!("reading volume {volume}")))?;
    let taken = current
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.uid
                .as_ref()
                .is_some_and(|u| Some(u) != claim.metadata.uid.as_ref())
        });
    if taken {
        return Err(Error::Invalid {
            what: "persistentvolumeclaim",
            name: format!("{ns}/{name}"),
            why: format!("volume {volume} was bound to another claim first; choosing again"),
        });
    }
    let pv = pvs
        .patch(
            volume,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"claimRef": {"apiVersion": "v1",
                "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                "uid": claim.metadata.uid}}})),
        )
        .await
        .map_err(api_err(format!("binding volume {volume}")))?;
    write_status(
        &pvs,
        volume,
        json!({"phase": "Bound"}),
        &format!("volume {volume}"),
    )
    .await?;
    claims
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"volumeName": volume},
            })),
        )
        .await
        .map_err(api_err(format!("binding claim {ns}/{name}")))?;
    let spec = pv.spec.unwrap_or_default();
    write_status(
        &claims,
        &name,
        json!({"phase": "Bound", "capacity": spec.capacity, "accessModes": spec.access_modes}),
        &format!("claim {ns}/{name}"),
    )
    .await
}

/// A volume whose claim is gone is Released, and deleted under the `Delete` policy; one
/// without a claim is Available.
pub async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let spec = pv.spec.clone().unwrap_or_default();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let Some(claim_ref) = spec.claim_ref else {
        if phase != "Available" {
            write_status(&pvs, &name, json!({"phase": "Available"}), "volume").await?;
        }
        return Ok(Action::await_change());
    };
    let claim = Api::<PersistentVolumeClaim>::namespaced(
        ctx.client.clone(),
        claim_ref.namespace.as_deref().unwrap_or("default"),
    )
    .get_opt(claim_ref.name.as_deref().unwrap_or_default())
    .await
    .map_err(api_err(format!("reading the claim of volume {name}")))?;
    // A claimRef without a uid reserves the volume for a claim still to come.
    let gone = match (&claim, &claim_ref.uid) {
        (None, Some(_)) => true,
        (Some(c), Some(uid)) => c.metadata.uid.as_ref() != Some(uid),
        (_, None) => false,
    };
    if !gone {
        return Ok(Action::await_change());
    }
    if spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") {
        match pvs.delete(&name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting released volume {name}"))(e)),
        }
    } else if phase != "Released" {
        write_status(&pvs, &name, json!({"phase": "Released"}), "volume").await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn claim(extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "default", "uid": "c-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "local-path"}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn volume(name: &str, size: &str, class: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
            "storageClassName": class, "hostPath": {"path": "/x"}}}))
        .unwrap()
    }

    #[test]
    fn a_claim_gets_the_default_class_then_waits_for_its_first_consumer() {
        let classes = [local_path_class()];
        let c = claim(json!({"spec": {"storageClassName": null}}));
        assert_eq!(
            plan(&c, &[], &classes, None),
            Step::SetClass("local-path".into())
        );
        let c = claim(json!({}));
        assert!(
            matches!(plan(&c, &[], &classes, None), Step::Wait(Some(w)) if w.contains("first consumer"))
        );
        assert_eq!(
            plan(&c, &[], &classes, Some("n1")),
            Step::Provision { node: "n1".into() }
        );
        let pv = local_volume(&c, &classes[0], "n1");
        let spec = pv.spec.unwrap();
        assert_eq!(
            spec.host_path.unwrap().path,
            "/var/lib/berth/local-path/pvc-c-1_default_data"
        );
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("c-1"));
    }

    #[test]
    fn the_smallest_available_volume_that_fits_is_bound() {
        let classes = [local_path_class()];
        let c = claim(json!({"spec": {"storageClassName": "manual"}}));
        let volumes = [
            volume("small", "512Mi", "manual"),
            volume("big", "10Gi", "manual"),
            volume("right", "2Gi", "manual"),
            volume("other", "1Gi", "fast"),
        ];
        assert_eq!(
            plan(&c, &volumes, &classes, None),
            Step::Bind("right".into())
        );
        let named = claim(json!({"spec": {"volumeName": "big"}}));
        assert_eq!(
            plan(&named, &volumes, &classes, None),
            Step::Bind("big".into())
        );
    }
}
