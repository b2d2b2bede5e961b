//! A container group as the service holds it, its lifecycle, and where the pod sync
//! reports on it ([`GroupOwner`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_agent::owner::{OwnerError, PodOwner, SourceKind};
use berth_agent::runtime::PodRef;
use berth_core::aci::{self, ContainerGroup, Event};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::db::Key;

/// Where a group is in its life. The transitions are methods that say whether they
/// applied; the provisioning state clients see follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Accepted (a PUT, or started again); nothing heard from its containers yet.
    Pending,
    /// Its containers are being created and started.
    Creating,
    /// Every container started, or the group ran to its end.
    Running,
    /// The deployment failed, and why.
    Failed(String),
    /// Stopped by its user: it holds nothing on its host and is not billed. Its deployment
    /// stays as it was when stopped (a group read back stopped from the database counts as
    /// `Running`: it was deployed once).
    Stopped(Box<Lifecycle>),
}

impl Lifecycle {
    /// ARM's `provisioningState`; a stopped group shows its deployment's.
    pub fn provisioning_state(&self) -> &'static str {
        match self {
            Lifecycle::Pending => "Pending",
            Lifecycle::Creating => "Creating",
            Lifecycle::Running => "Succeeded",
            Lifecycle::Failed(_) => "Failed",
            Lifecycle::Stopped(was) => was.provisioning_state(),
        }
    }

    /// How the deployment stands, stopped or not.
    pub fn deployment(&self) -> &Lifecycle {
        match self {
            Lifecycle::Stopped(was) => was,
            other => other,
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self, Lifecycle::Stopped(_))
    }

    /// A deployment is under way: the runner looks again soon.
    pub fn is_deploying(&self) -> bool {
        matches!(self, Lifecycle::Pending | Lifecycle::Creating)
    }

    /// Its containers reported: a deployment under way fails (`failure`), completes
    /// (`settled`: every container started, or the group ended) or goes on. Anything else
    /// stays as it is.
    pub fn observed(&mut self, failure: Option<String>, settled: bool) -> bool {
        if !self.is_deploying() {
            return false;
        }
        *self = match failure {
            Some(f) => Lifecycle::Failed(f),
            None if settled => Lifecycle::Running,
            None => Lifecycle::Creating,
        };
        true
    }

    /// Stop: anything but a stopped group.
    pub fn stop(&mut self) -> bool {
        if self.is_stopped() {
            return false;
        }
        let was = std::mem::replace(self, Lifecycle::Pending);
        *self = Lifecycle::Stopped(Box::new(was));
        true
    }

    /// Start again: a stopped group only, as a fresh deployment.
    pub fn start(&mut self) -> bool {
        if !self.is_stopped() {
            return false;
        }
        *self = Lifecycle::Pending;
        true
    }
}

/// One group as the service holds it.
pub(super) struct Group {
    pub uid: String,
    pub group: ContainerGroup,
    pub pod: Pod,
    pub lifecycle: Lifecycle,
    /// The pod status its containers last reported.
    pub status: Option<Value>,
    /// Events per container name; "" holds the group's own.
    pub events: BTreeMap<String, Vec<Event>>,
}

impl Group {
    /// Record an event under `container` ("" for the group's own): the same reason and
    /// message as the last one counts again; at most 50 are kept.
    pub fn record(&mut self, container: String, type_: &str, reason: &str, message: &str) {
        let list = self.events.entry(container).or_default();
        match list.last_mut() {
            Some(e) if e.name == reason && e.message == message => {
                e.count += 1;
                e.last_timestamp = Timestamp::now().to_string();
            }
            _ => {
                list.push(event(reason, message, type_));
                if list.len() > 50 {
                    list.remove(0);
                }
            }
        }
    }
}

/// Every group, shared by the service and the pod sync, and a counter that moves on every
/// change (long-polled operations wait on it).
pub(super) struct Registry {
    pub groups: Mutex<BTreeMap<Key, Group>>,
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Groups (by uid) whose containers are being stopped outside the tick lock, so that a
    /// slow stop never holds up other groups: the runner neither syncs nor reaps them, and
    /// what a sync begun before the claim still reports of them is not theirs any more
    /// (a redeploy, stop or restart has replaced it).
    pub draining: Mutex<std::collections::HashSet<String>>,
}

