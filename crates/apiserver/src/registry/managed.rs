//! `metadata.managedFields`: who owns which fields of an object, kept on every write as
//! Kubernetes keeps it. A create or update makes its manager the owner of what it added or
//! changed (taking it from the others); an apply makes its manager own exactly what its
//! configuration names, merges it into the object, removes what the manager applied before
//! and no one else holds, and refuses (409) to change a field another manager owns unless
//! forced (`berth_core::fields` does the set work).

use berth_core::fields::{self, FieldSet};
use serde_json::{json, Map, Value};

use crate::status::ApiError;

/// Whether writes record managedFields: always, unless `BERTH_MANAGED_FIELDS=off` is set in
/// the server's environment (for measuring what tracking costs; applies still track).
pub fn tracking() -> bool {
    static ON: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("BERTH_MANAGED_FIELDS").map_or(true, |v| v != "off")
    });
    *ON
}

/// One manager's entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    fn same_owner(
        &self,
        manager: &str,
        operation: &str,
        api_version: &str,
        sub: Option<&str>,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == sub
            // An Apply entry is one per manager whatever the version.
            && (operation == "Apply" || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }

    /// How a conflict names this manager: `"m"`, with ` using <version>` for an update and
    /// ` with subresource "s"` for a subresource's.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        s
    }
}

/// At most this many Update entries are kept; the oldest go into `ancient-changes`.
const MAX_UPDATE_MANAGERS: usize = 10;

/// Fold the oldest Update entries into one `ancient-changes` entry (per apiVersion), as
/// Kubernetes does, so free-form manager names cannot grow an object without bound.
fn cap_updates(entries: &mut Vec<Entry>) {
    let updates = entries.iter().filter(|e| e.operation == "Update").count();
    if updates <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == "Update" && entries[i].manager != "ancient-changes")
        .collect();
    order.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    // The excess, and one more if the ancient entry is still to be made (it takes a place).
    let has_ancient = entries.iter().any(|e| e.manager == "ancient-changes");
    let excess = updates - MAX_UPDATE_MANAGERS + usize::from(!has_ancient);
    let fold: Vec<usize> = order.into_iter().take(excess).collect();
    let mut folded: Vec<Entry> = Vec::new();
    for &i in &fold {
        let e = &entries[i];
        match folded.iter_mut().find(|a| a.api_version == e.api_version) {
            Some(a) => a.set.union(&e.set),
            None => folded.push(Entry {
                manager: "ancient-changes".into(),
                operation: "Update".into(),
                api_version: e.api_version.clone(),
                time: None,
                subresource: None,
                set: e.set.clone(),
            }),
        }
    }
    let mut i = 0;
    entries.retain(|_| {
        i += 1;
        !fold.contains(&(i - 1))
    });
    for a in folded {
        match entries
            .iter_mut()
            .find(|e| e.manager == "ancient-changes" && e.api_version == a.api_version)
        {
            Some(e) => e.set.union(&a.set),
            None => entries.push(a),
        }
    }
}

/// The entries an object carries (`None` when it has no `managedFields`: it is not tracked).
fn read(obj: &Value) -> Result<Option<Vec<Entry>>, ApiError> {
    let Some(list) = obj.pointer("/metadata/managedFields") else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err(bad("metadata.managedFields", "must be a list"));
    };
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = |f: &str| format!("metadata.managedFields[{i}].{f}");
        let text = |f: &str| e.get(f).and_then(Value::as_str).map(String::from);
        let operation = text("operation").unwrap_or_default();
        if operation != "Apply" && operation != "Update" {
            return Err(bad(&at("operation"), "must be `Apply` or `Update`"));
        }
        let api_version = text("apiVersion").unwrap_or_default();
        if api_version.is_empty() {
            return Err(bad(&at("apiVersion"), "must not be empty"));
        }
        let set = match e.get("fieldsV1") {
            Some(v) => FieldSet::from_fields_v1(v).map_err(|m| bad(&at("fieldsV1"), &m))?,
            None => FieldSet::default(),
        };
        out.push(Entry {
            manager: text("manager").unwrap_or_default(),
            operation,
            api_version,
            time: text("time"),
            subresource: text("subresource").filter(|s| !s.is_empty()),
            set,
        });
    }
    Ok(Some(out))
}

