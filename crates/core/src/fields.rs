//! Field ownership for server-side apply, as Kubernetes' structured merge keeps it: sets of
//! field paths (`FieldsV1` trees) per manager, the set an applied configuration names, the
//! fields a write changed, the merge of an applied configuration into the live object, and
//! the removal of fields a manager stopped applying.
//!
//! Lists merge as Kubernetes' schemas say (`x-kubernetes-list-type`): containers, env,
//! volumes by `name`, container ports by `containerPort`+`protocol`, Service ports by
//! `port`+`protocol`, conditions by `type`, ...; finalizers as a set; every other list is
//! atomic (replaced whole, owned as one field), as are label selectors and node selectors.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A request header of Berth's: `Berth-Omit-Managed-Fields: true` answers objects without
/// `metadata.managedFields`. Berth's own loops send it: they never read them (kube-scheduler
/// strips them in its informers too), and a pod's entries double its size on every watch
/// event they decode.
pub const OMIT_MANAGED_FIELDS: &str = "berth-omit-managed-fields";

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// A field of an object (`f:name`).
    Field(String),
    /// An element of a list-map, by its key fields (`k:{"name":"web"}`, compact JSON).
    Key(String),
    /// An element of a set-list, by value (`v:"x"`).
    Value(String),
}

/// A set of field paths, as a tree: a node is in the set when `member` (FieldsV1's `.` for a
/// node with children, `{}` for a leaf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<Step, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Read a `fieldsV1` value.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let Value::Object(m) = v else {
            return Err("fieldsV1 must be an object".into());
        };
        let mut set = FieldSet::default();
        for (k, child) in m {
            if k == "." {
                set.member = true;
                continue;
            }
            let step = if let Some(f) = k.strip_prefix("f:") {
                Step::Field(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                let parsed: Value = serde_json::from_str(key)
                    .map_err(|e| format!("the key {key:?} is not JSON: {e}"))?;
                Step::Key(parsed.to_string())
            } else if let Some(val) = k.strip_prefix("v:") {
                let parsed: Value = serde_json::from_str(val)
                    .map_err(|e| format!("the value {val:?} is not JSON: {e}"))?;
                Step::Value(parsed.to_string())
            } else {
                return Err(format!(
                    "{k:?} is not a field path element (f:, k:, v: or .)"
                ));
            };
            let mut sub = FieldSet::from_fields_v1(child)?;
            if sub.children.is_empty() {
                sub.member = true;
            }
            set.children.insert(step, sub);
        }
        Ok(set)
    }

    /// As a `fieldsV1` value.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (step, child) in &self.children {
            if child.is_empty() {
                continue;
            }
            let k = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Value(v) => format!("v:{v}"),
            };
            m.insert(k, child.to_fields_v1());
        }
        Value::Object(m)
    }

    fn child(&mut self, step: Step) -> &mut FieldSet {
        self.children.entry(step).or_default()
    }

    /// Every member of `other` added.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (step, sub) in &other.children {
            self.child(step.clone()).union(sub);
        }
    }

    /// The members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (step, sub) in &self.children {
            let d = match other.children.get(step) {
                Some(o) => sub.difference(o),
                None => sub.clone(),
            };
            if !d.is_empty() {
                out.children.insert(step.clone(), d);
            }
        }
        out
    }

    /// The members of both.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (step, sub) in &self.children {
            if let Some(o) = other.children.get(step) {
                let i = sub.intersection(o);
                if !i.is_empty() {
                    out.children.insert(step.clone(), i);
                }
            }
        }
        out
    }

    /// Does the set hold this node or anything under it?
    fn holds_any(&self) -> bool {
        !self.is_empty()
    }

    /// The members as Kubernetes writes paths in messages:
    /// `.spec.containers[name="web"].image`.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(String::new(), &mut out);
        out
    }

    fn collect_paths(&self, at: String, out: &mut Vec<String>) {
        if self.member {
            out.push(at.clone());
        }
        for (step, sub) in &self.children {
            let next = match step {
                Step::Field(f) => format!("{at}.{f}"),
                Step::Key(k) => {
                    let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                    let parts: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{at}[{}]", parts.join(","))
                }
                Step::Value(v) => format!("{at}[={v}]"),
            };
            sub.collect_paths(next, out);
        }
    }

    /// Drop the fields no manager tracks (identity, bookkeeping) and the `reset` top-level
    /// fields (status for the main resource, spec for the status subresource).
    pub fn strip(&mut self, reset: &[&str]) {
        for f in ["apiVersion", "kind"].iter().chain(reset) {
            self.children.remove(&Step::Field(f.to_string()));
        }
        if let Some(meta) = self.children.get_mut(&Step::Field("metadata".into())) {
            meta.member = false;
            for f in [
                "name",
                "namespace",
                "creationTimestamp",
                "selfLink",
                "uid",
                "generation",
                "managedFields",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.children.remove(&Step::Field(f.into()));
            }
        }
    }
}

