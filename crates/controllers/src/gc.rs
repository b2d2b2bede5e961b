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
//! writer gets a 409 and the next sweep decides again. Each sweep is idempotent: the owner
//! references no cache can vouch for ([`suspects`]) are looked up in the API, then a pure
//! [`plan`] over the graph and the references confirmed dangling decides the writes.

use std::collections::{HashMap, HashSet};
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
    // The served kinds change with CustomResourceDefinitions: on every change to one, the
    // collector discovers again and watches what is served then.
    let definitions_changed = definitions_changed(&client);
    futures::pin_mut!(definitions_changed);
    loop {
        let resources = loop {
            match discover(&client).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector: discovery");
                    tokio::time::sleep(SWEEP_EVERY).await;
                }
            }
        };
        tokio::select! {
            _ = collect(&client, resources) => {}
            _ = definitions_changed.next() => {
                tracing::debug!("garbage collector: the served kinds changed; discovering again");
            }
        }
    }
}

/// An item each time a CustomResourceDefinition is added, changed or removed (after the
/// first list).
fn definitions_changed(client: &Client) -> impl futures::Stream<Item = ()> + Send + 'static {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut listed = false;
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |e| {
            let changed = match e {
                Ok(watcher::Event::InitDone) => {
                    let again = listed;
                    listed = true;
                    again
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => listed,
                _ => false,
            };
            futures::future::ready(changed.then_some(()))
        })
}

/// Watch `resources` and sweep the graph of their objects, until dropped.
async fn collect(client: &Client, resources: Vec<(ApiResource, ApiCapabilities)>) {
    let client = client.clone();
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

/// One object of the graph: its kind (index into the kinds), the kind's name, metadata.
#[derive(Debug, Clone)]
pub struct Object {
    pub kind: usize,
    pub kind_name: String,
    pub meta: ObjectMeta,
}

/// One write of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Delete the object (index into the sweep's objects) with this propagation.
    Delete { object: usize, foreground: bool },
    /// Replace its owner references with these uids' (the rest are dangling or released).
    SetOwners { object: usize, keep: Vec<String> },
    /// Take this finalizer off an owner whose dependents are dealt with.
    Finalize {
        object: usize,
        finalizer: &'static str,
    },
}

/// The owner references whose owner is not in any cache: each must be looked up in the API
/// before it is taken as gone, (object index, reference).
pub fn suspects(objects: &[Object]) -> Vec<(usize, &OwnerReference)> {
    let cached: HashMap<&str, &str> = objects
        .iter()
        .filter_map(|o| Some((o.meta.uid.as_deref()?, o.kind_name.as_str())))
        .collect();
    objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.meta.deletion_timestamp.is_none())
        .flat_map(|(i, o)| refs(&o.meta).iter().map(move |r| (i, r)))
        .filter(|(_, r)| cached.get(r.uid.as_str()) != Some(&r.kind.as_str()))
        .collect()
}

