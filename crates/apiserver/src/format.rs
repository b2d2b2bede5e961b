//! Response shapes: lists, `meta.k8s.io/v1` Tables and PartialObjectMetadata, chosen by
//! the request's `Accept` header.

use berth_core::custom::CustomVersion;
use berth_core::kinds;
use berth_core::resources::Resource;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::registry::ListResult;

/// What the client asked to get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Table { include: Include },
    PartialMetadata,
}

/// A Table row's `object` (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Shape {
    /// Read `Accept` (`application/json;as=Table;v=v1;g=meta.k8s.io, ...`): the first
    /// alternative Berth can give wins.
    pub fn from_accept(accept: Option<&str>, include_object: Option<&str>) -> Shape {
        let include = match include_object {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        };
        let Some(accept) = accept else {
            return Shape::Object;
        };
        for alt in accept.split(',') {
            let params: Vec<&str> = alt.split(';').map(str::trim).collect();
            let get = |k: &str| {
                params
                    .iter()
                    .find_map(|p| p.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            };
            match (get("as"), get("g")) {
                (Some("Table"), Some("meta.k8s.io")) => return Shape::Table { include },
                (
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                    Some("meta.k8s.io"),
                ) => return Shape::PartialMetadata,
                (None, _) => return Shape::Object,
                _ => continue,
            }
        }
        Shape::Object
    }
}

fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A custom kind's columns: NAME, then its `additionalPrinterColumns` (or AGE if it has
/// none), as Kubernetes builds them.
fn custom_columns(c: &CustomVersion) -> Value {
    let name = json!(berth_core::table::NAME);
    if c.columns.is_empty() {
        return json!([name, berth_core::table::AGE]);
    }
    let mut cols = vec![name];
    cols.extend(c.columns.iter().map(|col| {
        json!({"name": col.name, "type": col.type_, "format": col.format,
               "description": col.description, "priority": col.priority})
    }));
    Value::Array(cols)
}

fn custom_cells(c: &CustomVersion, obj: &Value, now: Timestamp) -> Vec<Value> {
    let mut cells = vec![json!(kinds::str_at(obj, "/metadata/name"))];
    if c.columns.is_empty() {
        cells.push(json!(berth_core::table::age(obj, now)));
        return cells;
    }
    for col in &c.columns {
        let v = berth_core::custom::json_path(obj, &col.json_path);
        cells.push(match (v, col.type_.as_str()) {
            (None | Some(Value::Null), _) => Value::Null,
            (Some(Value::String(t)), "date") => {
                json!(berth_core::table::since(Some(t), now))
            }
            (Some(v @ (Value::Number(_) | Value::Bool(_))), "integer" | "number" | "boolean") => {
                v.clone()
            }
            (Some(Value::String(t)), _) => json!(t),
            (Some(other), _) => json!(other.to_string()),
        });
    }
    cells
}

fn row(
    res: &Resource,
    custom: Option<&CustomVersion>,
    obj: &Value,
    include: Include,
    now: Timestamp,
) -> Value {
    let cells = match custom {
        Some(c) => custom_cells(c, obj, now),
        None => kinds::table_cells(res.kind, obj, now),
    };
    let mut r = json!({ "cells": cells });
    match include {
        Include::None => {}
        Include::Metadata => r["object"] = partial(obj),
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects`.
pub fn table(
    res: &Resource,
    custom: Option<&CustomVersion>,
    objects: &[Value],
    rv: Option<String>,
    cont: Option<String>,
    include: Include,
) -> Value {
    let now = Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(res, custom, o, include, now))
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": match custom {
            Some(c) => custom_columns(c),
            None => json!(kinds::table_columns(res.kind)),
        },
        "rows": rows,
    })
}

/// One object in the requested shape (`custom`: the served version of a custom kind).
pub fn object(res: &Resource, custom: Option<&CustomVersion>, obj: Value, shape: Shape) -> Value {
    match shape {
        Shape::Object => obj,
        Shape::Table { include } => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
            table(res, custom, &[obj], rv, None, include)
        }
        Shape::PartialMetadata => partial(&obj),
    }
}

/// A list in the requested shape.
pub fn list(
    res: &Resource,
    custom: Option<&CustomVersion>,
    listed: ListResult,
    shape: Shape,
) -> Value {
    let rv = listed.resource_version.to_string();
    match shape {
        Shape::Table { include } => table(
            res,
            custom,
            &listed.items,
            Some(rv),
            listed.continue_token,
            include,
        ),
        Shape::PartialMetadata => {
            let items: Vec<Value> = listed.items.iter().map(partial).collect();
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = listed.continue_token {
                meta["continue"] = json!(c);
            }
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items})
        }
        Shape::Object => {
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = listed.continue_token {
                meta["continue"] = json!(c);
            }
            json!({
                "kind": format!("{}List", res.kind_name),
                "apiVersion": res.api_version(),
                "metadata": meta,
                "items": listed.items,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_first_shape_berth_serves() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Shape::from_accept(Some(kubectl), None),
            Shape::Table {
                include: Include::Metadata
            }
        );
        assert_eq!(
            Shape::from_accept(Some("application/json"), None),
            Shape::Object
        );
        assert_eq!(Shape::from_accept(None, None), Shape::Object);
        let typed = "application/vnd.kubernetes.protobuf,application/json";
        assert_eq!(Shape::from_accept(Some(typed), None), Shape::Object);
    }
}