impl Step {
    /// The step as a `fieldsV1` key.
    fn encoded(&self) -> String {
        match self {
            Step::Field(f) => format!("f:{f}"),
            Step::Key(k) => format!("k:{k}"),
            Step::Value(v) => format!("v:{v}"),
        }
    }
}

/// Take the members of `set` out of a `fieldsV1` tree in place, walking only `set` (a write
/// changes a few fields; an object's entries hold many).
pub fn subtract_from_fields_v1(tree: &mut Map<String, Value>, set: &FieldSet) {
    for (step, sub) in &set.children {
        let key = step.encoded();
        let Some(Value::Object(child)) = tree.get_mut(&key) else {
            continue;
        };
        if child.is_empty() {
            // A leaf member.
            if sub.member {
                tree.remove(&key);
            }
            continue;
        }
        if sub.member {
            child.remove(".");
        }
        subtract_from_fields_v1(child, sub);
        if child.is_empty() {
            tree.remove(&key);
        } else if child.len() == 1 && child.contains_key(".") {
            child.clear(); // a member left without children is a leaf
        }
    }
}

/// Add the members of `set` to a `fieldsV1` tree in place.
pub fn add_to_fields_v1(tree: &mut Map<String, Value>, set: &FieldSet) {
    for (step, sub) in &set.children {
        if sub.is_empty() {
            continue;
        }
        let key = step.encoded();
        let existed = tree.contains_key(&key);
        let child = tree.entry(key).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(child) = child else {
            continue;
        };
        let was_leaf = existed && child.is_empty();
        let has_children = sub.children.values().any(|c| !c.is_empty());
        if has_children {
            add_to_fields_v1(child, sub);
            if sub.member || was_leaf {
                child.insert(".".into(), Value::Object(Map::new()));
            }
        } else if !child.is_empty() && sub.member {
            child.insert(".".into(), Value::Object(Map::new()));
        }
    }
}

/// How a list merges and is owned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListType {
    /// Elements are objects known by these key fields.
    Map(&'static [&'static str]),
    /// Elements are scalars, owned one by one.
    Set,
    /// The list is one value.
    Atomic,
}

