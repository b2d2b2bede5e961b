//! Discovery: `/version`, `/api`, `/apis`, the per-group resource lists, and the small
//! OpenAPI v3 documents that tell kubectl the server validates fields itself.

use berth_core::custom::Catalog;
use berth_core::resources::{self, Resource};
use serde_json::{json, Value};

/// The Kubernetes version Berth reports: kubectl's dispatcher picks its v1.32 client by it.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-berth.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The built-in and custom resources of a group-version.
fn served(catalog: &Catalog, group: &str, version: &str) -> Vec<&'static Resource> {
    resources::of_group_version(group, version)
        .chain(catalog.of_group_version(group, version))
        .collect()
}

fn api_resources(catalog: &Catalog, group: &str, version: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for r in served(catalog, group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind_name,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        out.push(entry);
        if r.status {
            out.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind_name, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale {
            out.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if r.kind == resources::Kind::ServiceAccount {
            out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
        if r.kind == resources::Kind::Pod {
            out.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
            out.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    if (group, version) == (crate::metrics::GROUP, crate::metrics::VERSION) {
        return Some(crate::metrics::resource_list());
    }
    if let Some(list) = crate::authz::review::resource_list(group, version) {
        return Some(list);
    }
    if served(catalog, group, version).is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": api_resources(catalog, group, version),
    }))
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// A group and its served versions, the first preferred.
fn group_entry(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
}

/// Every served group with its versions (the metrics API's, the reviews' and the custom
/// kinds' included).
fn all_groups(catalog: &Catalog) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = resources::groups()
        .into_iter()
        .map(|(g, _)| (g, resources::group_versions(g)))
        .chain([(crate::metrics::GROUP, vec![crate::metrics::VERSION])])
        .chain(crate::authz::review::groups())
        .collect();
    for (g, vs) in catalog.groups() {
        match out.iter_mut().find(|(x, _)| *x == g) {
            Some((_, have)) => {
                for v in vs {
                    if !have.contains(&v) {
                        have.push(v);
                    }
                }
            }
            None => out.push((g, vs)),
        }
    }
    out
}

/// `/apis`.
pub fn groups(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = all_groups(catalog)
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(catalog: &Catalog, name: &str) -> Option<Value> {
    all_groups(catalog)
        .into_iter()
        .find(|(g, _)| *g == name)
        .map(|(g, vs)| {
            let mut e = group_entry(g, &vs);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The type kubectl asks `/openapi/v2` for (it asks for no other).
pub const OPENAPI_V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: a Swagger 2.0 document with no definitions, in the protobuf encoding of
/// the OpenAPI v2 schema kubectl decodes. kubectl reads it to validate a `kind: List` item by
/// item; finding no type there, it leaves each item to the server's own field validation
/// (as it does with the v3 documents).
pub fn openapi_v2() -> Vec<u8> {
    // Document { swagger = 1: "2.0", info = 2: Info { title = 1, version = 2 } }.
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag << 3 | 2, u8::try_from(bytes.len()).expect("short")];
        out.extend_from_slice(bytes);
        out
    }
    let info = [field(1, b"Berth"), field(2, b"v1.32.0")].concat();
    [field(1, b"2.0"), field(2, &info)].concat()
}

/// `/openapi/v3`: one entry per served group-version.
pub fn openapi_v3_root(catalog: &Catalog) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    for (g, vs) in all_groups(catalog) {
        if g != crate::metrics::GROUP {
            gvs.extend(vs.into_iter().map(|v| (g, v)));
        }
    }
    for (g, v) in gvs {
        let p = gv_path(g, v);
        // kubectl keeps each document by its hash: a custom kind's changes with its kinds.
        let custom = catalog.of_group_version(g, v);
        let hash = if custom.is_empty() {
            env!("CARGO_PKG_VERSION").replace('.', "")
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for r in custom {
                (r.kind_name, r.plural, r.namespaced, r.status, r.scale).hash(&mut h);
            }
            format!("{:016x}", h.finish())
        };
        let url = format!("/openapi/v3/{p}?hash={hash}");
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ])
}

fn object_path(r: &Resource) -> String {
    let base = format!("/{}", gv_path(r.group, r.version));
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// `/openapi/v3/<api/v1 | apis/group/version>`: the write operations of each kind, marked
/// with their group-version-kind and the parameters the server honours.
pub fn openapi_v3_group(catalog: &Catalog, path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let mut paths = serde_json::Map::new();
    for r in served(catalog, group, version) {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind_name});
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind_name),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params(),
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            object_path(r),
            json!({"put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        let collection = object_path(r).trim_end_matches("/{name}").to_string();
        paths.insert(collection, json!({"post": op("post")}));
    }
    // The reviews are only created. kubectl learns that the server validates fields (and so
    // needs no schema of its own) from a PATCH operation's parameters, so one is listed.
    for (plural, kind, namespaced) in crate::authz::review::of_group_version(group, version) {
        let gvk = json!({"group": group, "version": version, "kind": kind});
        let base = format!("/{}", gv_path(group, version));
        let path = if namespaced {
            format!("{base}/namespaces/{{namespace}}/{plural}")
        } else {
            format!("{base}/{plural}")
        };
        let op = |verb: &str| {
            json!({"operationId": format!("{verb}{kind}"), "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk, "parameters": params(),
                "responses": {"201": {"description": "Created"}}})
        };
        paths.insert(path, json!({"post": op("post"), "patch": op("patch")}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Berth", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
