//! The service's hosts: one runtime per host (a Docker engine, local or reached over TCP, or
//! the local process runtime), seen by the pod sync as one [`Runtime`].
//!
//! A group is placed on a host when it is deployed ([`Service`](crate::Service) picks by
//! images, public ports and room, least allocated first) and stays there: the pool routes a
//! pod's sandbox and containers to its host by uid, and everything else by id, which carries
//! the host's name (`<host>/<runtime id>`).
//!
//! A host that does not answer a listing (within [`LIST_TIMEOUT`]) is *silent*; the service
//! moves the groups of a host silent for longer than its grace to other hosts. When such a
//! host answers again, what it still runs of a group that now runs elsewhere is removed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::runtime::{
    ContainerConfig, ContainerStats, ExecSession, LogOptions, LogStream, Observed, ObservedSandbox,
    PodRef, PullPolicy, Runtime, RuntimeError,
};

/// One host of the pool.
pub struct Host {
    /// Short and stable: it is part of every id the pool hands out, and stored with each
    /// group placed on the host.
    pub name: String,
    /// Where a group's Public IP address is reachable: the host's address.
    pub address: String,
    /// CPUs and memory (GB) groups may request on this host in all.
    pub cpu: f64,
    pub memory_gb: f64,
    pub runtime: Arc<dyn Runtime>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("a pool needs at least one host")]
    Empty,
    #[error("host name {0:?} is used twice")]
    Duplicate(String),
    #[error("host name {0:?} must be 1-32 lowercase letters, digits and '-'")]
    BadName(String),
}

pub struct Pool {
    hosts: Vec<Host>,
    /// Pod uid -> index of the host it runs on: the one record of where a group is (the
    /// service stores the host's name, and assigns again on opening).
    placed: Mutex<HashMap<String, usize>>,
    /// Per host: since when it has not answered a listing (`None`: it answered the last).
    silent: Mutex<Vec<Option<Instant>>>,
}

const DRIVER: &str = "pool";

/// How long a host's listing may take before the host counts as not answering (a host cut
/// off by the network would otherwise hold every pass up for the client's own timeout).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);

impl Pool {
    pub fn new(hosts: Vec<Host>) -> Result<Pool, PoolError> {
        if hosts.is_empty() {
            return Err(PoolError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        for h in &hosts {
            let ok = !h.name.is_empty()
                && h.name.len() <= 32
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(PoolError::BadName(h.name.clone()));
            }
            if !seen.insert(h.name.clone()) {
                return Err(PoolError::Duplicate(h.name.clone()));
            }
        }
        Ok(Pool {
            silent: Mutex::new(vec![None; hosts.len()]),
            hosts,
            placed: Mutex::default(),
        })
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// Run pod `uid` on host `index` from now on.
    pub fn assign(&self, uid: &str, index: usize) {
        self.placed
            .lock()
            .expect("placed")
            .insert(uid.to_string(), index);
    }

    pub fn forget(&self, uid: &str) {
        self.placed.lock().expect("placed").remove(uid);
    }

    /// The index of the host pod `uid` was assigned to.
    pub fn placement(&self, uid: &str) -> Option<usize> {
        self.placed.lock().expect("placed").get(uid).copied()
    }

    /// The host pod `uid` was assigned to.
    pub fn host_of(&self, uid: &str) -> Option<&Host> {
        self.hosts.get(self.placement(uid)?)
    }

    /// How long host `index` has gone without answering a listing, as of `now`; `None` if
    /// it answered the last one.
    pub fn silent_for(&self, index: usize, now: Instant) -> Option<Duration> {
        let since = self.silent.lock().expect("silent")[index]?;
        Some(now.saturating_duration_since(since))
    }

    /// The hosts that answered their last listing.
    pub fn answering(&self, now: Instant) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| self.silent_for(h, now).is_none())
            .collect()
    }

