//! Reading stored objects without paying for `metadata.managedFields` where nobody reads them.
//!
//! A pod's managedFields are about half of its JSON and most of its small allocations. The
//! API server needs them whole only when it answers a client that reads them or edits the
//! ownership. A watch or list for a client that asked to go without them
//! ([`crate::fields::OMIT_MANAGED_FIELDS`]) skips them while parsing, and a write that leaves
//! ownership alone (a binding) carries them through as the raw bytes it read.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What to do with `metadata.managedFields` while parsing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Managed {
    /// Skip them: scanned, never built.
    Skip,
    /// Keep their JSON text as it is, apart from the object.
    Raw,
}

/// A stored object without its managedFields.
pub fn parse_omitting_managed(bytes: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (obj, _) = Top(Managed::Skip).deserialize(&mut de)?;
    de.end()?;
    Ok(obj)
}

/// A stored object, and its managedFields apart as the JSON text they were stored as.
/// [`to_vec_with_managed`] puts them back.
pub fn parse_keeping_managed_raw(
    bytes: &[u8],
) -> serde_json::Result<(Value, Option<Box<RawValue>>)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let out = Top(Managed::Raw).deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// `obj` as JSON with `managed` (if any) as its `metadata.managedFields`.
pub fn to_vec_with_managed(obj: &Value, managed: Option<&RawValue>) -> Vec<u8> {
    let out = match managed {
        Some(managed) => serde_json::to_vec(&WithManaged { obj, managed }),
        None => serde_json::to_vec(obj),
    };
    out.expect("a JSON value serializes")
}

struct Top(Managed);

impl<'de> DeserializeSeed<'de> for Top {
    type Value = (Value, Option<Box<RawValue>>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = (Value, Option<Box<RawValue>>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        let mut managed = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "metadata" {
                let (meta, raw) = map.next_value_seed(Meta(self.0))?;
                managed = raw;
                meta
            } else {
                map.next_value::<Value>()?
            };
            out.insert(key, value);
        }
        Ok((Value::Object(out), managed))
    }
}

struct Meta(Managed);

impl<'de> DeserializeSeed<'de> for Meta {
    type Value = (Value, Option<Box<RawValue>>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Meta {
    type Value = (Value, Option<Box<RawValue>>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object's metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        let mut managed = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "managedFields" {
                match self.0 {
                    Managed::Skip => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    Managed::Raw => managed = Some(map.next_value::<Box<RawValue>>()?),
                }
                continue;
            }
            out.insert(key, map.next_value::<Value>()?);
        }
        Ok((Value::Object(out), managed))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok((Value::Null, None))
    }
}

/// An object serialized with raw managedFields put back into its metadata.
struct WithManaged<'a> {
    obj: &'a Value,
    managed: &'a RawValue,
}

impl Serialize for WithManaged<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(top) = self.obj.as_object() else {
            return self.obj.serialize(s);
        };
        let mut m = s.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match v.as_object() {
                Some(meta) if k == "metadata" => m.serialize_entry(
                    k,
                    &MetaWithManaged {
                        meta,
                        managed: self.managed,
                    },
                )?,
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

struct MetaWithManaged<'a> {
    meta: &'a Map<String, Value>,
    managed: &'a RawValue,
}

impl Serialize for MetaWithManaged<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.meta.len() + 1))?;
        for (k, v) in self.meta.iter().filter(|(k, _)| *k != "managedFields") {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("managedFields", self.managed)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {}}}}]
            },
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"}
        })
    }

    #[test]
    fn omitting_drops_only_managed_fields() {
        let bytes = serde_json::to_vec(&pod()).unwrap();
        let mut want = pod();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert_eq!(parse_omitting_managed(&bytes).unwrap(), want);
        // An object without them, or without metadata, reads as it is.
        let plain = json!({"kind": "Event", "metadata": {"name": "e"}, "count": 2});
        let bytes = serde_json::to_vec(&plain).unwrap();
        assert_eq!(parse_omitting_managed(&bytes).unwrap(), plain);
        assert_eq!(
            parse_omitting_managed(b"{\"a\":[1,2]}").unwrap(),
            json!({"a": [1, 2]})
        );
        assert!(parse_omitting_managed(b"{\"a\":").is_err());
        assert!(parse_omitting_managed(b"{} x").is_err());
    }

    #[test]
    fn raw_managed_fields_come_back_where_they_were() {
        let bytes = serde_json::to_vec(&pod()).unwrap();
        let (mut obj, raw) = parse_keeping_managed_raw(&bytes).unwrap();
        assert!(obj.pointer("/metadata/managedFields").is_none());
        obj["spec"]["nodeName"] = json!("n1");
        let written = to_vec_with_managed(&obj, raw.as_deref());
        let mut want = pod();
        want["spec"]["nodeName"] = json!("n1");
        assert_eq!(serde_json::from_slice::<Value>(&written).unwrap(), want);
        // Nothing to put back: the object as it is.
        let plain = json!({"metadata": {"name": "x"}});
        let (obj, raw) = parse_keeping_managed_raw(&serde_json::to_vec(&plain).unwrap()).unwrap();
        assert!(raw.is_none());
        assert_eq!(
            to_vec_with_managed(&obj, None),
            serde_json::to_vec(&plain).unwrap()
        );
    }
}