/// Decide one sweep over the graph the caches make, given the references the API confirmed
/// dangling: (object index, owner uid), each judged for its own object, as the owner's
/// name, kind and namespace come from that object's reference. Pure.
pub fn plan(objects: &[Object], dangling: &HashSet<(usize, String)>) -> Vec<Write> {
    let mut dependents: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, o) in objects.iter().enumerate() {
        for r in refs(&o.meta) {
            dependents.entry(r.uid.as_str()).or_default().push(i);
        }
    }
    let mut writes = Vec::new();

    // Background: dependents that lost owners.
    for (i, d) in objects.iter().enumerate() {
        if d.meta.deletion_timestamp.is_some() || refs(&d.meta).is_empty() {
            continue;
        }
        let (lost, kept): (Vec<&OwnerReference>, Vec<&OwnerReference>) = refs(&d.meta)
            .iter()
            .partition(|r| dangling.contains(&(i, r.uid.clone())));
        if lost.is_empty() {
            continue;
        }
        writes.push(if kept.is_empty() {
            Write::Delete {
                object: i,
                foreground: false,
            }
        } else {
            Write::SetOwners {
                object: i,
                keep: kept.iter().map(|r| r.uid.clone()).collect(),
            }
        });
    }

    // Foreground and orphan: owners being deleted that wait on their dependents.
    for (i, owner) in objects.iter().enumerate() {
        if owner.meta.deletion_timestamp.is_none() {
            continue;
        }
        let uid = owner.meta.uid.as_deref().unwrap_or_default();
        let mine = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
        let finalizer = if has_finalizer(&owner.meta, "orphan") {
            for &d in mine {
                let keep = refs(&objects[d].meta)
                    .iter()
                    .filter(|r| r.uid != uid)
                    .map(|r| r.uid.clone())
                    .collect();
                writes.push(Write::SetOwners { object: d, keep });
            }
            "orphan"
        } else if has_finalizer(&owner.meta, "foregroundDeletion") {
            for &d in mine {
                let dm = &objects[d].meta;
                if dm.deletion_timestamp.is_some() {
                    continue;
                }
                let owns_something = dm
                    .uid
                    .as_deref()
                    .is_some_and(|u| dependents.contains_key(u));
                writes.push(Write::Delete {
                    object: d,
                    foreground: owns_something,
                });
            }
            let blocked = mine.iter().any(|&d| {
                refs(&objects[d].meta)
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
        writes.push(Write::Finalize {
            object: i,
            finalizer,
        });
    }
    writes
}

async fn sweep(client: &Client, kinds: &[Kind]) -> Result<(), Error> {
    // Kinds whose cache has not filled yet are left out of this sweep: their objects are not
    // judged, and an owner among them is looked up in the API instead.
    let objects: Vec<Object> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| k.cache.wait_until_ready().now_or_never().is_some())
        .flat_map(|(i, k)| {
            k.cache.state().into_iter().map(move |o| Object {
                kind: i,
                kind_name: k.ar.kind.clone(),
                meta: o.metadata.clone(),
            })
        })
        .collect();
    // Each suspect looked up once per owner it names (namespace, kind, name, uid).
    let mut looked_up: HashMap<(Option<&str>, &str, &str, &str, &str), bool> = HashMap::new();
    let mut dangling = HashSet::new();
    for (i, r) in suspects(&objects) {
        let o = &objects[i];
        let key = (
            o.meta.namespace.as_deref(),
            r.api_version.as_str(),
            r.kind.as_str(),
            r.name.as_str(),
            r.uid.as_str(),
        );
        let exists = match looked_up.get(&key) {
            Some(e) => *e,
            None => {
                let e = owner_exists(client, kinds, o, r).await?;
                looked_up.insert(key, e);
                e
            }
        };
        if !exists {
            dangling.insert((i, r.uid.clone()));
        }
    }
    for write in plan(&objects, &dangling) {
        match write {
            Write::Delete { object, foreground } => {
                let dp = if foreground {
                    DeleteParams::foreground()
                } else {
                    DeleteParams::background()
                };
                delete(client, kinds, &objects[object], dp).await?
            }
            Write::SetOwners { object, keep } => {
                let o = &objects[object];
                let refs = refs(&o.meta).iter().filter(|r| keep.contains(&r.uid));
                patch_meta(client, kinds, o, &owner_refs_patch(refs, &o.meta)).await?
            }
            Write::Finalize { object, finalizer } => {
                let owner = &objects[object];
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
                patch_meta(client, kinds, owner, &patch).await?
            }
        }
    }
    Ok(())
}

fn dynamic_api(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    }
}

fn describe(n: &Object) -> String {
    match &n.meta.namespace {
        Some(ns) => format!(
            "{} {ns}/{}",
            n.kind_name,
            n.meta.name.as_deref().unwrap_or("")
        ),
        None => format!("{} {}", n.kind_name, n.meta.name.as_deref().unwrap_or("")),
    }
}

/// Does the owner `r` names still exist with the same uid, asking the API itself? An owner
/// of a kind nobody serves is assumed to exist: the collector never deletes on a guess.
async fn owner_exists(
    client: &Client,
    kinds: &[Kind],
    d: &Object,
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

async fn delete(
    client: &Client,
    kinds: &[Kind],
    d: &Object,
    dp: DeleteParams,
) -> Result<(), Error> {
    let name = d.meta.name.clone().unwrap_or_default();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: d.meta.uid.clone(),
            resource_version: None,
        }),
        ..dp
    };
    match dynamic_api(client, &kinds[d.kind], d.meta.namespace.as_deref())
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