fn bad(field: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("{field}: Invalid value: {why}"))
}

/// Put `entries` on `obj`: empty ones dropped, Apply before Update, then by time, manager.
fn write(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    cap_updates(&mut entries);
    entries.sort_by(|a, b| {
        (a.operation != "Apply")
            .cmp(&(b.operation != "Apply"))
            .then_with(|| a.time.cmp(&b.time))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
    });
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

fn take(obj: &mut Value) -> Option<Value> {
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("managedFields"))
}

/// Who writes, and where.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `status` for the status subresource.
    pub subresource: Option<&'a str>,
    /// Top-level fields this endpoint does not write (status for the main resource of a kind
    /// with a status subresource; spec for its status).
    pub reset: &'a [&'a str],
    pub now: &'a str,
}

impl Writer<'_> {
    fn entry<'e>(&self, entries: &'e mut Vec<Entry>, operation: &str) -> &'e mut Entry {
        let at = entries.iter().position(|e| {
            e.same_owner(self.manager, operation, self.api_version, self.subresource)
        });
        match at {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    manager: self.manager.to_string(),
                    operation: operation.to_string(),
                    api_version: self.api_version.to_string(),
                    time: None,
                    subresource: self.subresource.map(String::from),
                    set: FieldSet::default(),
                });
                entries.last_mut().expect("just pushed")
            }
        }
    }
}

/// A create: its manager owns every field of the new object (as an update from nothing).
pub fn on_create(obj: &mut Value, w: &Writer) {
    take(obj);
    if !tracking() {
        return;
    }
    let skeleton = json!({"metadata": {}, "spec": {}});
    let (mut added, _) = fields::changed(&skeleton, obj);
    added.strip(w.reset);
    let mut entries = Vec::new();
    let e = w.entry(&mut entries, "Update");
    e.set = added;
    e.time = Some(w.now.to_string());
    write(obj, entries);
}

/// An update (PUT, or a patch that is not an apply) from `old` to `new`: its manager owns
/// what it added or changed, which the others give up; what it removed goes from everyone.
/// `managedFields` the client sent that differ from the stored ones replace them (`[]`
/// clears them); an object that has none is not tracked.
pub fn on_update(old: &Value, new: &mut Value, w: &Writer) -> Result<(), ApiError> {
    let stored = old.pointer("/metadata/managedFields");
    if !tracking() {
        take(new);
        if let Some(m) = stored {
            new["metadata"]["managedFields"] = m.clone();
        }
        return Ok(());
    }
    let sent = take(new).filter(|v| !v.is_null());
    let (base, from_client) = match (sent, stored) {
        (Some(s), st) if Some(&s) != st => (s, true),
        (_, Some(st)) => (st.clone(), false),
        (_, None) => return Ok(()),
    };
    let (mut added, mut removed) = fields::changed(old, new);
    added.strip(w.reset);
    removed.strip(w.reset);
    if from_client {
        // Checked and written afresh: what a client sends is not trusted as stored.
        let mut holder = json!({"metadata": {"managedFields": base}});
        let Some(mut entries) = read(&holder)? else {
            return Ok(());
        };
        if entries.is_empty() {
            return Ok(());
        }
        take_over(&mut entries, &added, &removed, w);
        write(&mut holder, entries);
        if let Some(m) = holder["metadata"].get("managedFields").cloned() {
            new["metadata"]["managedFields"] = m;
        }
        return Ok(());
    }
    let Value::Array(mut list) = base else {
        return Ok(());
    };
    if list.is_empty() {
        return Ok(());
    }
    if !added.is_empty() || !removed.is_empty() {
        // The stored entries are edited in place along the (few) fields this write changed,
        // rather than each read into a set and written back: this runs on every write.
        let mut gone = added.clone();
        gone.union(&removed);
        let text = |e: &Value, f: &str| e.get(f).and_then(Value::as_str).map(String::from);
        let mut mine = None;
        for (i, e) in list.iter_mut().enumerate() {
            let is_mine = text(e, "manager").as_deref() == Some(w.manager)
                && text(e, "operation").as_deref() == Some("Update")
                && text(e, "apiVersion").as_deref() == Some(w.api_version)
                && text(e, "subresource").filter(|s| !s.is_empty()).as_deref() == w.subresource;
            let Some(Value::Object(tree)) = e.get_mut("fieldsV1") else {
                continue;
            };
            if is_mine {
                fields::subtract_from_fields_v1(tree, &removed);
                fields::add_to_fields_v1(tree, &added);
                mine = Some(i);
            } else {
                fields::subtract_from_fields_v1(tree, &gone);
            }
        }
        match mine {
            Some(i) => list[i]["time"] = json!(w.now),
            None if !added.is_empty() => list.push(
                Entry {
                    manager: w.manager.to_string(),
                    operation: "Update".into(),
                    api_version: w.api_version.to_string(),
                    time: Some(w.now.to_string()),
                    subresource: w.subresource.map(String::from),
                    set: added,
                }
                .to_json(),
            ),
            None => {}
        }
        list.retain(|e| {
            e.get("fieldsV1")
                .is_some_and(|f| f.as_object().is_some_and(|m| !m.is_empty()))
        });
        if mine.is_none() {
            // A new manager: the cap and the order are kept on the full path.
            let mut holder = json!({"metadata": {"managedFields": list}});
            let entries = read(&holder)?.unwrap_or_default();
            write(&mut holder, entries);
            list = match holder["metadata"].get_mut("managedFields").map(Value::take) {
                Some(Value::Array(l)) => l,
                _ => Vec::new(),
            };
        }
    }
    if !list.is_empty() {
        new["metadata"]["managedFields"] = Value::Array(list);
    }
    Ok(())
}

