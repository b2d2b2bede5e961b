//! ControllerRevisions: the template history of DaemonSets and StatefulSets, as Kubernetes
//! keeps it, so `kubectl rollout history` lists it and `kubectl rollout undo` patches a set
//! back to an old template.
//!
//! A revision is named `<set>-<template hash>` and holds the strategic merge patch that puts
//! its template back (`{"spec": {"template": {..., "$patch": "replace"}}}`); its `revision`
//! number is one more than the newest when its template becomes the set's (again), and the
//! oldest beyond `revisionHistoryLimit` that no pod still runs are deleted.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::api_err;
use crate::ownership::{controlled_by, controller_ref};
use crate::{Context, Error};

/// What a set tells this module: its kind, metadata, template, revision name and limit.
pub struct Owner<'a> {
    pub kind: &'static str,
    pub meta: &'a ObjectMeta,
    pub template: &'a PodTemplateSpec,
    /// `<set>-<template hash>`.
    pub revision: String,
    pub history_limit: i32,
    /// Revisions some pod of the set still runs: never deleted.
    pub in_use: HashSet<String>,
}

/// The patch that puts `template` back.
fn data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

/// Make sure the set's current template is its newest revision, and trim the history. Runs
/// when a set's template changes (the last one recorded is remembered per set), so a pass
/// costs nothing otherwise.
pub async fn record(ctx: &Context, owner: Owner<'_>) -> Result<(), Error> {
    let uid = owner.meta.uid.clone().unwrap_or_default();
    let known = ctx.revisions.get(&uid);
    if known.as_deref() == Some(owner.revision.as_str()) {
        return Ok(());
    }
    let ns = owner.meta.namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let mut mine: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing controller revisions in {ns}")))?
        .items
        .into_iter()
        .filter(|r| controlled_by(&r.metadata, &uid))
        .collect();
    mine.sort_by_key(|r| r.revision);
    let newest = mine.last().map_or(0, |r| r.revision);
    match mine
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&owner.revision))
    {
        Some(r) if r.revision == newest => {}
        // An old template come back (a rollback): it becomes the newest again.
        Some(_) => {
            api.patch(
                &owner.revision,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": newest + 1})),
            )
            .await
            .map_err(api_err(format!(
                "renumbering revision {ns}/{}",
                owner.revision
            )))?;
        }
        None => {
            let mut labels = owner
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(
                "controller-revision-hash".into(),
                owner.revision.rsplit('-').next().unwrap_or_default().into(),
            );
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(owner.revision.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![controller_ref("apps/v1", owner.kind, owner.meta)]),
                    ..ObjectMeta::default()
                },
                data: Some(RawExtension(data(owner.template))),
                revision: newest + 1,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
                Err(e) => {
                    return Err(api_err(format!(
                        "recording revision {ns}/{}",
                        owner.revision
                    ))(e))
                }
            }
            mine.push(rev);
        }
    }
    // History: the oldest past the limit, but never the current or one still running.
    let limit = owner.history_limit.max(0) as usize;
    let old: Vec<&ControllerRevision> = mine
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(&owner.revision))
        .filter(|r| {
            !owner
                .in_use
                .contains(r.metadata.name.as_deref().unwrap_or_default())
        })
        .collect();
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        let name = r.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting revision {ns}/{name}"))(e)),
        }
    }
    ctx.revisions.set(uid, &owner.revision);
    Ok(())
}
