//! Berth's scheduler: where each pod should run.
//!
//! Start at [`schedule::schedule`]: a pure function from a [`snapshot::Snapshot`] of nodes and
//! placed pods and one compiled pod ([`model::PodInfo`]) to a [`schedule::Placement`]. It runs
//! kube-scheduler's default filters, then its scores. [`queue::Queue`] holds the pods waiting
//! for a decision, with back-off for those that fit nowhere; [`binder`] is the loop that feeds
//! both from the API and binds through `pods/binding`. [`harness::Harness`] drives the same
//! queue and snapshot without IO, recording every plan, for tests and benchmarks.
//! See `README.md` beside this crate for the pipeline and a glossary.

pub mod binder;
pub mod harness;
pub mod model;
pub mod queue;
pub mod schedule;
pub mod snapshot;

pub use model::{NodeInfo, PodInfo};
pub use schedule::{schedule, Placement, Profile, Scoring};
pub use snapshot::Snapshot;
