//! Berth's object model, free of IO and of the clock.
//!
//! Start at [`resources`]: the kinds Berth serves and where they live in the REST tree. Then
//! [`kinds`] for what Kubernetes does to each on the way in (defaulting, validation) and out
//! (table rows), [`typed`] for decoding bodies against the Kubernetes schema with field paths,
//! [`patch`] for the three patch formats, and [`selector`] for label and field selectors.
//! Anything that needs the time (an AGE column) takes it as an argument.

pub mod aci;
pub mod cron;
pub mod custom;
pub mod error;
pub mod events;
pub mod fields;
pub mod kinds;
pub mod net;
pub mod patch;
pub mod quantity;
pub mod query;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod stored;
pub mod table;
pub mod typed;
pub mod validation;

pub use resources::{Kind, Resource};
pub use validation::FieldError;

/// The token of an `Authorization` header's value, if its scheme is `Bearer` (in any case,
/// as RFC 9110 has it: the Kubernetes Python client sends `bearer`).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `t` as Kubernetes writes a `Time` (a condition's `lastTransitionTime`, a container's
/// `startedAt`): RFC 3339 in UTC, whole seconds.
pub fn kube_time(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// `t` as Kubernetes writes a `MicroTime` (a Lease's `renewTime` and `acquireTime`):
/// RFC 3339 in UTC with exactly six fractional digits.
pub fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
