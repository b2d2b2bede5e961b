//! The service behind the API: container groups kept in memory and in the database, run as
//! pods by the agent's pod sync on the service's pool of hosts, and metered.
//!
//! ```text
//!  PUT ─▶ validate ▸ hosts with the images ▸ gitRepo cloned ▸ place (ports, room, least
//!         allocated) ▸ store (+ host, + meter opens) ▸ kick
//!                                                                           │
//!  runner: every second or on a kick ── runtime.list() ─▶ PodSync.sync(pod of each
//!          running group) ─▶ GroupHost.write_status ─▶ instance view, provisioningState
//!  stop / delete ─▶ store (meter closes) ▸ tear the pod down
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::host::{HostError, PodHost, SourceKind};
use berth_agent::pods::{Backoff, PodSync};
use berth_agent::runtime::{LogOptions, PodRef, PullPolicy, Runtime, RuntimeError, State};
use berth_core::aci::{self, ArmError, ContainerGroup, Event};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::db::{Db, Key, Row, Usage};
use crate::pool::Pool;

/// What a vCPU-second and a GB-second cost.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    pub currency: String,
    pub vcpu_second: f64,
    pub gb_second: f64,
}

impl Default for Prices {
    /// ACI's published Linux pay-as-you-go rates in East US.
    fn default() -> Self {
        Prices {
            currency: "USD".into(),
            vcpu_second: 0.0000135,
            gb_second: 0.0000015,
        }
    }
}

pub struct Config {
    pub data_dir: PathBuf,
    /// The DNS zone under which `dnsNameLabel`s get their fqdn.
    pub dns_zone: String,
    pub prices: Prices,
    /// How long a sync pass waits without a kick.
    pub resync: Duration,
    /// How long a pool host may go without answering before its running groups are moved
    /// to other hosts (and started there afresh).
    pub host_grace: Duration,
}

/// One group as the service holds it.
struct Live {
    uid: String,
    group: ContainerGroup,
    pod: Pod,
    stopped: bool,
    provisioning: &'static str,
    failure: Option<String>,
    status: Option<Value>,
    /// Events per container name; "" holds the group's own.
    events: BTreeMap<String, Vec<Event>>,
}

impl Live {
    /// Record an event under `container` ("" for the group's own): the same reason and
    /// message as the last one counts again; at most 50 are kept.
    fn record(&mut self, container: String, type_: &str, reason: &str, message: &str) {
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

/// What the pod sync and the service share.
struct Shared {
    groups: Mutex<BTreeMap<Key, Live>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// An accepted long-running operation: it follows the group it was started for.
#[derive(Debug, Clone)]
struct Operation {
    key: Key,
    uid: String,
    started: Timestamp,
}

/// What an operation URL reports.
#[derive(Debug, Clone, PartialEq)]
pub enum OpStatus {
    InProgress,
    Succeeded,
    Failed(ArmError),
}

/// A WebSocket handed out by `exec` or `attach`, good for one connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub container_id: String,
    pub password: String,
    /// `None` for attach (the container's output, followed).
    pub command: Option<Vec<String>>,
    pub rows: u16,
    pub cols: u16,
    expires: std::time::Instant,
}

pub struct Service {
    db: Db,
    pool: Arc<Pool>,
    /// The pool, as the pod sync sees it.
    runtime: Arc<dyn Runtime>,
    sync: Arc<PodSync>,
    shared: Arc<Shared>,
    tick_lock: tokio::sync::Mutex<()>,
    /// Groups (by uid) whose containers are being stopped outside the tick lock, so that a
    /// slow stop never holds up other groups: the runner neither syncs nor reaps them.
    draining: Mutex<std::collections::HashSet<String>>,
    kick: tokio::sync::Notify,
    cfg: Config,
    ops: Mutex<HashMap<String, Operation>>,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening {path}")]
    Db {
        path: PathBuf,
        #[source]
        source: crate::db::DbError,
    },
    #[error("stored group {name} cannot be read")]
    Stored {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn internal(e: impl std::fmt::Display) -> ArmError {
    ArmError::new(500, "InternalServerError", format!("{e:#}"))
}

fn not_found(key: &Key) -> ArmError {
    ArmError::new(
        404,
        "ResourceNotFound",
        format!(
            "The Resource '{}/{}' under resource group '{}' was not found.",
            aci::TYPE,
            key.name,
            key.rg
        ),
    )
}

/// A group's ports on its Public IP address: (port, protocol).
fn public_ports(g: &ContainerGroup) -> Vec<(i64, String)> {
    g.properties
        .ip_address
        .iter()
        .filter(|ip| ip.type_ == "Public")
        .flat_map(|ip| &ip.ports)
        .map(|p| {
            (
                p.port,
                p.protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_uppercase(),
            )
        })
        .collect()
}

/// Requests of a group: (vCPU, GB).
fn requests(g: &ContainerGroup) -> (f64, f64) {
    g.properties
        .containers
        .iter()
        .map(|c| &c.properties.resources.requests)
        .fold((0.0, 0.0), |(c, m), r| (c + r.cpu, m + r.memory_in_gb))
}

struct GitDirs<'a> {
    root: &'a std::path::Path,
}

impl aci::VolumeRoot for GitDirs<'_> {
    fn git_repo_dir(&self, volume: &str) -> String {
        self.root.join(volume).to_string_lossy().into_owned()
    }
}

impl Service {
    pub fn open(cfg: Config, pool: Arc<Pool>) -> Result<Arc<Service>, OpenError> {
        let runtime: Arc<dyn Runtime> = pool.clone();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| OpenError::Db {
            path: cfg.data_dir.clone(),
            source: crate::db::DbError::from(rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
        })?;
        let path = cfg.data_dir.join("instances.db");
        let db = Db::open(&path).map_err(|source| OpenError::Db {
            path: path.clone(),
            source,
        })?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            groups: Mutex::default(),
            changed,
        });
        let host = Arc::new(GroupHost {
            shared: shared.clone(),
        });
        let sync = Arc::new(PodSync::new(
            runtime.clone(),
            host,
            Backoff::default(),
            cfg.data_dir.clone(),
        ));
        let svc = Arc::new(Service {
            db,
            pool,
            runtime,
            sync,
            shared,
            tick_lock: tokio::sync::Mutex::new(()),
            draining: Mutex::default(),
            kick: tokio::sync::Notify::new(),
            cfg,
            ops: Mutex::default(),
            sessions: Mutex::default(),
        });
        let rows = svc
            .db
            .groups()
            .map_err(|source| OpenError::Db { path, source })?;
        for row in rows {
            let group: ContainerGroup =
                serde_json::from_str(&row.body).map_err(|source| OpenError::Stored {
                    name: row.key.name.clone(),
                    source,
                })?;
            // A stopped group was deployed before; a running one shows Creating until the
            // first pass has seen its containers again.
            let state = if row.stopped { "Succeeded" } else { "Creating" };
            // A database from before pools, or a host since taken out of the pool: the
            // group goes to the first host.
            let host = svc.pool.index_of(&row.host).unwrap_or_else(|| {
                if !row.host.is_empty() {
                    tracing::warn!(group = %row.key.name, host = %row.host, "the group's host is no longer in the pool; it moves to the first host");
                }
                0
            });
            svc.pool.assign(&row.uid, host);
            let live = svc.live(&row.key, &row.uid, group, row.stopped, state);
            svc.shared
                .groups
                .lock()
                .expect("groups")
                .insert(row.key, live);
        }
        Ok(svc)
    }