    fn heard(&self, index: usize, answered: bool) {
        let mut silent = self.silent.lock().expect("silent");
        match (answered, silent[index]) {
            (true, _) => silent[index] = None,
            (false, None) => silent[index] = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Sort what host `index` listed: what belongs there goes to `out` with the host's name
    /// on its id; what belongs to a pod placed on another host goes to `stale` as
    /// (pod uid, id on the host).
    fn sort_out<T>(
        &self,
        index: usize,
        listed: Vec<T>,
        parts: fn(&mut T) -> (&String, &mut String),
        out: &mut Vec<T>,
        stale: &mut Vec<(String, String)>,
    ) {
        let host = &self.hosts[index];
        for mut item in listed {
            let (uid, id) = parts(&mut item);
            if self.placement(uid).is_some_and(|p| p != index) {
                stale.push((uid.clone(), std::mem::take(id)));
            } else {
                *id = qualify(host, id);
                out.push(item);
            }
        }
    }

    /// Remove what host `h` still runs of pods now placed on another host (copies left
    /// behind when their group moved while `h` was silent): containers, then sandboxes.
    async fn remove_stale(&self, h: &Host, ids: Vec<(String, String)>) {
        for (uid, id) in ids {
            tracing::info!(host = %h.name, pod = %uid, id = %id, "removing a stale copy of a group that moved to another host");
            if let Err(e) = h.runtime.stop(&id, Duration::ZERO).await {
                tracing::warn!(host = %h.name, id = %id, error = %berth_core::error::Chain(&e), "stopping a stale copy failed");
            }
            if let Err(e) = h.runtime.remove(&id).await {
                tracing::warn!(host = %h.name, id = %id, error = %berth_core::error::Chain(&e), "removing a stale copy failed");
            }
        }
    }

    fn for_pod(&self, uid: &str) -> Result<&Host, RuntimeError> {
        self.host_of(uid).ok_or_else(|| RuntimeError::Driver {
            driver: DRIVER,
            operation: "route a pod",
            source: format!("pod {uid} is placed on no host").into(),
        })
    }

    /// The host an id names, and the id on that host.
    fn for_id<'a>(&self, id: &'a str) -> Result<(&Host, &'a str), RuntimeError> {
        let (name, inner) = id.split_once('/').unwrap_or(("", id));
        let host =
            self.hosts
                .iter()
                .find(|h| h.name == name)
                .ok_or_else(|| RuntimeError::Driver {
                    driver: DRIVER,
                    operation: "route an id",
                    source: format!("{id:?} names no host of this pool").into(),
                })?;
        Ok((host, inner))
    }
}

fn qualify(host: &Host, id: &str) -> String {
    format!("{}/{id}", host.name)
}

#[async_trait::async_trait]
impl Runtime for Pool {
    fn name(&self) -> &'static str {
        self.hosts[0].runtime.name()
    }

    fn version(&self) -> String {
        self.hosts[0].runtime.version()
    }

    fn unenforced_limits(&self) -> Option<String> {
        self.hosts
            .iter()
            .find_map(|h| h.runtime.unenforced_limits())
    }

