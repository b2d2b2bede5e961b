//! The runner: one pass at a time over every running group, each group's pod brought one
//! step closer to its spec by the agent's pod sync, in a task of its own (as the kubelet's
//! pod workers): a pass waits for none of them, so a group deployed while others start is
//! taken up by the next pass, not after the slowest of them; and teardowns, which claim a
//! group's containers and stop them outside the passes.

use std::collections::HashMap;
use std::time::Duration;

use berth_agent::runtime::{RuntimeError, State};
use berth_core::aci::ArmError;
use k8s_openapi::api::core::v1::Pod;

use std::sync::Arc;

use berth_agent::runner::{self, Next, Pass};

use super::Service;

/// The service's passes: every running group, and soon again while one deploys.
struct GroupPasses(Arc<Service>);

impl Pass for GroupPasses {
    async fn pass(&mut self) -> Next {
        let svc = &self.0;
        svc.tick().await;
        // While a deployment is under way, look again soon: a container started in this
        // pass shows as running only in the runtime's next listing.
        let busy = svc
            .registry
            .groups
            .lock()
            .expect("groups")
            .values()
            .any(|l| l.lifecycle.is_deploying());
        Next {
            wait: if busy {
                Duration::from_millis(100)
            } else {
                svc.cfg.resync
            },
            upkeep: true,
        }
    }
}

impl Service {
    /// Run the sync loop (the agent's runner) until the task is aborted.
    pub fn spawn_runner(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let passes = GroupPasses(self.clone());
        tokio::spawn(runner::run(self.runtime.clone(), self.kick.clone(), passes))
    }

    /// One pass: every running group's pod one step closer to its spec, each group's sync
    /// started in a task of its own unless its last one is still under way.
    pub(super) async fn tick(self: &Arc<Self>) {
        let _pass = self.tick_lock.lock().await;
        // The groups' guards first, the listing after: a group whose guard this pass holds
        // has no sync under way, so the listing shows all that its last sync started (a
        // listing taken while that sync ran would start its containers a second time).
        let mut guards: HashMap<String, tokio::sync::OwnedMutexGuard<()>> = {
            let uids: std::collections::HashSet<String> = self
                .registry
                .groups
                .lock()
                .expect("groups")
                .values()
                .map(|l| l.uid.clone())
                .collect();
            let mut syncing = self.syncing.lock().expect("syncing");
            syncing.retain(|uid, _| uids.contains(uid));
            uids.into_iter()
                .filter_map(|uid| {
                    let guard = syncing.entry(uid.clone()).or_default().clone();
                    guard.try_lock_owned().ok().map(|g| (uid, g))
                })
                .collect()
        };
        let obs = match self.runtime.list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %berth_core::error::Chain(&e), "listing the runtime failed");
                return;
            }
        };
        let draining = self.registry.draining.lock().expect("draining").clone();
        self.move_off_silent_hosts(&draining).await;
        let (pods, mut live): (Vec<Pod>, Vec<String>) = {
            let groups = self.registry.groups.lock().expect("groups");
            groups
                .values()
                .filter(|l| !l.lifecycle.is_stopped() && !draining.contains(&l.uid))
                .map(|l| {
                    let mut pod = l.pod.clone();
                    pod.status = l
                        .status
                        .clone()
                        .and_then(|s| serde_json::from_value(s).ok());
                    (pod, l.uid.clone())
                })
                .unzip()
        };
        // Each group's sync runs under its own guard; the tick lock is let go before any
        // container starts, so deployments and stops of other groups go on while the engine
        // works. Groups deployed since the guards were taken wait for the next pass.
        let guarded: Vec<(Pod, tokio::sync::OwnedMutexGuard<()>)> = pods
            .into_iter()
            .zip(&live)
            .filter_map(|(p, uid)| guards.remove(uid).map(|g| (p, g)))
            .collect();
        drop(guards);
        drop(_pass);
        let obs = Arc::new(obs);
        for (pod, guard) in guarded {
            let (svc, obs) = (self.clone(), obs.clone());
            tokio::spawn(async move {
                if let Err(e) = svc.sync.sync(&pod, &obs).await {
                    tracing::warn!(error = %berth_core::error::Chain(&e), "syncing a container group failed");
                }
                drop(guard);
            });
        }
        live.extend(draining);
        // What was running at the listing and belongs to no group now (containers of groups
        // made since were not listed).
        self.sync.remove_orphans(&live, &obs).await;
    }

    /// Claim a group's containers for a teardown; called under the tick lock. One operation
    /// at a time per group, as ARM has it.
    pub(super) fn begin_drain(&self, uid: &str, name: &str) -> Result<(), ArmError> {
        if self
            .registry
            .draining
            .lock()
            .expect("draining")
            .insert(uid.to_string())
        {
            return Ok(());
        }
        Err(ArmError::new(
            409,
            "AnotherOperationInProgress",
            format!("Another operation on container group '{name}' is in progress; retry once it has finished."),
        ))
    }

    /// Stop and remove every container and the sandbox of one group's pod, claimed by
    /// [`Self::begin_drain`]; run without the tick lock, and releases the claim.
    pub(super) async fn teardown(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        // A pass that took the group before the claim may still be starting its containers.
        let in_flight = self.syncing.lock().expect("syncing").get(uid).cloned();
        if let Some(sync) = in_flight {
            let _done = sync.lock().await;
        }
        let res = self.stop_pod(uid, grace).await;
        self.end_drain(uid);
        res
    }

    /// Give back a claim taken by [`Self::begin_drain`].
    pub(super) fn end_drain(&self, uid: &str) {
        self.registry.draining.lock().expect("draining").remove(uid);
    }

    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        let obs = self.runtime.list().await?;
        let stops = obs
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid && matches!(c.state, State::Running { .. }))
            .map(|c| self.runtime.stop(&c.id, grace));
        for r in futures::future::join_all(stops).await {
            r?;
        }
        for c in obs.containers.iter().filter(|c| c.pod_uid == uid) {
            self.runtime.remove(&c.id).await?;
        }
        for s in obs.sandboxes.iter().filter(|s| s.pod_uid == uid) {
            self.runtime.stop(&s.id, Duration::from_secs(1)).await?;
            self.runtime.remove(&s.id).await?;
        }
        self.sync.forget(uid);
        let _ = std::fs::remove_dir_all(berth_agent::config::pod_dir(&self.cfg.data_dir, uid));
        Ok(())
    }
}