/// The list type of field `name` (ports by a sample element: a container's or a Service's).
fn list_type(name: &str, items: &[Value]) -> ListType {
    match name {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "claims" => ListType::Map(&["name"]),
        "volumeMounts" => ListType::Map(&["mountPath"]),
        "volumeDevices" => ListType::Map(&["devicePath"]),
        "hostAliases" => ListType::Map(&["ip"]),
        "topologySpreadConstraints" => ListType::Map(&["topologyKey", "whenUnsatisfiable"]),
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => {
            ListType::Map(&["containerPort", "protocol"])
        }
        "ports" if items.iter().all(|i| i.get("port").is_some()) && !items.is_empty() => {
            ListType::Map(&["port", "protocol"])
        }
        "ownerReferences" => ListType::Map(&["uid"]),
        "conditions" | "addresses" => ListType::Map(&["type"]),
        "podIPs" | "hostIPs" => ListType::Map(&["ip"]),
        "finalizers" | "podCIDRs" => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// Objects owned as one value wherever they appear.
fn atomic_object(name: &str) -> bool {
    matches!(
        name,
        "selector"
            | "nodeSelector"
            | "configMapKeyRef"
            | "secretKeyRef"
            | "fieldRef"
            | "resourceFieldRef"
    )
}

/// An element's key (compact JSON, fields in name order); `protocol` defaults to TCP, as
/// Kubernetes' schema defaults it.
fn element_key(keys: &[&str], item: &Value) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        match item.get(*k) {
            Some(v) if !v.is_null() => {
                m.insert(k.to_string(), v.clone());
            }
            _ if *k == "protocol" => {
                m.insert(k.to_string(), Value::String("TCP".into()));
            }
            _ => {}
        }
    }
    (!m.is_empty()).then(|| Value::Object(m).to_string())
}

/// A list-map element without any of its key fields.
#[derive(Debug, thiserror::Error)]
#[error("{path}: an element of a list keyed by {keys} has none of them")]
pub struct MissingKey {
    pub path: String,
    pub keys: String,
}

/// The fields an applied configuration names (its owner's set after the apply).
pub fn applied(config: &Value) -> Result<FieldSet, MissingKey> {
    let mut set = FieldSet::default();
    if let Value::Object(m) = config {
        applied_object(m, &mut set, "")?;
    }
    Ok(set)
}

fn applied_object(m: &Map<String, Value>, set: &mut FieldSet, at: &str) -> Result<(), MissingKey> {
    for (k, v) in m {
        let path = format!("{at}.{k}");
        let child = set.child(Step::Field(k.clone()));
        applied_value(k, v, child, &path)?;
    }
    Ok(())
}

fn applied_value(name: &str, v: &Value, set: &mut FieldSet, path: &str) -> Result<(), MissingKey> {
    match v {
        Value::Object(m) if !m.is_empty() && !atomic_object(name) => applied_object(m, set, path),
        Value::Array(items) => match list_type(name, items) {
            ListType::Map(keys) => {
                for item in items {
                    let key = element_key(keys, item).ok_or_else(|| MissingKey {
                        path: path.to_string(),
                        keys: keys.join("+"),
                    })?;
                    let el = set.child(Step::Key(key));
                    el.member = true;
                    if let Value::Object(m) = item {
                        applied_object(m, el, path)?;
                    }
                }
                if items.is_empty() {
                    set.member = true;
                }
                Ok(())
            }
            ListType::Set => {
                for item in items {
                    set.child(Step::Value(item.to_string())).member = true;
                }
                if items.is_empty() {
                    set.member = true;
                }
                Ok(())
            }
            ListType::Atomic => {
                set.member = true;
                Ok(())
            }
        },
        _ => {
            set.member = true;
            Ok(())
        }
    }
}

/// Every node of `v` (itself included) as members: what a write that added `v` owns.
fn all_of(name: &str, v: &Value, set: &mut FieldSet) {
    set.member = true;
    match v {
        Value::Object(m) if !atomic_object(name) => {
            for (k, sub) in m {
                all_of(k, sub, set.child(Step::Field(k.clone())));
            }
        }
        Value::Array(items) => match list_type(name, items) {
            ListType::Map(keys) => {
                for item in items {
                    if let Some(key) = element_key(keys, item) {
                        let el = set.child(Step::Key(key));
                        el.member = true;
                        if let Value::Object(m) = item {
                            for (k, sub) in m {
                                all_of(k, sub, el.child(Step::Field(k.clone())));
                            }
                        }
                    }
                }
            }
            ListType::Set => {
                for item in items {
                    set.child(Step::Value(item.to_string())).member = true;
                }
            }
            ListType::Atomic => {}
        },
        _ => {}
    }
}