    /// Present on every host: used only where no pod is in view.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError> {
        for h in &self.hosts {
            h.runtime.ensure_image(image, policy).await?;
        }
        Ok(())
    }

    async fn ensure_image_for(
        &self,
        pod: &PodRef,
        image: &str,
        policy: PullPolicy,
    ) -> Result<(), RuntimeError> {
        self.for_pod(&pod.uid)?
            .runtime
            .ensure_image(image, policy)
            .await
    }

    async fn create_sandbox(&self, pod: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
        let host = self.for_pod(&pod.uid)?;
        let mut sb = host.runtime.create_sandbox(pod).await?;
        sb.id = qualify(host, &sb.id);
        Ok(sb)
    }

    async fn start_container(
        &self,
        pod: &PodRef,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let (host, sandbox) = self.for_id(sandbox_id)?;
        let id = host.runtime.start_container(pod, sandbox, config).await?;
        Ok(qualify(host, &id))
    }

    /// Every host's listing; a host that does not answer in [`LIST_TIMEOUT`] is left out
    /// (its groups wait, and nothing of theirs is taken for an orphan), and said in the log.
    /// What a host runs of a pod placed on another host is left out too, and removed.
    async fn list(&self) -> Result<Observed, RuntimeError> {
        let all = futures::future::join_all(self.hosts.iter().map(|h| async {
            match tokio::time::timeout(LIST_TIMEOUT, h.runtime.list()).await {
                Ok(listed) => listed,
                Err(_) => Err(RuntimeError::Driver {
                    driver: DRIVER,
                    operation: "list a host",
                    source: format!("no answer within {} s", LIST_TIMEOUT.as_secs()).into(),
                }),
            }
        }))
        .await;
        let mut out = Observed::default();
        for (i, (h, listed)) in self.hosts.iter().zip(all).enumerate() {
            self.heard(i, listed.is_ok());
            let obs = match listed {
                Ok(obs) => obs,
                Err(e) if self.hosts.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(host = %h.name, error = %berth_core::error::Chain(&e), "a pool host did not answer");
                    continue;
                }
            };
            // Containers before sandboxes, the order they are removed in.
            let mut stale = Vec::new();
            self.sort_out(
                i,
                obs.containers,
                |c| (&c.pod_uid, &mut c.id),
                &mut out.containers,
                &mut stale,
            );
            self.sort_out(
                i,
                obs.sandboxes,
                |s| (&s.pod_uid, &mut s.id),
                &mut out.sandboxes,
                &mut stale,
            );
            if !stale.is_empty() {
                self.remove_stale(h, stale).await;
            }
        }
        Ok(out)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.remove(id).await
    }

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogStream, RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.logs(id, opts).await
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.stats(id).await
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.exec(id, command, tty, stdin).await
    }

    async fn exec_status(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let (h, id) = self.for_id(id)?;
        h.runtime.exec_status(id, command).await
    }

    async fn maintain(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| h.runtime.maintain())).await;
    }

    async fn release(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| h.runtime.release())).await;
    }

    /// The images any host holds (hosts that cannot say are left out).
    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let all = futures::future::join_all(self.hosts.iter().map(|h| h.runtime.images())).await;
        let mut names: Vec<String> = all.into_iter().flatten().flatten().collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The groups of the hosts that can (an engine on this machine) join `net`; the others
    /// keep their engine's network. An error only when no host could.
    async fn use_pod_network(
        &self,
        net: std::sync::Arc<berth_agent::net::podnet::PodNet>,
    ) -> Result<(), String> {
        let mut why = Vec::new();
        for h in &self.hosts {
            match h.runtime.use_pod_network(net.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => why.push(format!("host {}: {e}", h.name)),
            }
        }
        Err(why.join("; "))
    }

    fn mounts_pod_files(&self) -> bool {
        self.hosts.iter().all(|h| h.runtime.mounts_pod_files())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_agent::runtime::mock::MockRuntime;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            address: "127.0.0.1".into(),
            cpu: 4.0,
            memory_gb: 8.0,
            runtime: Arc::new(MockRuntime::new()),
        }
    }

    fn pod(uid: &str) -> PodRef {
        PodRef {
            uid: uid.into(),
            namespace: "rg".into(),
            name: uid.into(),
            host_ports: vec![],
            host_network: false,
            hostname: None,
        }
    }

    #[tokio::test]
    async fn pods_run_on_their_host_and_ids_route_back() {
        let pool = Pool::new(vec![host("a"), host("b")]).unwrap();
        pool.assign("u1", 1);
        let sb = pool.create_sandbox(&pod("u1")).await.unwrap();
        assert!(sb.id.starts_with("b/"), "{}", sb.id);
        let obs = pool.list().await.unwrap();
        assert_eq!(obs.sandboxes.len(), 1);
        assert_eq!(obs.sandboxes[0].id, sb.id);
        // Nothing landed on the other host.
        assert!(pool.hosts()[0]
            .runtime
            .list()
            .await
            .unwrap()
            .sandboxes
            .is_empty());
        pool.stop(&sb.id, Duration::ZERO).await.unwrap();
        pool.remove(&sb.id).await.unwrap();
        assert!(pool.list().await.unwrap().sandboxes.is_empty());
        assert!(
            pool.remove("c/x").await.is_err(),
            "an unknown host is an error"
        );
    }

    #[tokio::test]
    async fn an_unplaced_pod_is_an_error_not_a_guess() {
        let pool = Pool::new(vec![host("a")]).unwrap();
        let e = pool.create_sandbox(&pod("nowhere")).await.unwrap_err();
        assert!(e.to_string().contains("pool"), "{e}");
    }

    #[test]
    fn host_names_are_checked() {
        assert!(matches!(Pool::new(vec![]), Err(PoolError::Empty)));
        assert!(matches!(
            Pool::new(vec![host("a"), host("a")]),
            Err(PoolError::Duplicate(_))
        ));
        assert!(matches!(
            Pool::new(vec![host("A/b")]),
            Err(PoolError::BadName(_))
        ));
    }
}