/// A merge patch of an object's metadata, pinned to the version the sweep saw.
async fn patch_meta(
    client: &Client,
    kinds: &[Kind],
    n: &Object,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let api = dynamic_api(client, &kinds[n.kind], n.meta.namespace.as_deref());
    let doing = format!("updating {}", n.kind_name);
    pinned_patch(&api, &n.meta, patch, &doing).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, uid: &str, owners: &[(&str, &str, bool)]) -> Object {
        let refs: Vec<_> = owners
            .iter()
            .map(|(k, u, block)| {
                json!({"apiVersion": "v1", "kind": k, "name": u, "uid": u,
                                        "blockOwnerDeletion": block})
            })
            .collect();
        Object {
            kind: 0,
            kind_name: kind.into(),
            meta: serde_json::from_value(json!({"name": uid, "namespace": "ns", "uid": uid,
                "ownerReferences": refs}))
            .unwrap(),
        }
    }

    fn deleting(mut o: Object, finalizer: &str) -> Object {
        o.meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        o.meta.finalizers = Some(vec![finalizer.into()]);
        o
    }

    #[test]
    fn owners_not_cached_are_suspects_and_only_confirmed_ones_are_gone() {
        let objects = [
            object("ReplicaSet", "rs", &[("Deployment", "d", true)]),
            object("Pod", "p1", &[("ReplicaSet", "rs", true)]),
            object(
                "Pod",
                "p2",
                &[("ReplicaSet", "rs", true), ("Job", "j", false)],
            ),
        ];
        let s: Vec<(usize, &str)> = suspects(&objects)
            .into_iter()
            .map(|(i, r)| (i, r.uid.as_str()))
            .collect();
        assert_eq!(s, [(0, "d"), (2, "j")], "cached owners are not looked up");
        // Nothing confirmed gone: nothing is written.
        assert!(plan(&objects, &HashSet::new()).is_empty());
        // The Deployment is gone: its set goes, in the background; the pods keep theirs.
        let gone = HashSet::from([(0, "d".to_string())]);
        assert_eq!(
            plan(&objects, &gone),
            [Write::Delete {
                object: 0,
                foreground: false
            }]
        );
        // The Job is gone: p2 loses only that reference.
        let gone = HashSet::from([(2, "j".to_string())]);
        assert_eq!(
            plan(&objects, &gone),
            [Write::SetOwners {
                object: 2,
                keep: vec!["rs".into()]
            }]
        );
        // A reference confirmed dangling for one object says nothing of another object's
        // reference to the same uid (another namespace, a wrong kind or name).
        let elsewhere = [
            object("Pod", "p3", &[("Job", "j", false)]),
            object("Pod", "p4", &[("Job", "j", false)]),
        ];
        let gone = HashSet::from([(0, "j".to_string())]);
        assert_eq!(
            plan(&elsewhere, &gone),
            [Write::Delete {
                object: 0,
                foreground: false
            }]
        );
    }

    #[test]
    fn foreground_deletes_dependents_and_finalizes_once_none_blocks() {
        let objects = [
            deleting(object("Deployment", "d", &[]), "foregroundDeletion"),
            object("ReplicaSet", "rs", &[("Deployment", "d", true)]),
            object("Pod", "p", &[("ReplicaSet", "rs", true)]),
        ];
        assert_eq!(
            plan(&objects, &HashSet::new()),
            [Write::Delete {
                object: 1,
                foreground: true
            }],
            "the set owns a pod: it goes in the foreground too; the owner waits"
        );
        let unblocked = [
            deleting(object("Deployment", "d", &[]), "foregroundDeletion"),
            object("ConfigMap", "c", &[("Deployment", "d", false)]),
        ];
        assert_eq!(
            plan(&unblocked, &HashSet::new()),
            [
                Write::Delete {
                    object: 1,
                    foreground: false
                },
                Write::Finalize {
                    object: 0,
                    finalizer: "foregroundDeletion"
                },
            ]
        );
    }

    #[test]
    fn orphan_takes_the_reference_off_every_dependent_then_the_finalizer() {
        let objects = [
            deleting(object("ReplicaSet", "rs", &[]), "orphan"),
            object(
                "Pod",
                "p",
                &[("ReplicaSet", "rs", true), ("Node", "n", false)],
            ),
        ];
        assert_eq!(
            plan(&objects, &HashSet::new()),
            [
                Write::SetOwners {
                    object: 1,
                    keep: vec!["n".into()]
                },
                Write::Finalize {
                    object: 0,
                    finalizer: "orphan"
                },
            ]
        );
    }
}
