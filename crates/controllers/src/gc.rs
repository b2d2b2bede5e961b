//! The garbage collector: what an owner leaves behind goes with it, as its deletion's
//! propagation policy says.
//!
//! - Background (kubectl's default): the owner is gone at once; every object whose owners
//!   are all gone (checked against the API, not only the cache) is deleted.
//! - Foreground (finalizer `foregroundDeletion`): dependents are deleted first, then the
//!   finalizer is removed and the owner goes.
//! - Orphan (finalizer `orphan`): the owner reference is taken off every dependent, then the
//!   finalizer is removed; the dependents stay.
//!
//! Owners Berth knows: Deployments and ReplicaSets; dependents: ReplicaSets and Pods. The
//! collector sweeps its caches once a second; each sweep is idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Resource;
use serde_json::json;

use crate::{Context, Error};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An owner as the caches show it.
struct Owner {
    kind: &'static str,
    meta: ObjectMeta,
}

/// A dependent: its kind, namespace, name and owner references.
struct Dependent {
    kind: &'static str,
    meta: ObjectMeta,
}

impl Dependent {
    fn refs(&self) -> &[OwnerReference] {
        self.meta.owner_references.as_deref().unwrap_or_default()
    }
}

pub async fn run(ctx: Arc<Context>) {
    if let Err(e) = ctx.synced().await {
        tracing::error!(error = %e, "garbage collector");
        return;
    }
    loop {
        if let Err(e) = sweep(&ctx).await {
            tracing::warn!(error = %format!("{e:#}"), "garbage collection sweep");
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

async fn sweep(ctx: &Context) -> Result<(), Error> {
    let mut owners: HashMap<String, Owner> = HashMap::new();
    for d in ctx.deployments.state() {
        owners.insert(
            d.metadata.uid.clone().unwrap_or_default(),
            Owner {
                kind: "Deployment",
                meta: d.metadata.clone(),
            },
        );
    }
    for r in ctx.replicasets.state() {
        owners.insert(
            r.metadata.uid.clone().unwrap_or_default(),
            Owner {
                kind: "ReplicaSet",
                meta: r.metadata.clone(),
            },
        );
    }
    // A pod deleted in the foreground or with orphaning owns nothing; it only needs its
    // finalizer taken off, which the owner pass below does.
    for p in ctx.pods.state() {
        let m = &p.metadata;
        if m.deletion_timestamp.is_some()
            && (has_finalizer(m, "foregroundDeletion") || has_finalizer(m, "orphan"))
        {
            owners.insert(
                m.uid.clone().unwrap_or_default(),
                Owner {
                    kind: "Pod",
                    meta: m.clone(),
                },
            );
        }
    }
    let dependents: Vec<Dependent> = ctx
        .replicasets
        .state()
        .iter()
        .map(|r| Dependent {
            kind: "ReplicaSet",
            meta: r.metadata.clone(),
        })
        .chain(ctx.pods.state().iter().map(|p| Dependent {
            kind: "Pod",
            meta: p.metadata.clone(),
        }))
        .filter(|d| !d.refs().is_empty())
        .collect();

    // Background: dependents whose owners are all gone.
    for d in &dependents {
        if d.meta.deletion_timestamp.is_some() {
            continue;
        }
        let known = d
            .refs()
            .iter()
            .all(|r| matches!(r.kind.as_str(), "Deployment" | "ReplicaSet"));
        if !known || d.refs().iter().any(|r| owners.contains_key(&r.uid)) {
            continue;
        }
        let ns = d.meta.namespace.clone().unwrap_or_default();
        let mut all_gone = true;
        for r in d.refs() {
            all_gone &= !owner_exists(ctx, &ns, r).await?;
        }
        if all_gone {
            delete(ctx, d, DeleteParams::background()).await?;
        }
    }

    // Foreground and orphan: owners being deleted that wait on their dependents.
    for (uid, owner) in &owners {
        if owner.meta.deletion_timestamp.is_none() {
            continue;
        }
        let mine: Vec<&Dependent> = dependents
            .iter()
            .filter(|d| d.refs().iter().any(|r| &r.uid == uid))
            .collect();
        let finalizer = if has_finalizer(&owner.meta, "orphan") {
            for d in &mine {
                let refs: Vec<&OwnerReference> =
                    d.refs().iter().filter(|r| &r.uid != uid).collect();
                // An empty list is no list (null removes the field), as Kubernetes shows it.
                let refs = if refs.is_empty() {
                    json!(null)
                } else {
                    json!(refs)
                };
                let patch = json!({"metadata": {"ownerReferences": refs}});
                patch_meta(ctx, d, &patch).await?;
            }
            "orphan"
        } else if has_finalizer(&owner.meta, "foregroundDeletion") {
            for d in mine.iter().filter(|d| d.meta.deletion_timestamp.is_none()) {
                // Pods own nothing: delete them plainly, with no finalizer to clear.
                let dp = if d.kind == "Pod" {
                    DeleteParams::background()
                } else {
                    DeleteParams::foreground()
                };
                delete(ctx, d, dp).await?;
            }
            "foregroundDeletion"
        } else {
            continue;
        };
        if mine.is_empty() || finalizer == "orphan" {
            let rest: Vec<&String> = owner
                .meta
                .finalizers
                .iter()
                .flatten()
                .filter(|f| *f != finalizer)
                .collect();
            let patch = json!({"metadata": {"finalizers": rest}});
            let owner_dep = Dependent {
                kind: owner.kind,
                meta: owner.meta.clone(),
            };
            patch_meta(ctx, &owner_dep, &patch).await?;
        }
    }
    Ok(())
}

/// Does the owner a reference names still exist (same uid), asking the API itself?
async fn owner_exists(ctx: &Context, ns: &str, r: &OwnerReference) -> Result<bool, Error> {
    let got = match r.kind.as_str() {
        "Deployment" => Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|o| o.meta().uid.clone())),
        _ => Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .map(|o| o.map(|o| o.meta().uid.clone())),
    }
    .map_err(|source| Error::Api {
        action: format!("looking up {} {ns}/{}", r.kind, r.name),
        source,
    })?;
    Ok(got.flatten().as_deref() == Some(r.uid.as_str()))
}

async fn delete(ctx: &Context, d: &Dependent, dp: DeleteParams) -> Result<(), Error> {
    let ns = d.meta.namespace.clone().unwrap_or_default();
    let name = d.meta.name.clone().unwrap_or_default();
    let uid = d.meta.uid.clone();
    let dp = DeleteParams {
        preconditions: uid.map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..dp
    };
    let result = match d.kind {
        "Pod" => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &dp)
            .await
            .map(|_| ()),
        _ => Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &dp)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => {
            tracing::info!(kind = d.kind, object = %format!("{ns}/{name}"), "garbage collected");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::Api {
            action: format!("deleting {} {ns}/{name}", d.kind),
            source,
        }),
    }
}

async fn patch_meta(ctx: &Context, d: &Dependent, patch: &serde_json::Value) -> Result<(), Error> {
    let ns = d.meta.namespace.clone().unwrap_or_default();
    let name = d.meta.name.clone().unwrap_or_default();
    let pp = PatchParams::default();
    let result = match d.kind {
        "Pod" => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
        "Deployment" => Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
        _ => Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(patch))
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            action: format!("updating {} {ns}/{name}", d.kind),
            source,
        }),
    }
}