/// What a write from `old` to `new` added or modified, and what it removed.
pub fn changed(old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    let (mut added, mut removed) = (FieldSet::default(), FieldSet::default());
    diff("", old, new, &mut added, &mut removed);
    (added, removed)
}

fn diff(name: &str, old: &Value, new: &Value, added: &mut FieldSet, removed: &mut FieldSet) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) if !atomic_object(name) => {
            // Who owns what is not itself owned.
            for (k, nv) in n.iter().filter(|(k, _)| *k != "managedFields") {
                match o.get(k) {
                    // Most of an object is unchanged by a write: no allocation for that.
                    Some(ov) if ov == nv => {}
                    None => all_of(k, nv, added.child(Step::Field(k.clone()))),
                    Some(ov) => {
                        let step = Step::Field(k.clone());
                        let (mut a, mut r) = (FieldSet::default(), FieldSet::default());
                        diff(k, ov, nv, &mut a, &mut r);
                        if !a.is_empty() {
                            added.children.insert(step.clone(), a);
                        }
                        if !r.is_empty() {
                            removed.children.insert(step, r);
                        }
                    }
                }
            }
            for k in o
                .keys()
                .filter(|k| !n.contains_key(*k) && *k != "managedFields")
            {
                removed.child(Step::Field(k.clone())).member = true;
            }
        }
        _ if old == new => {}
        (Value::Array(o), Value::Array(n)) => {
            match list_type(name, if n.is_empty() { o } else { n }) {
                ListType::Map(keys) => {
                    let (oi, ni) = (index_by(keys, o), index_by(keys, n));
                    for (key, nv) in &ni {
                        let step = Step::Key(key.clone());
                        match oi.get(key) {
                            Some(ov) if ov == nv => {}
                            None => {
                                let el = added.child(step);
                                el.member = true;
                                if let Value::Object(m) = nv {
                                    for (k, sub) in m {
                                        all_of(k, sub, el.child(Step::Field(k.clone())));
                                    }
                                }
                            }
                            Some(ov) => {
                                let (mut a, mut r) = (FieldSet::default(), FieldSet::default());
                                diff("", ov, nv, &mut a, &mut r);
                                if !a.is_empty() {
                                    added.children.insert(step.clone(), a);
                                }
                                if !r.is_empty() {
                                    removed.children.insert(step, r);
                                }
                            }
                        }
                    }
                    for key in oi.keys().filter(|k| !ni.contains_key(*k)) {
                        removed.child(Step::Key(key.clone())).member = true;
                    }
                }
                ListType::Set => {
                    let (os, ns): (Vec<String>, Vec<String>) = (
                        o.iter().map(Value::to_string).collect(),
                        n.iter().map(Value::to_string).collect(),
                    );
                    for v in ns.iter().filter(|v| !os.contains(v)) {
                        added.child(Step::Value(v.clone())).member = true;
                    }
                    for v in os.iter().filter(|v| !ns.contains(v)) {
                        removed.child(Step::Value(v.clone())).member = true;
                    }
                }
                ListType::Atomic => {
                    if o != n {
                        added.member = true;
                    }
                }
            }
        }
        (o, n) => {
            if o != n {
                all_of(name, n, added);
            }
        }
    }
}

/// A list-map's elements by key.
fn index_by<'a>(keys: &[&str], items: &'a [Value]) -> BTreeMap<String, &'a Value> {
    items
        .iter()
        .filter_map(|i| element_key(keys, i).map(|k| (k, i)))
        .collect()
}

/// `config` merged into `live`: objects field by field, list-maps element by element (new
/// elements after the live ones), set-lists as a union; atomic lists and scalars replaced.
pub fn merge(live: &Value, config: &Value) -> Value {
    merge_named("", live, config)
}

