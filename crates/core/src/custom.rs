//! Custom resources: the kinds CustomResourceDefinitions add, served beside the built-in
//! ones. A [`Catalog`] holds every served version of every Established definition; the API
//! looks a path up there when the built-in table has no such resource.
//!
//! A custom [`Resource`] is made at run time but borrowed as `&'static` like the built-in
//! ones: its strings and the resource itself are interned, so a definition applied again
//! reuses what the first one made, and memory grows only with definitions that differ.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::kinds::str_at;
use crate::resources::{Kind, Resource};
use crate::validation::{self, FieldError};

/// The group of CustomResourceDefinitions themselves.
pub const GROUP: &str = "apiextensions.k8s.io";
/// The finalizer that keeps a deleted definition until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One column of `additionalPrinterColumns`.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// Where the `scale` subresource reads and writes (`.spec.replicas` and so on).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served version of a custom kind.
#[derive(Debug, Clone)]
pub struct CustomVersion {
    pub resource: &'static Resource,
    /// The version objects are stored in (the same group, kind and plural).
    pub storage: &'static Resource,
    /// The definition's name (`<plural>.<group>`).
    pub crd: String,
    /// `openAPIV3Schema`.
    pub schema: Value,
    pub columns: Vec<PrinterColumn>,
    pub scale: Option<ScalePaths>,
    /// `selectableFields`, as field selector labels (`spec.color`).
    pub selectable: Vec<String>,
}

fn intern(s: &str) -> &'static str {
    static STRINGS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = STRINGS.lock().expect("interned strings");
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_list(items: &[String]) -> &'static [&'static str] {
    static LISTS: Mutex<Vec<&'static [&'static str]>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().expect("interned lists");
    if let Some(found) = lists
        .iter()
        .find(|l| l.len() == items.len() && l.iter().zip(items).all(|(a, b)| *a == b))
    {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(
        items
            .iter()
            .map(|s| intern(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    lists.push(leaked);
    leaked
}

fn intern_resource(r: Resource) -> &'static Resource {
    static RESOURCES: Mutex<Vec<&'static Resource>> = Mutex::new(Vec::new());
    let mut all = RESOURCES.lock().expect("interned resources");
    if let Some(found) = all.iter().find(|x| ***x == r) {
        return found;
    }
    let leaked: &'static Resource = Box::leak(Box::new(r));
    all.push(leaked);
    leaked
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// Is the definition Established (its kinds may be served)?
pub fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == "Established" && str_at(c, "/status") == "True")
}

/// The served versions of a definition, as the API serves them.
pub fn versions_of(crd: &Value) -> Vec<CustomVersion> {
    let group = str_at(crd, "/spec/group");
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let plural = str_at(&names, "/plural");
    let kind = str_at(&names, "/kind");
    let singular = match str_at(&names, "/singular") {
        "" => kind.to_ascii_lowercase(),
        s => s.to_string(),
    };
    let namespaced = str_at(crd, "/spec/scope") != "Cluster";
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let make = |v: &Value| {
        intern_resource(Resource {
            kind: Kind::Custom,
            group: intern(group),
            version: intern(str_at(v, "/name")),
            kind_name: intern(kind),
            plural: intern(plural),
            singular: intern(&singular),
            namespaced,
            short_names: intern_list(&strings(&names, "/shortNames")),
            categories: intern_list(&strings(&names, "/categories")),
            status: v.pointer("/subresources/status").is_some(),
            scale: v.pointer("/subresources/scale").is_some(),
            generation: true,
        })
    };
    let Some(storage) = versions
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .map(make)
    else {
        return Vec::new();
    };
    versions
        .iter()
        .filter(|v| v.get("served") == Some(&Value::Bool(true)))
        .map(|v| CustomVersion {
            resource: make(v),
            storage,
            crd: str_at(crd, "/metadata/name").to_string(),
            schema: v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
            columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: str_at(c, "/name").to_string(),
                    type_: str_at(c, "/type").to_string(),
                    format: str_at(c, "/format").to_string(),
                    description: str_at(c, "/description").to_string(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    json_path: str_at(c, "/jsonPath").to_string(),
                })
                .collect(),
            scale: v.pointer("/subresources/scale").map(|s| ScalePaths {
                spec_replicas: str_at(s, "/specReplicasPath").to_string(),
                status_replicas: str_at(s, "/statusReplicasPath").to_string(),
                label_selector: Some(str_at(s, "/labelSelectorPath").to_string())
                    .filter(|p| !p.is_empty()),
            }),
            selectable: v
                .get("selectableFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|f| str_at(f, "/jsonPath").trim_start_matches('.').to_string())
                .collect(),
        })
        .collect()
}

/// Every custom resource served now.
#[derive(Debug, Default)]
pub struct Catalog {
    served: RwLock<Arc<Vec<Arc<CustomVersion>>>>,
}

impl Catalog {
    /// Serve exactly the Established definitions among `crds`.
    pub fn set<'a>(&self, crds: impl IntoIterator<Item = &'a Value>) {
        let all: Vec<Arc<CustomVersion>> = crds
            .into_iter()
            .filter(|c| established(c))
            .flat_map(versions_of)
            .map(Arc::new)
            .collect();
        *self.served.write().expect("catalog") = Arc::new(all);
    }

    /// Every served custom version.
    pub fn all(&self) -> Arc<Vec<Arc<CustomVersion>>> {
        self.served.read().expect("catalog").clone()
    }

    /// The custom resource at `/apis/<group>/<version>/<plural>`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<CustomVersion>> {
        self.all()
            .iter()
            .find(|c| {
                let r = c.resource;
                r.group == group && r.version == version && r.plural == plural
            })
            .cloned()
    }

    /// The resource at `/apis/<group>/<version>/<plural>`: a built-in one, or a custom one.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        crate::resources::find(group, version, plural)
            .or_else(|| self.find(group, version, plural).map(|c| c.resource))
    }

    /// What the catalog knows of a custom resource.
    pub fn of(&self, res: &Resource) -> Option<Arc<CustomVersion>> {
        self.find(res.group, res.version, res.plural)
    }

    /// The served custom resources of one group-version.
    pub fn of_group_version(&self, group: &str, version: &str) -> Vec<&'static Resource> {
        self.all()
            .iter()
            .map(|c| c.resource)
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Each custom group with its versions, the storage version first.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for c in self.all().iter() {
            let g = c.resource.group;
            let i = match out.iter().position(|(x, _)| *x == g) {
                Some(i) => i,
                None => {
                    out.push((g, vec![c.storage.version]));
                    out.len() - 1
                }
            };
            if !out[i].1.contains(&c.resource.version) {
                out[i].1.push(c.resource.version);
            }
        }
        out
    }
}

