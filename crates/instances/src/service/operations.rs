//! Long-running operations: a PUT or a start hands out an operation that follows its
//! group until its deployment succeeds or fails; polls long-poll on the registry's changes.

use std::time::Duration;

use berth_core::aci::ArmError;
use jiff::Timestamp;

use super::group::Lifecycle;
use super::Service;
use crate::db::Key;

/// An accepted long-running operation: it follows the group it was started for.
#[derive(Debug, Clone)]
pub(super) struct Operation {
    pub key: Key,
    pub uid: String,
    pub started: Timestamp,
}

/// What an operation URL reports.
#[derive(Debug, Clone, PartialEq)]
pub enum OpStatus {
    InProgress,
    Succeeded,
    Failed(ArmError),
}

impl Service {
    pub(super) fn operation(&self, key: &Key, uid: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.ops.lock().expect("ops").insert(
            id.clone(),
            Operation {
                key: key.clone(),
                uid: uid.to_string(),
                started: Timestamp::now(),
            },
        );
        id
    }

    fn op_status(&self, op: &Operation) -> OpStatus {
        let groups = self.registry.groups.lock().expect("groups");
        match groups.get(&op.key) {
            Some(l) if l.uid == op.uid => match l.lifecycle.deployment() {
                Lifecycle::Running => OpStatus::Succeeded,
                Lifecycle::Failed(why) => OpStatus::Failed(ArmError::new(
                    400,
                    "ContainerGroupDeploymentFailed",
                    why.clone(),
                )),
                Lifecycle::Pending | Lifecycle::Creating | Lifecycle::Stopped(_) => {
                    OpStatus::InProgress
                }
            },
            _ => OpStatus::Failed(ArmError::new(
                404,
                "ResourceNotFound",
                format!(
                    "The container group '{}' was deleted while the operation ran.",
                    op.key.name
                ),
            )),
        }
    }

    /// An operation's status, waiting up to `wait` for it to finish: polls come back as
    /// soon as there is news, so a client that polls without delay does not spin.
    pub async fn wait_operation(&self, id: &str, wait: Duration) -> Option<(OpStatus, Timestamp)> {
        let op = self.ops.lock().expect("ops").get(id).cloned()?;
        let mut rx = self.registry.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let st = self.op_status(&op);
            if st != OpStatus::InProgress {
                return Some((st, op.started));
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Some((st, op.started));
            }
        }
    }
}
