//! `ApiError`: every failure the API can answer, rendered as a Kubernetes `Status`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_core::kinds::convert::ConvertError;
use berth_core::{FieldError, Resource};
use berth_store::StoreError;
use serde_json::{json, Value};

/// A failed request, as Kubernetes reports it: HTTP code, `reason`, message and details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

fn details(res: &Resource, name: &str) -> Value {
    json!({"name": name, "group": res.group, "kind": res.plural})
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(res, name)),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", res.qualified()),
            )
        }
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn already_exists(res: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(res, name)),
            ..Self::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} {name:?} already exists", res.qualified()),
            )
        }
    }

    pub fn conflict(res: &Resource, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(res, name)),
            ..Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {name:?}: {why}",
                    res.qualified()
                ),
            )
        }
    }

    pub fn modified(res: &Resource, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 for an object written in an older version that does not convert to the stored one.
    pub fn unconvertible(served: &Resource, name: &str, e: ConvertError) -> Self {
        let err = FieldError::invalid(e.field, "", e.message);
        ApiError::invalid(served, name, &[err])
    }

    /// 422 with one cause per field.
    pub fn invalid(res: &Resource, name: &str, errs: &[FieldError]) -> Self {
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let message = if msgs.len() == 1 {
            format!("{} {name:?} is invalid: {}", res.qualified_kind(), msgs[0])
        } else {
            format!(
                "{} {name:?} is invalid: [{}]",
                res.qualified_kind(),
                msgs.join(", ")
            )
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.reason.cause(), "message": e.to_string(), "field": e.path}))
            .collect();
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message,
            details: Some(
                json!({"name": name, "group": res.group, "kind": res.kind_name, "causes": causes}),
            ),
        }
    }

    /// 422 for one field of a request that is not a stored kind (a review, a token request).
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!("{field}: Invalid value: {detail}"),
            details: Some(
                json!({"causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]}),
            ),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ),
        )
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// A store failure while working on `res`/`name`.
    pub fn from_store(res: &Resource, name: &str, err: StoreError) -> Self {
        match err {
            StoreError::AlreadyExists { .. } => Self::already_exists(res, name),
            StoreError::NotFound { .. } => Self::not_found(res, name),
            StoreError::Conflict { .. } => Self::modified(res, name),
            StoreError::Compacted { requested, oldest } => {
                Self::expired(format!("too old resource version: {requested} ({oldest})"))
            }
            StoreError::FutureRevision { requested, current } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            other => Self::internal(format!("{:#}", anyhow_chain(&other))),
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// Render an error and its sources as one line.
fn anyhow_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// `v`'s members in `order` (the rest after, as they come), each rendered by `member`.
fn ordered(v: &Value, order: &[&str], member: impl Fn(&str, &Value) -> String) -> String {
    let Some(m) = v.as_object() else {
        return v.to_string();
    };
    let keys = order
        .iter()
        .copied()
        .filter(|k| m.contains_key(*k))
        .chain(m.keys().map(String::as_str).filter(|k| !order.contains(k)));
    let parts: Vec<String> = keys
        .map(|k| format!("{}:{}", Value::from(k), member(k, &m[k])))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A `Status` as Kubernetes writes it: its fields in the Go type's order and a closing
/// newline (clients that compare error bodies as text expect both).
pub fn status_text(status: &Value) -> String {
    let cause =
        |_: &str, c: &Value| ordered(c, &["reason", "message", "field"], |_, v| v.to_string());
    let detail = |k: &str, v: &Value| match (k, v.as_array()) {
        ("causes", Some(causes)) => {
            format!(
                "[{}]",
                causes
                    .iter()
                    .map(|c| cause("", c))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        _ => v.to_string(),
    };
    let top = |k: &str, v: &Value| match k {
        "details" => {
            // Go leaves out its empty strings (`omitempty`): a core resource has no group.
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.retain(|_, x| x.as_str() != Some(""));
            }
            let order = [
                "name",
                "group",
                "kind",
                "uid",
                "causes",
                "retryAfterSeconds",
            ];
            ordered(&v, &order, detail)
        }
        _ => v.to_string(),
    };
    let order = [
        "kind",
        "apiVersion",
        "metadata",
        "status",
        "message",
        "reason",
        "details",
        "code",
    ];
    format!("{}\n", ordered(status, &order, top))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = status_text(&self.to_status()).into_bytes();
        (
            self.code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A `Status` of success, as some deletes and `binding` answer.
pub fn success(code: u16, details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_in_kubernetes_field_order() {
        let status = json!({
            "code": 409, "reason": "AlreadyExists", "status": "Failure", "metadata": {},
            "apiVersion": "v1", "kind": "Status", "message": "deployments.apps \"x\" already exists",
            "details": {"kind": "deployments", "group": "apps", "name": "x", "uid": "",
                        "causes": [{"field": "spec", "message": "m", "reason": "FieldValueInvalid"}]},
        });
        assert_eq!(
            status_text(&status),
            concat!(
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
                r#""message":"deployments.apps \"x\" already exists","reason":"AlreadyExists","#,
                r#""details":{"name":"x","group":"apps","kind":"deployments","causes":"#,
                r#"[{"reason":"FieldValueInvalid","message":"m","field":"spec"}]},"code":409}"#,
                "\n"
            )
        );
    }
}