/// Check a CustomResourceDefinition (after defaulting) with field paths.
pub fn validate_definition(crd: &Value, errs: &mut Vec<FieldError>) {
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let kind = str_at(crd, "/spec/names/kind");
    if group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    } else if let Some(why) = validation::dns1123_subdomain(group) {
        errs.push(FieldError::invalid("spec.group", group, why));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    } else if let Some(why) = validation::dns1123_label(plural) {
        errs.push(FieldError::invalid("spec.names.plural", plural, why));
    }
    let singular = str_at(crd, "/spec/names/singular");
    if let Some(why) = (!singular.is_empty())
        .then(|| validation::dns1123_label(singular))
        .flatten()
    {
        errs.push(FieldError::invalid("spec.names.singular", singular, why));
    }
    if kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind"));
    }
    let list_kind = str_at(crd, "/spec/names/listKind");
    if !kind.is_empty() && !list_kind.is_empty() && list_kind == kind {
        errs.push(FieldError::invalid(
            "spec.names.listKind",
            list_kind,
            "kind and listKind may not be the same",
        ));
    }
    let name = str_at(crd, "/metadata/name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = str_at(crd, "/spec/scope");
    if !["Namespaced", "Cluster"].contains(&scope) {
        errs.push(FieldError::not_supported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            format!("{storage} storage versions"),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = str_at(v, "/name");
        if let Some(why) = validation::dns1123_label(vname) {
            errs.push(FieldError::invalid(format!("{at}.name"), vname, why));
        } else if !seen.insert(vname.to_string()) {
            errs.push(FieldError::duplicate(format!("{at}.name"), vname));
        }
        if v.get("storage") == Some(&Value::Bool(true))
            && v.get("served") != Some(&Value::Bool(true))
        {
            errs.push(FieldError::invalid(
                format!("{at}.served"),
                "false",
                "the storage version must be served",
            ));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push(FieldError::required(format!("{at}.schema.openAPIV3Schema"))),
            Some(s) => {
                crate::schema::check_structural(s, &format!("{at}.schema.openAPIV3Schema"), errs)
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            for (field, required) in [
                ("specReplicasPath", true),
                ("statusReplicasPath", true),
                ("labelSelectorPath", false),
            ] {
                let p = str_at(scale, &format!("/{field}"));
                let path = format!("{at}.subresources.scale.{field}");
                if p.is_empty() {
                    if required {
                        errs.push(FieldError::required(path));
                    }
                } else if !p.starts_with('.') {
                    errs.push(FieldError::invalid(
                        path,
                        p,
                        "should be a JSON path starting with '.'",
                    ));
                }
            }
        }
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cat = format!("{at}.additionalPrinterColumns[{j}]");
            if str_at(c, "/name").is_empty() {
                errs.push(FieldError::required(format!("{cat}.name")));
            }
            let ty = str_at(c, "/type");
            let types = ["integer", "number", "string", "boolean", "date"];
            if !types.contains(&ty) {
                errs.push(FieldError::not_supported(format!("{cat}.type"), ty, &types));
            }
            if str_at(c, "/jsonPath").is_empty() {
                errs.push(FieldError::required(format!("{cat}.jsonPath")));
            }
        }
    }
    let strategy = str_at(crd, "/spec/conversion/strategy");
    if !strategy.is_empty() && strategy != "None" {
        errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            strategy,
            &["None"],
        ));
    }
}