    fn git_root(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("git").join(uid)
    }

    fn live(
        &self,
        key: &Key,
        uid: &str,
        group: ContainerGroup,
        stopped: bool,
        provisioning: &'static str,
    ) -> Live {
        let root = self.git_root(uid);
        let pod = aci::to_pod(&group, &key.rg, &key.name, uid, &GitDirs { root: &root });
        let pod = serde_json::from_value(pod).expect("a validated group makes a valid pod");
        Live {
            uid: uid.to_string(),
            group,
            pod,
            stopped,
            provisioning,
            failure: None,
            status: None,
            events: BTreeMap::new(),
        }
    }

    /// Run the sync loop until the process ends.
    pub fn spawn_runner(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        tokio::spawn(async move {
            let upkeep = Arc::new(tokio::sync::Mutex::new(()));
            loop {
                svc.tick().await;
                // Runtime upkeep (refilling the warm pool) beside the passes, never inside.
                if let Ok(guard) = upkeep.clone().try_lock_owned() {
                    let rt = svc.runtime.clone();
                    tokio::spawn(async move {
                        rt.maintain().await;
                        drop(guard);
                    });
                }
                // While a deployment is under way, look again soon: a container started in
                // this pass shows as running only in the runtime's next listing.
                let busy = svc
                    .shared
                    .groups
                    .lock()
                    .expect("groups")
                    .values()
                    .any(|l| !l.stopped && matches!(l.provisioning, "Pending" | "Creating"));
                let wait = if busy {
                    Duration::from_millis(20)
                } else {
                    svc.cfg.resync
                };
                tokio::select! {
                    _ = svc.kick.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// One pass: every running group's pod one step closer to its spec.
    async fn tick(&self) {
        let _pass = self.tick_lock.lock().await;
        let obs = match self.runtime.list().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "listing the runtime failed");
                return;
            }
        };
        let draining = self.draining.lock().expect("draining").clone();
        self.move_off_silent_hosts(&draining).await;
        let (pods, mut live): (Vec<Pod>, Vec<String>) = {
            let groups = self.shared.groups.lock().expect("groups");
            groups
                .values()
                .filter(|l| !l.stopped && !draining.contains(&l.uid))
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
        let syncs = pods.iter().map(|p| self.sync.sync(p, &obs));
        live.extend(draining);
        for res in futures::future::join_all(syncs).await {
            if let Err(e) = res {
                tracing::warn!(error = %e, "syncing a container group failed");
            }
        }
        self.sync.remove_orphans(&live, &obs).await;
    }

    /// Move every running group of a host silent for longer than the grace to a host that
    /// answers and has its images, room and ports; called under the tick lock. A group with
    /// nowhere to go waits on its host, and its events say why.
    async fn move_off_silent_hosts(&self, draining: &std::collections::HashSet<String>) {
        let now = std::time::Instant::now();
        let hosts = self.pool.hosts();
        let silent: Vec<Option<Duration>> = (0..hosts.len())
            .map(|h| self.pool.silent_for(h, now))
            .collect();
        if !silent
            .iter()
            .any(|s| s.is_some_and(|d| d >= self.cfg.host_grace))
        {
            return;
        }
        let answering = self.pool.answering(now);
        let stranded: Vec<(Key, String, ContainerGroup, usize)> = {
            let groups = self.shared.groups.lock().expect("groups");
            groups
                .iter()
                .filter(|(_, l)| !l.stopped && !draining.contains(&l.uid))
                .filter_map(|(k, l)| {
                    let h = self.pool.placement(&l.uid)?;
                    silent[h]
                        .is_some_and(|d| d >= self.cfg.host_grace)
                        .then(|| (k.clone(), l.uid.clone(), l.group.clone(), h))
                })
                .collect()
        };
        let told = !stranded.is_empty();
        for (key, uid, group, from) in stranded {
            let from_name = hosts[from].name.clone();
            let grace_s = self.cfg.host_grace.as_secs();
            let chosen = match self.check_images(&group, &key.name, &answering).await {
                Ok(candidates) => self.choose_host(&group, &key.name, &candidates),
                Err(e) => Err(e),
            };
            let to = match chosen {
                Ok(to) => to,
                Err(e) => {
                    let message = format!("Host '{from_name}' has not answered for {grace_s} s or more and the group fits on no other host: {}", e.message);
                    self.group_event(&key, "Warning", "HostUnreachable", &message);
                    continue;
                }
            };
            let to_name = hosts[to].name.clone();
            if let Err(e) = self.db.set_host(&key, &to_name) {
                tracing::warn!(group = %key.name, error = %e, "storing a group's new host failed");
                continue;
            }
            self.pool.assign(&uid, to);
            tracing::warn!(group = %key.name, from = %from_name, to = %to_name, "moved a group off a host that does not answer");
            self.with_live(&key, |l| l.status = None).ok();
            let message = format!("Host '{from_name}' has not answered for {grace_s} s or more: the group was moved to host '{to_name}' and is started there");
            self.group_event(&key, "Warning", "Rescheduled", &message);
        }
        if told {
            self.shared.bump();
        }
    }

    /// Record an event of the group itself (not of one of its containers).
    fn group_event(&self, key: &Key, type_: &str, reason: &str, message: &str) {
        let _ = self.with_live(key, |l| l.record(String::new(), type_, reason, message));
    }

    /// Claim a group's containers for a teardown; called under the tick lock. One operation
    /// at a time per group, as ARM has it.
    fn begin_drain(&self, uid: &str, name: &str) -> Result<(), ArmError> {
        if self
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
    async fn teardown(&self, uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        let res = self.stop_pod(uid, grace).await;
        self.end_drain(uid);
        res
    }

    /// Give back a claim taken by [`Self::begin_drain`].
    fn end_drain(&self, uid: &str) {
        self.draining.lock().expect("draining").remove(uid);
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

    /// The group as clients see it.
    fn view(&self, key: &Key, l: &Live) -> ContainerGroup {
        let mut g = aci::public_view(&l.group);
        g.id = Some(format!(
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
            key.sub,
            key.rg,
            aci::TYPE,
            key.name
        ));
        g.name = Some(key.name.clone());
        g.type_ = Some(aci::TYPE.into());
        let p = &mut g.properties;
        p.provisioning_state = Some(l.provisioning.into());
        p.restart_policy.get_or_insert_with(|| "Always".into());
        p.sku.get_or_insert_with(|| "Standard".into());
        let observed = aci::observe(l.status.as_ref(), &l.events);
        for c in p.containers.iter_mut().chain(p.init_containers.iter_mut()) {
            let view = if l.stopped {
                json!({"restartCount": 0, "events": l.events.get(&c.name).cloned().unwrap_or_default()})
            } else {
                observed.containers.get(&c.name).cloned().unwrap_or_else(
                    || json!({"restartCount": 0, "currentState": {"state": "Waiting", "detailStatus": "ContainerCreating"}, "events": []}),
                )
            };
            c.properties.instance_view = Some(view);
        }
        let state = if l.stopped { "Stopped" } else { observed.state };
        p.instance_view = Some(json!({
            "state": state,
            "events": l.events.get("").cloned().unwrap_or_default(),
        }));
        if let Some(ip) = &mut p.ip_address {
            ip.ip = if ip.type_ == "Public" {
                Some(self.host_of(&l.uid).address.clone())
            } else {
                l.status
                    .as_ref()
                    .and_then(|s| s["podIP"].as_str())
                    .map(String::from)
            };
            ip.fqdn = ip
                .dns_name_label
                .as_ref()
                .map(|d| format!("{d}.{}.{}", g.location, self.cfg.dns_zone));
        }
        g
    }

    /// The pool host a stored group was placed on (assigned on PUT and on opening, before
    /// the group is in the map, and forgotten only after it has left it).
    fn placement(&self, uid: &str) -> usize {
        self.pool
            .placement(uid)
            .expect("every stored group is placed on a host")
    }

    fn host_of(&self, uid: &str) -> &crate::pool::Host {
        &self.pool.hosts()[self.placement(uid)]
    }

    fn with_live<T>(&self, key: &Key, f: impl FnOnce(&mut Live) -> T) -> Result<T, ArmError> {
        let mut groups = self.shared.groups.lock().expect("groups");
        groups.get_mut(key).map(f).ok_or_else(|| not_found(key))
    }

    pub fn get(&self, key: &Key) -> Result<ContainerGroup, ArmError> {
        let groups = self.shared.groups.lock().expect("groups");
        groups
            .get(key)
            .map(|l| self.view(key, l))
            .ok_or_else(|| not_found(key))
    }

    /// Groups of a subscription, optionally of one resource group (ARM matches its name
    /// without regard to case), in name order.
    pub fn list(&self, sub: &str, rg: Option<&str>) -> Vec<ContainerGroup> {
        let groups = self.shared.groups.lock().expect("groups");
        groups
            .iter()
            .filter(|(k, _)| k.sub == sub && rg.is_none_or(|rg| k.rg.eq_ignore_ascii_case(rg)))
            .map(|(k, l)| self.view(k, l))
            .collect()
    }

    /// Create or update a group. Returns the group, whether it was created, and the id of
    /// the operation that follows its deployment.
    pub async fn put(
        &self,
        key: &Key,
        mut group: ContainerGroup,
    ) -> Result<(ContainerGroup, bool, String), ArmError> {
        aci::validate_resource_group(&key.rg)?;
        aci::validate_name(&key.name)?;
        aci::validate(&group)?;
        group.id = None;
        group.name = None;
        group.type_ = None;
        group.properties.provisioning_state = None;
        group.properties.instance_view = None;
        for c in group
            .properties
            .containers
            .iter_mut()
            .chain(group.properties.init_containers.iter_mut())
        {
            c.properties.instance_view = None;
        }
        let existing = {
            let groups = self.shared.groups.lock().expect("groups");
            groups.get(key).map(|l| {
                let host = self.placement(&l.uid);
                (l.uid.clone(), l.group.clone(), l.stopped, host)
            })
        };
        if let Some((_, old, false, _)) = &existing {
            if let Some(refusal) = aci::update_refusal(old, &group) {
                return Err(refusal);
            }
        }
        // A deployed group stays on its host; a new one may go to any host with its images.
        let hosts: Vec<usize> = match &existing {
            Some((_, _, _, host)) => vec![*host],
            None => self.answering_hosts(&key.name)?,
        };
        let candidates = self.check_images(&group, &key.name, &hosts).await?;
        let uid = match &existing {
            Some((uid, ..)) => uid.clone(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        self.clone_repos(&group, &uid).await?;
        let unchanged = matches!(&existing, Some((_, old, false, _)) if *old == group);
        let body = serde_json::to_string(&group).map_err(internal)?;
        let created = existing.is_none();
        let was_stopped = matches!(existing, Some((_, _, true, _)));
        let now = now_ms();
        let _pass = self.tick_lock.lock().await;
        // Placed under the lock, so that two deployments never both take the last room or
        // the same public port of a host.
        let host = match &existing {
            Some((_, _, false, host)) => *host,
            // A stopped group holds nothing on its host: it needs room there again.
            Some((.., host)) => self.choose_host(&group, &key.name, &[*host])?,
            None => match self.choose_host(&group, &key.name, &candidates) {
                Ok(h) => h,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(self.git_root(&uid));
                    return Err(e);
                }
            },
        };
        let row = Row {
            key: key.clone(),
            uid: uid.clone(),
            body,
            stopped: false,
            created_ms: now,
            host: self.pool.hosts()[host].name.clone(),
        };
        // Redeploying a changed, running group restarts it in place.
        let redeploy = !created && !unchanged && !was_stopped;
        if redeploy {
            self.begin_drain(&uid, &key.name)?;
        }
        if let Err(e) = self.db.put(&row, Some(requests(&group)), now) {
            self.end_drain(&uid);
            return Err(internal(e));
        }
        let state = if unchanged { None } else { Some("Pending") };
        self.pool.assign(&uid, host);
        {
            let mut groups = self.shared.groups.lock().expect("groups");
            match (groups.get_mut(key), state) {
                (Some(l), None) => l.group = group,
                (Some(l), Some(p)) if !was_stopped => {
                    let events = std::mem::take(&mut l.events);
                    *l = self.live(key, &uid, group, false, p);
                    l.events = events;
                }
                _ => {
                    let l = self.live(key, &uid, group, false, "Pending");
                    groups.insert(key.clone(), l);
                }
            }
        }
        drop(_pass);
        if redeploy {
            self.teardown(&uid, Duration::from_secs(2))
                .await
                .map_err(internal)?;
        }
        self.shared.bump();
        self.kick.notify_one();
        let op = self.operation(key, &uid);
        Ok((self.get(key)?, created, op))
    }

    /// The hosts that answered their last listing; none is a 409 that says so.
    fn answering_hosts(&self, name: &str) -> Result<Vec<usize>, ArmError> {
        let answering = self.pool.answering(std::time::Instant::now());
        if answering.is_empty() {
            return Err(ArmError::new(
                409,
                "ServiceUnavailable",
                format!("No host of the pool answers, so container group '{name}' cannot be placed; check that the hosts' engines run and are reachable, then retry."),
            ));
        }
        Ok(answering)
    }

    /// Which of `hosts` hold every image of `g`; none is an error naming the first image
    /// missing (there is no registry to pull from).
    async fn check_images(
        &self,
        g: &ContainerGroup,
        name: &str,
        hosts: &[usize],
    ) -> Result<Vec<usize>, ArmError> {
        let mut holding = Vec::new();
        let mut first_missing = None;
        for &h in hosts {
            match self.missing_image(g, name, h).await {
                None => holding.push(h),
                Some(e) => {
                    first_missing.get_or_insert(e);
                }
            }
        }
        match first_missing {
            Some(e) if holding.is_empty() => Err(e),
            _ => Ok(holding),
        }
    }

    /// The error for the first image of `g` that host `h` lacks.
    async fn missing_image(&self, g: &ContainerGroup, name: &str, h: usize) -> Option<ArmError> {
        let host = &self.pool.hosts()[h];
        let where_ = if self.pool.hosts().len() == 1 {
            "on this host".to_string()
        } else {
            format!(
                "on any host of the pool (looked on host '{}' and the rest)",
                host.name
            )
        };
        let all = g
            .properties
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("properties.containers[{i}]"), c))
            .chain(
                g.properties
                    .init_containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("properties.initContainers[{i}]"), c)),
            );
        for (at, c) in all {
            let image = &c.properties.image;
            if host
                .runtime
                .ensure_image(image, PullPolicy::Never)
                .await
                .is_err()
            {
                return Some(ArmError::bad(
                    "InaccessibleImage",
                    format!("{at}.properties.image"),
                    format!("The image '{image}' of container '{}' in container group '{name}' is not {where_} and there is no registry to pull it from; build or load it first (docker build / docker load).", c.name),
                ));
            }
        }
        None
    }

    /// The host for a new group among `candidates` (hosts holding its images): one where its
    /// public ports are free and its requests fit beside the running groups, the least
    /// allocated first (the larger free share of CPU or memory, whichever is scarcer).
    fn choose_host(
        &self,
        g: &ContainerGroup,
        name: &str,
        candidates: &[usize],
    ) -> Result<usize, ArmError> {
        let (cpu, mem) = requests(g);
        let ports = public_ports(g);
        let hosts = self.pool.hosts();
        let mut used = vec![(0.0f64, 0.0f64, Vec::new()); hosts.len()];
        for l in self.shared.groups.lock().expect("groups").values() {
            if l.stopped {
                continue;
            }
            let (c, m) = requests(&l.group);
            let u = &mut used[self.placement(&l.uid)];
            u.0 += c;
            u.1 += m;
            u.2.extend(public_ports(&l.group));
        }
        let mut best: Option<(f64, usize)> = None;
        let mut why = Vec::new();
        for &h in candidates {
            let host = &hosts[h];
            let (free_cpu, free_mem) = (host.cpu - used[h].0, host.memory_gb - used[h].1);
            let taken: Vec<String> = ports
                .iter()
                .filter(|p| used[h].2.contains(p))
                .map(|(p, proto)| format!("{p}/{proto}"))
                .collect();
            if !taken.is_empty() {
                why.push(format!(
                    "{}: public port {} taken",
                    host.name,
                    taken.join(", ")
                ));
                continue;
            }
            if cpu > free_cpu + 1e-9 || mem > free_mem + 1e-9 {
                why.push(format!(
                    "{}: {:.2} CPU and {:.2} GB free",
                    host.name,
                    free_cpu.max(0.0),
                    free_mem.max(0.0)
                ));
                continue;
            }
            let score = ((free_cpu - cpu) / host.cpu).min((free_mem - mem) / host.memory_gb);
            if best.is_none_or(|(s, _)| score > s + 1e-12) {
                best = Some((score, h));
            }
        }
        best.map(|(_, h)| h).ok_or_else(|| {
            ArmError::new(
                409,
                "ServiceUnavailable",
                format!(
                    "The requested resource is not available for container group '{name}': {cpu} CPU and {mem} GB memory with public ports [{}] fit on no host that holds its images ({}). Retry with a smaller request or other ports, stop or delete a group, or add a host to the pool.",
                    ports.iter().map(|(p, proto)| format!("{p}/{proto}")).collect::<Vec<_>>().join(", "),
                    why.join("; ")
                ),
            )
        })
    }

    /// Clone each gitRepo volume, once per group.
    async fn clone_repos(&self, g: &ContainerGroup, uid: &str) -> Result<(), ArmError> {
        let root = self.git_root(uid);
        for (i, v) in g.properties.volumes.iter().enumerate() {
            let Some(git) = &v.git_repo else { continue };
            let dir = root.join(&v.name);
            if dir.exists() {
                continue;
            }
            let target = match git.directory.as_deref() {
                None | Some(".") => dir.clone(),
                Some(sub) if !sub.contains("..") => dir.join(sub),
                Some(sub) => {
                    return Err(ArmError::bad(
                        "InvalidGitRepoVolume",
                        format!("properties.volumes[{i}].gitRepo.directory"),
                        format!("The directory '{sub}' may not hold '..'."),
                    ))
                }
            };
            let _ = std::fs::create_dir_all(&dir);
            let mut cmd = tokio::process::Command::new("git");
            cmd.arg("clone")
                .arg("--quiet")
                .arg(&git.repository)
                .arg(&target);
            let out = cmd.output().await;
            let mut ok = matches!(&out, Ok(o) if o.status.success());
            if ok {
                if let Some(rev) = &git.revision {
                    let co = tokio::process::Command::new("git")
                        .arg("-C")
                        .arg(&target)
                        .args(["checkout", "--quiet", rev])
                        .output()
                        .await;
                    ok = matches!(co, Ok(o) if o.status.success());
                }
            }
            if !ok {
                let _ = std::fs::remove_dir_all(&dir);
                let why = match out {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => format!("git could not run: {e}"),
                };
                return Err(ArmError::bad(
                    "GitRepoVolumeCloneFailed",
                    format!("properties.volumes[{i}].gitRepo"),
                    format!(
                        "Cloning '{}' (revision {:?}) for volume '{}' failed: {why}",
                        git.repository, git.revision, v.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn operation(&self, key: &Key, uid: &str) -> String {
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
        let groups = self.shared.groups.lock().expect("groups");
        match groups.get(&op.key) {
            Some(l) if l.uid == op.uid => match l.provisioning {
                "Succeeded" => OpStatus::Succeeded,
                "Failed" => OpStatus::Failed(ArmError::new(
                    400,
                    "ContainerGroupDeploymentFailed",
                    l.failure
                        .clone()
                        .unwrap_or_else(|| "the deployment failed".into()),
                )),
                _ => OpStatus::InProgress,
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
        let mut rx = self.shared.changed.subscribe();
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

    /// Replace a group's tags (PATCH); nothing restarts.
    pub fn set_tags(
        &self,
        key: &Key,
        tags: BTreeMap<String, String>,
    ) -> Result<ContainerGroup, ArmError> {
        let (row, _) = self.with_live(key, |l| {
            l.group.tags = tags;
            let row = Row {
                key: key.clone(),
                uid: l.uid.clone(),
                body: serde_json::to_string(&l.group).unwrap_or_default(),
                stopped: l.stopped,
                created_ms: 0,
                host: self.host_of(&l.uid).name.clone(),
            };
            (row, ())
        })?;
        self.db.put(&row, None, now_ms()).map_err(internal)?;
        self.get(key)
    }

    /// Delete a group: its containers are killed at once (a short grace), billing ends.
    pub async fn delete(&self, key: &Key) -> Result<Option<ContainerGroup>, ArmError> {
        let _pass = self.tick_lock.lock().await;
        let Some(view) = self.get(key).ok() else {
            return Ok(None);
        };
        let uid = self.with_live(key, |l| l.uid.clone())?;
        self.begin_drain(&uid, &key.name)?;
        // Billing ends now; the containers go after the lock is released.
        if let Err(e) = self.db.delete(key, &uid, now_ms()) {
            self.end_drain(&uid);
            return Err(internal(e));
        }
        self.shared.groups.lock().expect("groups").remove(key);
        self.shared.bump();
        drop(_pass);
        self.teardown(&uid, Duration::from_secs(2))
            .await
            .map_err(internal)?;
        let _ = std::fs::remove_dir_all(self.git_root(&uid));
        self.pool.forget(&uid);
        Ok(Some(view))
    }

    /// Stop every container of a group; it stays defined, billing ends.
    pub async fn stop(&self, key: &Key) -> Result<(), ArmError> {
        let _pass = self.tick_lock.lock().await;
        let (uid, res, stopped) =
            self.with_live(key, |l| (l.uid.clone(), requests(&l.group), l.stopped))?;
        if stopped {
            return Ok(());
        }
        self.begin_drain(&uid, &key.name)?;
        if let Err(e) = self.db.set_stopped(key, &uid, true, res, now_ms()) {
            self.end_drain(&uid);
            return Err(internal(e));
        }
        self.with_live(key, |l| {
            l.stopped = true;
            l.status = None;
        })?;
        self.shared.bump();
        drop(_pass);
        self.teardown(&uid, Duration::from_secs(2))
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Start a stopped group again (a fresh deployment); returns the operation id.
    pub async fn start(&self, key: &Key) -> Result<String, ArmError> {
        let _pass = self.tick_lock.lock().await;
        let (uid, res, stopped, group, host) = self.with_live(key, |l| {
            (
                l.uid.clone(),
                requests(&l.group),
                l.stopped,
                l.group.clone(),
                self.placement(&l.uid),
            )
        })?;
        if stopped {
            // Its host may have filled up, or given its port to another group, meanwhile.
            self.choose_host(&group, &key.name, &[host])?;
            self.db
                .set_stopped(key, &uid, false, res, now_ms())
                .map_err(internal)?;
            self.with_live(key, |l| {
                l.stopped = false;
                l.provisioning = "Pending";
                l.failure = None;
            })?;
            self.shared.bump();
            self.kick.notify_one();
        }
        Ok(self.operation(key, &uid))
    }

    /// Restart every container of a running group in place.
    pub async fn restart(&self, key: &Key) -> Result<(), ArmError> {
        let _pass = self.tick_lock.lock().await;
        let (uid, stopped) = self.with_live(key, |l| (l.uid.clone(), l.stopped))?;
        if stopped {
            return Err(ArmError::new(
                409,
                "ContainerGroupStopped",
                format!(
                    "The container group '{}' is stopped; start it instead of restarting it.",
                    key.name
                ),
            ));
        }
        self.begin_drain(&uid, &key.name)?;
        self.with_live(key, |l| {
            l.status = None;
            l.events.entry(String::new()).or_default().push(event(
                "Restarting",
                "Restarting all containers of the group",
                "Normal",
            ));
        })?;
        drop(_pass);
        let res = self.teardown(&uid, Duration::from_secs(2)).await;
        self.shared.bump();
        self.kick.notify_one();
        res.map_err(internal)?;
        Ok(())
    }

    /// The runtime id of a container's latest attempt.
    async fn container_id(&self, key: &Key, container: &str) -> Result<String, ArmError> {
        let (uid, known) = self.with_live(key, |l| {
            let known = l
                .group
                .properties
                .containers
                .iter()
                .chain(&l.group.properties.init_containers)
                .any(|c| c.name == container);
            (l.uid.clone(), known)
        })?;
        if !known {
            return Err(ArmError::new(
                404,
                "ContainerNotFound",
                format!(
                    "The container '{container}' is not part of container group '{}'.",
                    key.name
                ),
            ));
        }
        let obs = self.runtime.list().await.map_err(internal)?;
        obs.containers
            .iter()
            .filter(|c| c.pod_uid == uid && c.name == container)
            .max_by_key(|c| c.attempt)
            .map(|c| c.id.clone())
            .ok_or_else(|| {
                ArmError::new(
                    409,
                    "ContainerNotRunning",
                    format!(
                        "The container '{container}' has not started yet; try again once it runs."
                    ),
                )
            })
    }

    /// The last lines of a container's output.
    pub async fn logs(
        &self,
        key: &Key,
        container: &str,
        tail: Option<u64>,
        timestamps: bool,
    ) -> Result<String, ArmError> {
        let id = self.container_id(key, container).await?;
        let opts = LogOptions {
            follow: false,
            tail,
            since: None,
            timestamps,
        };
        let mut stream = self.runtime.logs(&id, &opts).await.map_err(internal)?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(internal)?);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A container's output as a stream, following it (attach).
    pub async fn follow(
        &self,
        container_id: &str,
    ) -> Result<berth_agent::runtime::LogStream, RuntimeError> {
        let opts = LogOptions {
            follow: true,
            tail: Some(0),
            since: None,
            timestamps: false,
        };
        self.runtime.logs(container_id, &opts).await
    }

    /// Hand out a one-time WebSocket session for exec (`command`) or attach (`None`).
    pub async fn session(
        &self,
        key: &Key,
        container: &str,
        command: Option<Vec<String>>,
        rows: u16,
        cols: u16,
    ) -> Result<(String, String), ArmError> {
        let container_id = self.container_id(key, container).await?;
        use rand::Rng as _;
        let mut rng = rand::rng();
        let token: String = (0..32)
            .map(|_| format!("{:x}", rng.random::<u8>() & 15))
            .collect();
        let password: String = (0..32)
            .map(|_| format!("{:x}", rng.random::<u8>() & 15))
            .collect();
        let mut sessions = self.sessions.lock().expect("sessions");
        let now = std::time::Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                container_id,
                password: password.clone(),
                command,
                rows,
                cols,
                expires: now + Duration::from_secs(300),
            },
        );
        Ok((token, password))
    }

    /// Take a session by its token (it serves one connection).
    pub fn take_session(&self, token: &str) -> Option<Session> {
        let s = self.sessions.lock().expect("sessions").remove(token)?;
        (s.expires > std::time::Instant::now()).then_some(s)
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub fn prices(&self) -> &Prices {
        &self.cfg.prices
    }

    /// Billed usage per group in `[from, to)`.
    pub fn usage(
        &self,
        sub: &str,
        rg: Option<&str>,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Usage>, ArmError> {
        self.db
            .usage(
                sub,
                rg,
                name,
                from.as_millisecond(),
                to.as_millisecond(),
                now_ms(),
            )
            .map_err(internal)
    }

    /// The address a running group's `dnsNameLabel` fqdn (lowercase, no trailing dot)
    /// stands for.
    pub fn resolve(&self, fqdn: &str) -> Option<std::net::Ipv4Addr> {
        let groups = self.shared.groups.lock().expect("groups");
        let holder = groups.values().find(|l| {
            let ip = l.group.properties.ip_address.as_ref();
            let label = ip.and_then(|i| i.dns_name_label.as_deref());
            !l.stopped
                && label.is_some_and(|d| {
                    format!("{d}.{}.{}", l.group.location, self.cfg.dns_zone)
                        .eq_ignore_ascii_case(fqdn)
                })
        })?;
        self.host_of(&holder.uid).address.parse().ok()
    }

    pub fn dns_zone(&self) -> &str {
        &self.cfg.dns_zone
    }

    /// How many groups a subscription holds, for `locations/{l}/usages`.
    pub fn count(&self, sub: &str) -> (usize, f64) {
        let groups = self.shared.groups.lock().expect("groups");
        let mine = groups.iter().filter(|(k, _)| k.sub == sub);
        let cpu: f64 = mine
            .clone()
            .filter(|(_, l)| !l.stopped)
            .map(|(_, l)| requests(&l.group).0)
            .sum();
        (mine.count(), cpu)
    }
}

fn event(name: &str, message: &str, type_: &str) -> Event {
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
struct GroupHost {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PodHost for GroupHost {
    async fn write_status(&self, pod: &PodRef, status: &Value) -> Result<(), HostError> {
        {
            let mut groups = self.shared.groups.lock().expect("groups");
            let Some(l) = groups.values_mut().find(|l| l.uid == pod.uid) else {
                return Ok(());
            };
            if l.stopped {
                return Ok(());
            }
            let o = aci::observe(Some(status), &l.events);
            if matches!(l.provisioning, "Pending" | "Creating") {
                l.provisioning = if let Some(f) = o.failure {
                    l.failure = Some(f);
                    "Failed"
                } else if o.all_started || matches!(o.state, "Succeeded" | "Failed") {
                    "Succeeded"
                } else {
                    "Creating"
                };
            }
            l.status = Some(status.clone());
        }
        self.shared.bump();
        Ok(())
    }

    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String) {
        let mut groups = self.shared.groups.lock().expect("groups");
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
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, HostError> {
        if kind != SourceKind::Secret {
            return Ok(None);
        }
        let Some((group, volume)) = name.split_once('.') else {
            return Ok(None);
        };
        let groups = self.shared.groups.lock().expect("groups");
        Ok(groups
            .iter()
            .find(|(k, _)| k.rg == namespace && k.name == group)
            .and_then(|(_, l)| aci::secret_data(&l.group, volume)))
    }

    async fn deleted(&self, _pod: &PodRef) -> Result<(), HostError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Host;
    use berth_agent::runtime::mock::MockRuntime;

    fn group(cpu: f64, port: i64) -> ContainerGroup {
        serde_json::from_value(json!({"location": "eastus", "properties": {"osType": "Linux",
            "ipAddress": {"type": "Public", "ports": [{"port": port}]},
            "containers": [{"name": "c", "properties": {"image": "busybox", "ports": [{"port": port}],
                "resources": {"requests": {"cpu": cpu, "memoryInGB": 1.0}}}}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn groups_go_to_the_least_allocated_host_with_room_and_their_port_free() {
        let dir = tempfile::tempdir().unwrap();
        let host = |name: &str, cpu: f64| Host {
            name: name.into(),
            address: format!("10.0.0.{}", cpu as u8),
            cpu,
            memory_gb: 8.0,
            runtime: Arc::new(MockRuntime::new()),
        };
        let pool = Arc::new(Pool::new(vec![host("a", 2.0), host("b", 4.0)]).unwrap());
        let svc = Service::open(
            Config {
                data_dir: dir.path().to_path_buf(),
                dns_zone: "z".into(),
                prices: Prices::default(),
                resync: Duration::from_secs(1),
                host_grace: Duration::from_secs(30),
            },
            pool,
        )
        .unwrap();
        let key = |n: &str| Key {
            sub: "s".into(),
            rg: "rg".into(),
            name: n.into(),
        };
        let ip = |n: &str| {
            svc.get(&key(n))
                .unwrap()
                .properties
                .ip_address
                .unwrap()
                .ip
                .unwrap()
        };
        // b keeps the larger share free (3 of 4 against 1 of 2).
        svc.put(&key("g1"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g1"), "10.0.0.4");
        // Port 80 is taken on b.
        svc.put(&key("g2"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g2"), "10.0.0.2");
        // a has 1 CPU left, too little.
        svc.put(&key("g3"), group(1.5, 81)).await.unwrap();
        assert_eq!(ip("g3"), "10.0.0.4");
        let e = svc.put(&key("g4"), group(2.0, 80)).await.unwrap_err();
        assert_eq!((e.status, &*e.code), (409, "ServiceUnavailable"), "{e:?}");
        assert!(
            e.message.contains("a: public port 80/TCP taken") || e.message.contains("a: 1.00 CPU"),
            "{}",
            e.message
        );
        assert!(svc.get(&key("g4")).is_err(), "a refused group was stored");
        // A stopped group gives its port and room back, and needs them again to start.
        svc.stop(&key("g2")).await.unwrap();
        svc.put(&key("g5"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g5"), "10.0.0.2");
        let e = svc.start(&key("g2")).await.unwrap_err();
        assert_eq!(&*e.code, "ServiceUnavailable", "{e:?}");
        svc.delete(&key("g5")).await.unwrap();
        svc.start(&key("g2")).await.unwrap();
        assert_eq!(ip("g2"), "10.0.0.2");
    }

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
