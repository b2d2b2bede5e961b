//! The garbage collector: what an owner leaves behind goes with it, as its deletion's
//! propagation policy says, for every kind the API server serves.
//!
//! At start the collector asks the API server's discovery for every resource that can be
//! listed, watched and deleted, and keeps a metadata-only cache of each (`PartialObjectMeta`:
//! names, uids, owner references, finalizers; never specs). Once a second it sweeps the graph
//! those caches make:
//!
//! - Background (kubectl's default): an object whose owners are all gone (each absence
//!   checked against the API, not only the cache) is deleted; one that lost only some of its
//!   owners has the dangling references taken off and stays.
//! - Foreground (owner finalizer `foregroundDeletion`): the owner's dependents are deleted
//!   (in the foreground themselves if they own something), and once none with
//!   `blockOwnerDeletion` is left the finalizer comes off and the owner goes.
//! - Orphan (owner finalizer `orphan`): the owner reference is taken off every dependent,
//!   then the finalizer comes off; the dependents stay.
//!
//! Every write names the resourceVersion it was decided on, so a sweep that raced another
//! writer gets a 409 and the next sweep decides again. Each sweep is idempotent.

use std::collections::HashMap;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, PartialObjectMeta};
use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;

use crate::api_err;
use crate::ownership::{owner_refs_patch, pinned_patch};
use crate::Error;

const SWEEP_EVERY: Duration = Duration::from_secs(1);

type Meta = PartialObjectMeta<DynamicObject>;

/// One served resource and the metadata cache of its objects.
struct Kind {
    ar: ApiResource,
    namespaced: bool,
    cache: Store<Meta>,
}

pub async fn run(client: Client) {
    let resources = loop {
        match discover(&client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery");
                tokio::time::sleep(SWEEP_EVERY).await;
            }
        }
    };
    let mut kinds = Vec::new();
    let mut watches = Vec::new();
    for (ar, caps) in resources {
        let writer = Writer::new(ar.clone());
        kinds.push(Kind {
            namespaced: caps.scope == Scope::Namespaced,
            cache: writer.as_reader(),
            ar: ar.clone(),
        });
        let api = Api::<Meta>::all_with(client.clone(), &ar);
        watches.push(
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| async {})
                .boxed(),
        );
    }
    tracing::debug!(kinds = kinds.len(), "garbage collector watching");
    let sweeps = async {
        loop {
            if let Err(e) = sweep(&client, &kinds).await {
                tracing::warn!(error = %format!("{e:#}"), "garbage collection sweep");
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    };
    futures::join!(futures::future::join_all(watches), sweeps);
}

/// Every resource (preferred version of each group) that can be listed, watched and deleted.
async fn discover(client: &Client) -> Result<Vec<(ApiResource, ApiCapabilities)>, Error> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(api_err("discovering the served resources".to_string()))?;
    Ok(discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| {
            [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v))
        })
        .collect())
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

fn refs(meta: &ObjectMeta) -> &[OwnerReference] {
    meta.owner_references.as_deref().unwrap_or_default()
}

/// One object of the graph: its kind (index into the kinds) and metadata.
struct Node<'k> {
    kind: &'k Kind,
    meta: ObjectMeta,
}