/// Defaults of a definition: its singular and list kind, the `None` conversion.
pub fn default_definition(crd: &mut Value) {
    let kind = str_at(crd, "/spec/names/kind").to_string();
    let names = crate::kinds::child(crate::kinds::child(crd, "spec"), "names");
    if str_at(names, "/singular").is_empty() && !kind.is_empty() {
        names["singular"] = Value::from(kind.to_ascii_lowercase());
    }
    if str_at(names, "/listKind").is_empty() && !kind.is_empty() {
        names["listKind"] = Value::from(format!("{kind}List"));
    }
    let spec = crate::kinds::child(crd, "spec");
    if spec.get("conversion").is_none() {
        spec["conversion"] = serde_json::json!({"strategy": "None"});
    }
    // Deleting the definition deletes its objects first (once it is being deleted, the
    // finalizer is the cleanup's to remove).
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let meta = crate::kinds::child(crd, "metadata");
    let finalizers = crate::kinds::child(meta, "finalizers");
    if !finalizers.is_array() {
        *finalizers = Value::Array(Vec::new());
    }
    let list = finalizers.as_array_mut().expect("an array");
    if !list.iter().any(|f| f == CLEANUP_FINALIZER) {
        list.push(Value::from(CLEANUP_FINALIZER));
    }
}

/// The value at a printer column's or scale's JSON path (`.spec.replicas`,
/// `.status.conditions[?(@.type=="Ready")].status`, `.spec.items[0]`), if there is one.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut cur = obj;
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inside = &r[..end];
            rest = &r[end + 1..];
            if let Ok(i) = inside.parse::<usize>() {
                cur = cur.get(i)?;
            } else if let Some(filter) = inside
                .strip_prefix("?(@.")
                .and_then(|f| f.strip_suffix(')'))
            {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|item| {
                    json_path(item, &format!(".{}", field.trim())).and_then(Value::as_str)
                        == Some(want)
                })?;
            } else {
                let key = inside.trim_matches(|c| c == '"' || c == '\'');
                cur = cur.get(key)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com", "scope": "Namespaced",
                "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                               "statusReplicasPath": ".status.replicas"}},
                     "additionalPrinterColumns": [{"name": "Spec", "type": "string", "jsonPath": ".spec.cronSpec"}]},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1alpha1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                ],
            },
            "status": {"conditions": [{"type": "Established", "status": "True"}]},
        })
    }

    #[test]
    fn an_established_definition_serves_its_served_versions() {
        let catalog = Catalog::default();
        let mut d = crd();
        default_definition(&mut d);
        let mut errs = Vec::new();
        validate_definition(&d, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(d["spec"]["names"]["singular"], "crontab");
        catalog.set([&d]);
        let v1 = catalog
            .find("stable.example.com", "v1", "crontabs")
            .unwrap();
        assert!(v1.resource.status && v1.resource.scale && v1.resource.namespaced);
        assert_eq!(v1.resource.short_names, ["ct"]);
        assert_eq!(v1.columns[0].json_path, ".spec.cronSpec");
        let beta = catalog
            .find("stable.example.com", "v1beta1", "crontabs")
            .unwrap();
        assert_eq!(beta.storage.version, "v1");
        assert!(catalog
            .find("stable.example.com", "v1alpha1", "crontabs")
            .is_none());
        assert_eq!(
            catalog.groups(),
            [("stable.example.com", vec!["v1", "v1beta1"])]
        );
        // The same definition again makes nothing new.
        catalog.set([&d]);
        assert!(std::ptr::eq(
            v1.resource,
            catalog
                .find("stable.example.com", "v1", "crontabs")
                .unwrap()
                .resource
        ));
        // Not Established: not served.
        d["status"] = json!({});
        catalog.set([&d]);
        assert!(catalog.all().is_empty());
    }

    #[test]
    fn a_bad_definition_is_refused_field_by_field() {
        let mut d = crd();
        d["metadata"]["name"] = json!("crontab.stable.example.com");
        d["spec"]["group"] = json!("nodots");
        d["spec"]["versions"][1]["storage"] = json!(true);
        d["spec"]["versions"][0]["additionalPrinterColumns"][0]["type"] = json!("text");
        let mut errs = Vec::new();
        validate_definition(&d, &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.group",
                "metadata.name",
                "spec.versions",
                "spec.versions[0].additionalPrinterColumns[0].type",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn json_paths_reach_fields_items_and_filtered_conditions() {
        let obj = json!({"spec": {"replicas": 3, "items": ["a", "b"]},
            "status": {"conditions": [{"type": "Synced", "status": "False"},
                                      {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&obj, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(json_path(&obj, ".spec.items[1]"), Some(&json!("b")));
        assert_eq!(
            json_path(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&obj, ".spec.missing"), None);
    }
}
