//! Label selectors (`app=web,tier in (a,b),!legacy`) and field selectors
//! (`metadata.name=x,spec.nodeName!=`), parsed and matched as Kubernetes does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

/// A label selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement {requirement:?}: {why}")]
pub struct SelectorError {
    pub requirement: String,
    pub why: String,
}

fn err(requirement: &str, why: impl Into<String>) -> SelectorError {
    SelectorError {
        requirement: requirement.to_string(),
        why: why.into(),
    }
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(req: &str, key: &str) -> Result<String, SelectorError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(err(req, "key is empty"));
    }
    if let Some(why) = crate::validation::qualified_name(key) {
        return Err(err(req, format!("invalid label key {key:?}: {why}")));
    }
    Ok(key.to_string())
}

fn check_value(req: &str, v: &str) -> Result<String, SelectorError> {
    let v = v.trim();
    if let Some(why) = crate::validation::label_value(v) {
        return Err(err(req, format!("invalid label value {v:?}: {why}")));
    }
    Ok(v.to_string())
}

fn parse_set(req: &str, rest: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err(req, "expected a parenthesised set of values, e.g. (a,b)"))?;
    inner.split(',').map(|v| check_value(req, v)).collect()
}

impl Selector {
    /// Parse the string form used in `?labelSelector=`.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Selector { requirements });
        }
        for part in split_top(s) {
            let req = part.trim();
            if req.is_empty() {
                return Err(err(part, "empty requirement"));
            }
            let parsed = if let Some(key) = req.strip_prefix('!') {
                Requirement {
                    key: check_key(req, key)?,
                    op: Op::DoesNotExist,
                }
            } else if let Some((k, v)) = req.split_once("!=") {
                Requirement {
                    key: check_key(req, k)?,
                    op: Op::NotEq(check_value(req, v)?),
                }
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                Requirement {
                    key: check_key(req, k)?,
                    op: Op::Eq(check_value(req, v)?),
                }
            } else if let Some((k, v)) = req.split_once('>') {
                Requirement {
                    key: check_key(req, k)?,
                    op: Op::Gt(
                        v.trim()
                            .parse()
                            .map_err(|_| err(req, "expected an integer after >"))?,
                    ),
                }
            } else if let Some((k, v)) = req.split_once('<') {
                Requirement {
                    key: check_key(req, k)?,
                    op: Op::Lt(
                        v.trim()
                            .parse()
                            .map_err(|_| err(req, "expected an integer after <"))?,
                    ),
                }
            } else if let Some(idx) = req.find(" notin ").or_else(|| req.find(" notin(")) {
                Requirement {
                    key: check_key(req, &req[..idx])?,
                    op: Op::NotIn(parse_set(req, &req[idx + 6..])?),
                }
            } else if let Some(idx) = req.find(" in ").or_else(|| req.find(" in(")) {
                Requirement {
                    key: check_key(req, &req[..idx])?,
                    op: Op::In(parse_set(req, &req[idx + 3..])?),
                }
            } else {
                Requirement {
                    key: check_key(req, req)?,
                    op: Op::Exists,
                }
            };
            requirements.push(parsed);
        }
        Ok(Selector { requirements })
    }

    /// The selector a `LabelSelector` (matchLabels + matchExpressions) stands for.
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::Eq(v.clone()),
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(err(
                        &e.key,
                        format!("{other:?} is not a valid label selector operator"),
                    ))
                }
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(Selector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does a label map satisfy every requirement?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Does an object's `metadata.labels` satisfy every requirement?
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(get(&r.key)))
    }
}

impl Requirement {
    /// Does the value of this requirement's key (`None`: the key is absent) satisfy it?
    pub fn matches(&self, v: Option<&str>) -> bool {
        match &self.op {
            Op::Eq(want) => v == Some(want.as_str()),
            Op::NotEq(want) => v != Some(want.as_str()),
            Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
            Op::NotIn(set) => !v.is_some_and(|v| set.iter().any(|s| s == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Op::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A `LabelSelector` object (`matchLabels` + `matchExpressions`) in its string form
/// (`app=web,tier in (a,b),!legacy`), as Scale's `status.selector` and kubectl's SELECTOR
/// column show it; empty for none.
pub fn label_selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for e in exprs.into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            },
        );
    }
    parts.join(",")
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// A field selector: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut requirements = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, true)
            } else {
                return Err(err(
                    part,
                    "expected field=value, field==value or field!=value",
                ));
            };
            requirements.push(FieldRequirement {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// The value of `metadata.name` if the selector pins it (`metadata.name=x`).
    pub fn exact_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equal && r.field == "metadata.name")
            .map(|r| r.value.as_str())
    }

    /// Match against an object, reading each field by its dotted path; a missing field reads
    /// as the empty string, as Kubernetes' field sets do.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) == r.equal
        })
    }
}

/// A field of an object by dotted path, as a field selector sees it.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = Selector::parse("app=web,tier in (a, b),env notin (prod),!legacy,team,x!=y,n>3")
            .unwrap();
        assert_eq!(s.requirements.len(), 7);
        assert!(matches!(s.requirements[1].op, Op::In(ref v) if v == &["a", "b"]));
        let l = labels(&[("app", "web"), ("tier", "b"), ("team", "t"), ("n", "4")]);
        assert!(s.matches(&l));
        let l = labels(&[("app", "web"), ("tier", "c"), ("team", "t"), ("n", "4")]);
        assert!(!s.matches(&l));
    }

    #[test]
    fn rejects_bad_selectors() {
        assert!(Selector::parse("a in b").is_err());
        assert!(Selector::parse("bad key=1").is_err());
        assert!(Selector::parse("a=1,,b=2").is_err());
        assert!(Selector::parse("a=-x").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        assert!(FieldSelector::parse("metadata.name=p,spec.nodeName!=")
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("status.phase=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