async fn sweep(client: &Client, kinds: &[Kind]) -> Result<(), Error> {
    // Kinds whose cache has not filled yet are left out of this sweep: their objects are not
    // judged, and an owner among them is looked up in the API instead.
    let nodes: Vec<Node> = kinds
        .iter()
        .filter(|k| k.cache.wait_until_ready().now_or_never().is_some())
        .flat_map(|k| {
            k.cache.state().into_iter().map(move |o| Node {
                kind: k,
                meta: o.metadata.clone(),
            })
        })
        .collect();
    let mut by_uid: HashMap<&str, &Node> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in &nodes {
        if let Some(uid) = n.meta.uid.as_deref() {
            by_uid.insert(uid, n);
        }
        for r in refs(&n.meta) {
            dependents.entry(r.uid.as_str()).or_default().push(n);
        }
    }

    // Background: dependents that lost owners.
    for d in &nodes {
        if d.meta.deletion_timestamp.is_some() || refs(&d.meta).is_empty() {
            continue;
        }
        let mut dangling = Vec::new();
        for r in refs(&d.meta) {
            let cached = by_uid
                .get(r.uid.as_str())
                .is_some_and(|o| o.kind.ar.kind == r.kind);
            if !cached && !owner_exists(client, kinds, d, r).await? {
                dangling.push(r.uid.as_str());
            }
        }
        if dangling.is_empty() {
            continue;
        }
        if dangling.len() == refs(&d.meta).len() {
            delete(client, d, DeleteParams::background()).await?;
        } else {
            let keep: Vec<&OwnerReference> = refs(&d.meta)
                .iter()
                .filter(|r| !dangling.contains(&r.uid.as_str()))
                .collect();
            set_owner_refs(client, d, keep).await?;
        }
    }

    // Foreground and orphan: owners being deleted that wait on their dependents.
    for owner in &nodes {
        if owner.meta.deletion_timestamp.is_none() {
            continue;
        }
        let uid = owner.meta.uid.as_deref().unwrap_or_default();
        let mine = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
        let finalizer = if has_finalizer(&owner.meta, "orphan") {
            for d in mine {
                let keep: Vec<&OwnerReference> =
                    refs(&d.meta).iter().filter(|r| r.uid != uid).collect();
                set_owner_refs(client, d, keep).await?;
            }
            "orphan"
        } else if has_finalizer(&owner.meta, "foregroundDeletion") {
            for d in mine.iter().filter(|d| d.meta.deletion_timestamp.is_none()) {
                let owns_something = d
                    .meta
                    .uid
                    .as_deref()
                    .is_some_and(|u| dependents.contains_key(u));
                let dp = if owns_something {
                    DeleteParams::foreground()
                } else {
                    DeleteParams::background()
                };
                delete(client, d, dp).await?;
            }
            let blocked = mine.iter().any(|d| {
                refs(&d.meta)
                    .iter()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
            });
            if blocked {
                continue;
            }
            "foregroundDeletion"
        } else {
            continue;
        };
        let rest: Vec<&String> = owner
            .meta
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": owner.meta.resource_version,
        }});
        patch_meta(client, owner, &patch).await?;
    }
    Ok(())
}

fn dynamic_api(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    }
}

fn describe(n: &Node) -> String {
    match &n.meta.namespace {
        Some(ns) => format!(
            "{} {ns}/{}",
            n.kind.ar.kind,
            n.meta.name.as_deref().unwrap_or("")
        ),
        None => format!(
            "{} {}",
            n.kind.ar.kind,
            n.meta.name.as_deref().unwrap_or("")
        ),
    }
}

/// Does the owner `r` names still exist with the same uid, asking the API itself? An owner
/// of a kind nobody serves is assumed to exist: the collector never deletes on a guess.
async fn owner_exists(
    client: &Client,
    kinds: &[Kind],
    d: &Node<'_>,
    r: &OwnerReference,
) -> Result<bool, Error> {
    let Some(kind) = kinds
        .iter()
        .find(|k| k.ar.api_version == r.api_version && k.ar.kind == r.kind)
    else {
        tracing::debug!(
            object = %describe(d),
            owner = %format!("{} {}", r.api_version, r.kind),
            "owner of a kind not served; left alone"
        );
        return Ok(true);
    };
    let got = dynamic_api(client, kind, d.meta.namespace.as_deref())
        .get_metadata_opt(&r.name)
        .await
        .map_err(api_err(format!("looking up {} {}", r.kind, r.name)))?;
    Ok(got.and_then(|o| o.metadata.uid).as_deref() == Some(r.uid.as_str()))
}

async fn delete(client: &Client, d: &Node<'_>, dp: DeleteParams) -> Result<(), Error> {
    let name = d.meta.name.clone().unwrap_or_default();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: d.meta.uid.clone(),
            resource_version: None,
        }),
        ..dp
    };
    match dynamic_api(client, d.kind, d.meta.namespace.as_deref())
        .delete(&name, &dp)
        .await
    {
        Ok(_) => {
            tracing::info!(object = %describe(d), "garbage collected");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("deleting {}", describe(d)))(e)),
    }
}

/// Replace `d`'s owner references with `keep`, pinned to the version the sweep saw.
async fn set_owner_refs(
    client: &Client,
    d: &Node<'_>,
    keep: Vec<&OwnerReference>,
) -> Result<(), Error> {
    patch_meta(client, d, &owner_refs_patch(keep, &d.meta)).await
}

async fn patch_meta(client: &Client, n: &Node<'_>, patch: &serde_json::Value) -> Result<(), Error> {
    let api = dynamic_api(client, n.kind, n.meta.namespace.as_deref());
    let doing = format!("updating {}", n.kind.ar.kind);
    pinned_patch(&api, &n.meta, patch, &doing).await.map(drop)
}
