//! Field errors with paths, and the name and label rules Kubernetes enforces.

use std::fmt;

/// Why a field was refused, named as Kubernetes' `CauseType`s name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TooLong,
    /// A list or map with more items than allowed.
    TooMany,
    Forbidden,
    /// A field the schema does not know (strict field validation).
    Unknown,
    /// A value of the wrong JSON type.
    TypeInvalid,
}

impl Reason {
    /// The `reason` of a `StatusCause`.
    pub fn cause(self) -> &'static str {
        match self {
            Reason::Required => "FieldValueRequired",
            Reason::Invalid => "FieldValueInvalid",
            Reason::NotSupported => "FieldValueNotSupported",
            Reason::Duplicate => "FieldValueDuplicate",
            Reason::TooLong => "FieldValueTooLong",
            Reason::TooMany => "FieldValueTooMany",
            Reason::Forbidden => "FieldValueForbidden",
            Reason::Unknown => "FieldValueInvalid",
            Reason::TypeInvalid => "FieldValueTypeInvalid",
        }
    }
}

/// One refused field: its path (`spec.template.spec.containers[0].image`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: Reason,
    pub detail: String,
}

impl FieldError {
    pub fn required(path: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: Reason::Required,
            detail: String::new(),
        }
    }

    /// A required field, with why it is required here (`when completion mode is Indexed`).
    pub fn required_because(path: impl Into<String>, why: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: Reason::Required,
            detail: why.into(),
        }
    }

    pub fn invalid(
        path: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            path: path.into(),
            reason: Reason::Invalid,
            detail: format!("{:?}: {}", value.to_string(), detail.into()),
        }
    }

    pub fn not_supported(
        path: impl Into<String>,
        value: impl fmt::Display,
        allowed: &[&str],
    ) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        FieldError {
            path: path.into(),
            reason: Reason::NotSupported,
            detail: format!(
                "{:?}: supported values: {}",
                value.to_string(),
                allowed.join(", ")
            ),
        }
    }

    pub fn duplicate(path: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError {
            path: path.into(),
            reason: Reason::Duplicate,
            detail: format!("{:?}", value.to_string()),
        }
    }

    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: Reason::Forbidden,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            Reason::Required => "Required value",
            Reason::Invalid => "Invalid value",
            Reason::NotSupported => "Unsupported value",
            Reason::Duplicate => "Duplicate value",
            Reason::TooLong => "Too long",
            Reason::TooMany => "Too many",
            Reason::Forbidden => "Forbidden",
            Reason::Unknown => "unknown field",
            Reason::TypeInvalid => "Invalid type",
        };
        if self.detail.is_empty() {
            write!(f, "{}: {what}", self.path)
        } else {
            write!(f, "{}: {what}: {}", self.path, self.detail)
        }
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_label_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// Why `value` is not a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63), if it is not.
pub fn dns1123_label(value: &str) -> Option<String> {
    let b = value.as_bytes();
    if b.is_empty() || b.len() > DNS1123_LABEL_MAX {
        return Some(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters and not empty"
        ));
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(|&c| is_label_char(c)) || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
             regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    None
}

/// Why `value` is not a DNS-1123 subdomain (dot-separated labels, at most 253), if it is not.
pub fn dns1123_subdomain(value: &str) -> Option<String> {
    if value.is_empty() || value.len() > DNS1123_SUBDOMAIN_MAX {
        return Some(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters and not empty"
        ));
    }
    if value.split('.').any(|l| {
        let b = l.as_bytes();
        b.is_empty()
            || !b.iter().all(|&c| is_label_char(c))
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
    }) {
        return Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        );
    }
    None
}

/// Why `value` is not a valid label value (empty, or up to 63 of `[A-Za-z0-9_.-]` starting and
/// ending alphanumeric), if it is not.
pub fn label_value(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let b = value.as_bytes();
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
    if b.len() > 63
        || !b.iter().all(|&c| ok_char(c))
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character, at most 63 characters"
                .into(),
        );
    }
    None
}

/// Why `key` is not a valid qualified name (`[prefix/]name`, as label and annotation keys), if
/// it is not.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if let Some(why) = dns1123_subdomain(p) {
            return Some(format!("prefix part {why}"));
        }
    }
    if name.is_empty() || label_value(name).is_some() {
        return Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character, at most 63 characters"
                .into(),
        );
    }
    None
}

/// Check a string map of labels at `path`.
pub fn labels(
    path: &str,
    labels: &serde_json::Map<String, serde_json::Value>,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels {
        if let Some(why) = qualified_name(k) {
            errs.push(FieldError::invalid(path, k, why));
        }
        match v.as_str() {
            Some(v) => {
                if let Some(why) = label_value(v) {
                    errs.push(FieldError::invalid(format!("{path}[{k}]"), v, why));
                }
            }
            None => errs.push(FieldError::invalid(
                format!("{path}[{k}]"),
                v,
                "must be a string",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("web-1").is_none());
        assert!(dns1123_label("Web").is_some());
        assert!(dns1123_label("-a").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain("a.b-c.d").is_none());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(dns1123_subdomain("a_b").is_some());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("bad key").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_x").is_none());
        assert!(label_value("-x").is_some());
    }
}