fn merge_named(name: &str, live: &Value, config: &Value) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !atomic_object(name) => {
            let mut out = l.clone();
            for (k, cv) in c {
                let merged = match l.get(k) {
                    Some(lv) => merge_named(k, lv, cv),
                    None => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => {
            match list_type(name, if c.is_empty() { l } else { c }) {
                ListType::Map(keys) => {
                    let mut out = l.clone();
                    for item in c {
                        let key = element_key(keys, item);
                        match out
                            .iter_mut()
                            .find(|i| key.is_some() && element_key(keys, i) == key)
                        {
                            Some(existing) => *existing = merge_named("", existing, item),
                            None => out.push(item.clone()),
                        }
                    }
                    Value::Array(out)
                }
                ListType::Set => {
                    let mut out = l.clone();
                    for item in c {
                        if !out.contains(item) {
                            out.push(item.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListType::Atomic => config.clone(),
            }
        }
        _ => config.clone(),
    }
}

/// Remove from `obj` the members of `stale` that no one in `kept` owns: a field stays while
/// `kept` holds it or anything under it; a list-map element stays only while `kept` holds
/// the element itself.
pub fn prune(obj: &mut Value, stale: &FieldSet, kept: &FieldSet) {
    prune_named("", obj, stale, kept)
}

fn prune_named(name: &str, obj: &mut Value, stale: &FieldSet, kept: &FieldSet) {
    let empty = FieldSet::default();
    match obj {
        Value::Object(m) => {
            for (step, sub) in &stale.children {
                let Step::Field(f) = step else { continue };
                let k = kept.children.get(step).unwrap_or(&empty);
                if sub.member && !k.holds_any() {
                    m.remove(f);
                } else if let Some(v) = m.get_mut(f) {
                    prune_named(f, v, sub, k);
                }
            }
        }
        Value::Array(items) => {
            let kind = list_type(name, items);
            let mut drop = Vec::new();
            for (i, item) in items.iter_mut().enumerate() {
                let step = match kind {
                    ListType::Map(keys) => match element_key(keys, item) {
                        Some(k) => Step::Key(k),
                        None => continue,
                    },
                    ListType::Set => Step::Value(item.to_string()),
                    ListType::Atomic => return,
                };
                let Some(sub) = stale.children.get(&step) else {
                    continue;
                };
                let k = kept.children.get(&step).unwrap_or(&empty);
                if sub.member && !k.member {
                    drop.push(i);
                } else {
                    prune_named("", item, sub, k);
                }
            }
            for i in drop.into_iter().rev() {
                items.remove(i);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i64, labels: Value, ports: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "nginx", "image": "nginx", "ports": ports}]}}}
        })
    }

    #[test]
    fn an_applied_configuration_owns_its_leaves_elements_and_atomic_values() {
        let mut set = applied(&deployment(
            2,
            json!({"app": "web"}),
            json!([{"containerPort": 80}]),
        ))
        .unwrap();
        set.strip(&["status"]);
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}}}}}}}})
        );
        // And back.
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()).unwrap(), set);
        assert_eq!(
            applied(&json!({"spec": {"containers": [{"image": "x"}]}}))
                .unwrap_err()
                .to_string(),
            ".spec.containers: an element of a list keyed by name has none of them"
        );
    }

    #[test]
    fn a_write_owns_what_it_added_or_changed_and_gives_up_what_it_removed() {
        let old = deployment(
            2,
            json!({"app": "web", "tier": "fe"}),
            json!([{"containerPort": 80}]),
        );
        let new = deployment(
            3,
            json!({"app": "web", "team": "a"}),
            json!([{"containerPort": 80}, {"containerPort": 443}]),
        );
        let (added, removed) = changed(&old, &new);
        let mut paths = added.paths();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                ".metadata.labels.team",
                ".spec.replicas",
                r#".spec.template.spec.containers[name="nginx"].ports[containerPort=443,protocol="TCP"]"#,
                r#".spec.template.spec.containers[name="nginx"].ports[containerPort=443,protocol="TCP"].containerPort"#,
            ]
        );
        assert_eq!(removed.paths(), vec![".metadata.labels.tier"]);
        let (added, removed) = changed(&new, &new);
        assert!(added.is_empty() && removed.is_empty());
    }

    #[test]
    fn merge_keeps_what_the_configuration_does_not_name() {
        let live = deployment(
            2,
            json!({"app": "web", "other": "x"}),
            json!([{"containerPort": 80, "name": "http"}]),
        );
        let config = json!({"metadata": {"labels": {"app": "web2"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP", "hostPort": 8080}]},
                {"name": "side", "image": "busybox"}]}}}});
        let merged = merge(&live, &config);
        assert_eq!(
            merged["metadata"]["labels"],
            json!({"app": "web2", "other": "x"})
        );
        let cs = &merged["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx");
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP", "hostPort": 8080}])
        );
        assert_eq!(cs[1]["name"], "side");
        assert_eq!(merged["spec"]["replicas"], 2);
    }

    #[test]
    fn prune_removes_stale_fields_others_do_not_hold() {
        let mut obj = deployment(
            2,
            json!({"app": "web", "gone": "x", "shared": "y"}),
            json!([{"containerPort": 80}, {"containerPort": 81}]),
        );
        obj["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "busybox"}));
        let prev = applied(&obj).unwrap();
        let mut now = obj.clone();
        now["metadata"]["labels"] = json!({"app": "web"});
        now["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]);
        let stale = prev.difference(&applied(&now).unwrap());
        // Another manager holds the `shared` label.
        let kept = applied(&json!({"metadata": {"labels": {"shared": "y"}}})).unwrap();
        prune(&mut obj, &stale, &kept);
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app": "web", "shared": "y"})
        );
        let cs = obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 1, "{cs:?}");
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
    }

    #[test]
    fn editing_fields_v1_in_place_agrees_with_the_set_operations() {
        let a = applied(&deployment(
            2,
            json!({"app": "web", "x": "1"}),
            json!([{"containerPort": 80}, {"containerPort": 81}]),
        ))
        .unwrap();
        let b = applied(&json!({"metadata": {"labels": {"x": "2", "y": "3"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [
                {"name": "nginx", "ports": [{"containerPort": 81}]}]}}}}))
        .unwrap();
        let (c, _) = changed(&json!({}), &deployment(1, json!({"z": "1"}), json!([])));
        for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &b)] {
            let mut tree = x.to_fields_v1().as_object().unwrap().clone();
            subtract_from_fields_v1(&mut tree, y);
            assert_eq!(
                FieldSet::from_fields_v1(&Value::Object(tree)).unwrap(),
                FieldSet::from_fields_v1(&x.difference(y).to_fields_v1()).unwrap()
            );
            let mut tree = x.to_fields_v1().as_object().unwrap().clone();
            add_to_fields_v1(&mut tree, y);
            let mut union = x.clone();
            union.union(y);
            assert_eq!(
                FieldSet::from_fields_v1(&Value::Object(tree)).unwrap(),
                FieldSet::from_fields_v1(&union.to_fields_v1()).unwrap()
            );
        }
    }

    #[test]
    fn sets_and_atomic_lists() {
        let (added, removed) = changed(
            &json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"tolerations": [{"key": "x"}]}}),
            &json!({"metadata": {"finalizers": ["b", "c"]}, "spec": {"tolerations": [{"key": "y"}]}}),
        );
        assert_eq!(
            added.paths(),
            vec![r#".metadata.finalizers[="c"]"#, ".spec.tolerations"]
        );
        assert_eq!(removed.paths(), vec![r#".metadata.finalizers[="a"]"#]);
        assert_eq!(
            merge(&json!({"finalizers": ["a"]}), &json!({"finalizers": ["b"]})),
            json!({"finalizers": ["a", "b"]})
        );
    }
}