/// An update's ownership: its manager owns what it added or changed, which the others give
/// up; what it removed goes from everyone.
fn take_over(entries: &mut Vec<Entry>, added: &FieldSet, removed: &FieldSet, w: &Writer) {
    if added.is_empty() && removed.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        e.set = e.set.difference(added).difference(removed);
    }
    let e = w.entry(entries, "Update");
    e.set.union(added);
    e.time = Some(w.now.to_string());
}

/// An apply of `config` by `w.manager` to `live` (`Value::Null` when the object is new):
/// the merged object with its managedFields, or a 409 naming each conflict.
pub fn on_apply(live: &Value, config: &Value, w: &Writer, force: bool) -> Result<Value, ApiError> {
    let mut live = live.clone();
    let stored = take(&mut live);
    let mut config = config.clone();
    if take(&mut config).is_some_and(|m| !m.is_null()) {
        return Err(ApiError::bad_request(
            "metadata.managedFields must be nil in an applied configuration",
        ));
    }
    let mut applied = fields::applied(&config).map_err(|e| ApiError::bad_request(e.to_string()))?;
    applied.strip(w.reset);
    let mut entries = match stored {
        Some(v) => read(&json!({"metadata": {"managedFields": v}}))?.unwrap_or_default(),
        None => Vec::new(),
    };
    let exists = !live.is_null();
    if exists && entries.is_empty() {
        // Fields set before anyone applied belong to one manager, so that the first apply
        // conflicts with them as it would with their writer.
        let (mut before, _) = fields::changed(&json!({"metadata": {}, "spec": {}}), &live);
        before.strip(w.reset);
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: "Update".into(),
            api_version: w.api_version.to_string(),
            time: None,
            subresource: None,
            set: before,
        });
    }
    let mut merged = if exists {
        fields::merge(&live, &config)
    } else {
        config.clone()
    };
    let (mut changes, _) = fields::changed(&live, &merged);
    // What this endpoint does not write (status through the main resource) is no conflict.
    changes.strip(w.reset);
    let mine = |e: &Entry| e.same_owner(w.manager, "Apply", w.api_version, w.subresource);
    // kubectl moving from client-side to server-side apply takes over from its client-side
    // manager, without a conflict, the fields its last client-side apply set (as Kubernetes
    // lets it); from any other manager they conflict as usual.
    let last_applied = (w.manager == "kubectl")
        .then(|| last_applied_fields(&live, w.reset))
        .flatten()
        .unwrap_or_default();
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        let clash = e.set.intersection(&changes);
        if clash.is_empty() {
            continue;
        }
        let from_client_side = e.manager == "kubectl-client-side-apply" && e.operation == "Update";
        let (taken, refused) = if force {
            (clash, FieldSet::default())
        } else if !from_client_side {
            (FieldSet::default(), clash)
        } else {
            let refused = clash.difference(&last_applied);
            (clash.intersection(&last_applied), refused)
        };
        e.set = e.set.difference(&taken);
        conflicts.extend(refused.paths().into_iter().map(|p| (e.describe(), p)));
    }
    if !conflicts.is_empty() {
        return Err(conflict(conflicts));
    }
    // What this manager applied before and no longer does goes, unless another holds it.
    let previous = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut others = FieldSet::default();
    for e in entries.iter().filter(|e| !mine(e)) {
        others.union(&e.set);
    }
    fields::prune(&mut merged, &previous.difference(&applied), &others);
    let (_, removed) = fields::changed(&live, &merged);
    for e in entries.iter_mut() {
        e.set = e.set.difference(&removed);
    }
    let changed_object = merged != live;
    let e = w.entry(&mut entries, "Apply");
    let changed_set = e.set != applied;
    e.set = applied;
    if changed_object || changed_set || e.time.is_none() {
        e.time = Some(w.now.to_string());
    }
    if !merged.get("metadata").is_some_and(Value::is_object) {
        merged["metadata"] = json!({});
    }
    write(&mut merged, entries);
    Ok(merged)
}