impl Registry {
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn is_draining(&self, uid: &str) -> bool {
        self.draining.lock().expect("draining").contains(uid)
    }
}

pub(super) fn event(name: &str, message: &str, type_: &str) -> Event {
    let now = Timestamp::now().to_string();
    Event {
        count: 1,
        first_timestamp: now.clone(),
        last_timestamp: now,
        name: name.into(),
        message: message.into(),
        type_: type_.into(),
    }
}

/// The container an agent event message is about ("Started container web").
fn container_of(message: &str) -> String {
    let mut words = message.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("container") {
            return words.next().unwrap_or_default().to_string();
        }
    }
    String::new()
}

/// Where the pod sync reports for groups: into the service's memory.
pub(super) struct GroupOwner {
    pub registry: Arc<Registry>,
}

#[async_trait::async_trait]
impl PodOwner for GroupOwner {
    async fn write_status(&self, pod: &PodRef, status: &Value) -> Result<(), OwnerError> {
        if self.registry.is_draining(&pod.uid) {
            return Ok(());
        }
        {
            let mut groups = self.registry.groups.lock().expect("groups");
            let Some(l) = groups.values_mut().find(|l| l.uid == pod.uid) else {
                return Ok(());
            };
            if l.lifecycle.is_stopped() {
                return Ok(());
            }
            let o = aci::observe(Some(status), &l.events);
            let settled = o.all_started || matches!(o.state, "Succeeded" | "Failed");
            l.lifecycle.observed(o.failure, settled);
            l.status = Some(status.clone());
        }
        self.registry.bump();
        Ok(())
    }

    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String) {
        if self.registry.is_draining(&pod.uid) {
            return;
        }
        let mut groups = self.registry.groups.lock().expect("groups");
        let Some(l) = groups.values_mut().find(|l| l.uid == pod.uid) else {
            return;
        };
        l.record(container_of(&message), type_, reason, &message);
    }

    async fn source(
        &self,
        namespace: &str,
        kind: SourceKind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, OwnerError> {
        if kind != SourceKind::Secret {
            return Ok(None);
        }
        let Some((group, volume)) = name.split_once('.') else {
            return Ok(None);
        };
        let groups = self.registry.groups.lock().expect("groups");
        Ok(groups
            .iter()
            .find(|(k, _)| k.rg == namespace && k.name == group)
            .and_then(|(_, l)| aci::secret_data(&l.group, volume)))
    }

    async fn deleted(&self, _pod: &PodRef) -> Result<(), OwnerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_filed_under_their_container() {
        assert_eq!(container_of("Started container web"), "web");
        assert_eq!(
            container_of("Back-off restarting failed container side"),
            "side"
        );
        assert_eq!(container_of("Error: no such image"), "");
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::Lifecycle;

    #[test]
    fn a_deployment_moves_only_while_under_way() {
        let mut l = Lifecycle::Pending;
        assert!(l.observed(None, false));
        assert_eq!(l.provisioning_state(), "Creating");
        assert!(l.observed(None, true));
        assert_eq!(l, Lifecycle::Running);
        assert!(
            !l.observed(Some("crashed".into()), false),
            "a running group stays Succeeded"
        );
        let mut f = Lifecycle::Creating;
        f.observed(Some("no such image".into()), false);
        assert_eq!(f, Lifecycle::Failed("no such image".into()));
        assert_eq!(f.provisioning_state(), "Failed");
    }

    #[test]
    fn only_a_stopped_group_starts_and_only_a_live_one_stops() {
        let mut l = Lifecycle::Running;
        assert!(!l.start());
        assert!(l.stop());
        assert!(!l.stop());
        assert_eq!(l.provisioning_state(), "Succeeded");
        assert!(l.start());
        assert_eq!(l, Lifecycle::Pending);
        let mut failed = Lifecycle::Failed("x".into());
        assert!(failed.stop(), "a failed group can be stopped");
        assert_eq!(failed.provisioning_state(), "Failed", "and stays failed");
        assert_eq!(failed.deployment(), &Lifecycle::Failed("x".into()));
    }
}