/// The fields of the object's last client-side apply
/// (`kubectl.kubernetes.io/last-applied-configuration`), if it has one.
fn last_applied_fields(live: &Value, reset: &[&str]) -> Option<FieldSet> {
    let text = live
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")?
        .as_str()?;
    let config: Value = serde_json::from_str(text).ok()?;
    let mut set = fields::applied(&config).ok()?;
    set.strip(reset);
    Some(set)
}

/// Kubernetes' apply conflict: 409, each field and manager in the message and the causes.
fn conflict(mut found: Vec<(String, String)>) -> ApiError {
    found.sort();
    let n = found.len();
    let message = if n == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            found[0].0, found[0].1
        )
    } else {
        let mut by: Vec<(String, Vec<String>)> = Vec::new();
        for (m, p) in &found {
            match by.last_mut() {
                Some((last, paths)) if last == m => paths.push(p.clone()),
                _ => by.push((m.clone(), vec![p.clone()])),
            }
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(m, paths)| {
                let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
                format!("conflicts with {m}:\n{}", list.join("\n"))
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", parts.join("\n"))
    };
    let causes: Vec<Value> = found
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
        .collect();
    let mut e = ApiError::new(http::StatusCode::CONFLICT, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}

/// The manager of a write that names none: the client's User-Agent up to its first `/`
/// (`kubectl/v1.32 ...` is `kubectl`), printable characters only, at most 128 bytes.
pub fn manager_from_user_agent(ua: Option<&str>) -> String {
    let name: String = ua
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let mut name = name.trim().to_string();
    while name.len() > 128 {
        name.pop();
    }
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(manager: &'a str) -> Writer<'a> {
        Writer {
            manager,
            api_version: "v1",
            subresource: None,
            reset: &["status"],
            now: "2026-11-28T21:00:00Z",
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    fn managers(obj: &Value) -> Vec<(String, String, Vec<String>)> {
        read(obj)
            .unwrap()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.manager, e.operation, e.set.paths()))
            .collect()
    }

    #[test]
    fn apply_owns_removes_what_it_stops_applying_and_conflicts() {
        let a = on_apply(
            &Value::Null,
            &cm(json!({"x": "1", "y": "2"})),
            &w("alice"),
            false,
        )
        .unwrap();
        assert_eq!(
            managers(&a),
            vec![(
                "alice".into(),
                "Apply".into(),
                vec![".data.x".into(), ".data.y".into()]
            )]
        );
        // Applied again without y: y goes.
        let a2 = on_apply(&a, &cm(json!({"x": "1"})), &w("alice"), false).unwrap();
        assert_eq!(a2["data"], json!({"x": "1"}));
        // Bob applies x with another value: refused, naming the field and the manager.
        let e = on_apply(&a2, &cm(json!({"x": "9"})), &w("bob"), false).unwrap_err();
        assert_eq!(e.code.as_u16(), 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"alice\": .data.x"
        );
        assert_eq!(e.details.as_ref().unwrap()["causes"][0]["field"], ".data.x");
        // The same value is no conflict: x is shared, and stays when alice lets go of it.
        let shared = on_apply(&a2, &cm(json!({"x": "1"})), &w("bob"), false).unwrap();
        let alone = on_apply(&shared, &cm(json!({"z": "3"})), &w("alice"), false).unwrap();
        assert_eq!(alone["data"], json!({"x": "1", "z": "3"}));
        // Forced, bob takes x over.
        let forced = on_apply(&a2, &cm(json!({"x": "9"})), &w("bob"), true).unwrap();
        assert_eq!(forced["data"]["x"], "9");
        let owners = managers(&forced);
        assert!(owners.contains(&("bob".into(), "Apply".into(), vec![".data.x".into()])));
        assert!(!owners.iter().any(|(m, _, _)| m == "alice"), "{owners:?}");
    }

    #[test]
    fn updates_take_what_they_change_and_conflict_with_an_apply() {
        let mut created = cm(json!({"x": "1"}));
        on_create(&mut created, &w("kubectl-create"));
        assert_eq!(
            managers(&created),
            vec![(
                "kubectl-create".into(),
                "Update".into(),
                vec![".data".into(), ".data.x".into()]
            )]
        );
        let old = created.clone();
        let mut new = created.clone();
        new["data"]["x"] = json!("2");
        new["data"]["y"] = json!("3");
        on_update(&old, &mut new, &w("kubectl-edit")).unwrap();
        let owners = managers(&new);
        assert!(owners.contains(&(
            "kubectl-edit".into(),
            "Update".into(),
            vec![".data.x".into(), ".data.y".into()]
        )));
        // An apply of y with another value conflicts with the editor.
        let e = on_apply(&new, &cm(json!({"y": "4"})), &w("kubectl"), false).unwrap_err();
        assert!(
            e.message
                .contains("conflict with \"kubectl-edit\" using v1: .data.y"),
            "{}",
            e.message
        );
        // Client-sent managedFields `[]` clear them.
        let mut cleared = new.clone();
        cleared["metadata"]["managedFields"] = json!([]);
        on_update(&new, &mut cleared, &w("x")).unwrap();
        assert!(cleared.pointer("/metadata/managedFields").is_none());
    }

    #[test]
    fn update_managers_are_capped() {
        let mut obj = cm(json!({}));
        on_create(&mut obj, &w("creator"));
        for i in 0..15 {
            let old = obj.clone();
            obj["data"][format!("k{i}")] = json!("v");
            let now = format!("2026-11-28T21:{i:02}:00Z");
            let manager = format!("job-{i}");
            let writer = Writer {
                now: &now,
                ..w(&manager)
            };
            on_update(&old, &mut obj, &writer).unwrap();
        }
        let owners = managers(&obj);
        assert_eq!(owners.len(), 10, "{owners:?}");
        let ancient = owners
            .iter()
            .find(|(m, _, _)| m == "ancient-changes")
            .unwrap();
        assert!(ancient.2.contains(&".data.k0".to_string()), "{ancient:?}");
        assert!(owners.iter().any(|(m, _, _)| m == "job-14"));
    }

    #[test]
    fn managers_come_from_the_user_agent() {
        assert_eq!(
            manager_from_user_agent(Some("kubectl/v1.32.0 (linux/amd64) kubernetes/abc")),
            "kubectl"
        );
        assert_eq!(
            manager_from_user_agent(Some("OpenAPI-Generator/36.0.3/python")),
            "OpenAPI-Generator"
        );
        assert_eq!(manager_from_user_agent(None), "unknown");
    }
}
