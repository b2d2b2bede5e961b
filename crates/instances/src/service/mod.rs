//! The service behind the API: container groups kept in memory and in the database, run as
//! pods by the agent's pod sync on the service's pool of hosts, and metered. This file
//! holds the registry and the verbs (put, get, list, tags, stop, start, restart, delete);
//! the rest is split by concern: `group` (a group, its lifecycle, where the pod sync
//! reports), `placement` (hosts for a group, moving off silent hosts), `runner` (the sync
//! passes and teardowns), `operations` (long-running operations), `sessions` (logs, exec
//! and attach), `metering` (prices and usage), `git` (gitRepo volumes), `dns` (names the
//! DNS server answers).
//!
//! ```text
//!  PUT ─▶ validate ▸ hosts with the images ▸ gitRepo cloned ▸ place (ports, room, least
//!         allocated) ▸ store (+ host, + meter opens) ▸ kick
//!                                                                           │
//!  runner: every second or on a kick ── runtime.list() ─▶ PodSync.sync(pod of each
//!          running group) ─▶ GroupOwner.write_status ─▶ instance view, Lifecycle
//!          (Pending ▸ Creating ▸ Running | Failed; Stopped) ─▶ provisioningState
//!  stop / delete ─▶ store (meter closes) ▸ tear the pod down
//! ```

mod dns;
mod git;
mod group;
mod metering;
mod operations;
mod placement;
mod runner;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::pods::{Backoff, PodSync};
use berth_agent::runtime::Runtime;
use berth_core::aci::{self, ArmError, ContainerGroup};
use jiff::Timestamp;
use serde_json::json;

use crate::db::{Db, Key, Row};
use crate::pool::Pool;
use git::GitDirs;
use group::{event, Group, GroupOwner, Lifecycle, Registry};
pub use metering::Prices;
pub use operations::OpStatus;
use operations::Operation;
use placement::requests;
pub use sessions::{ContainerMetrics, Session};

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

pub struct Service {
    db: Db,
    pool: Arc<Pool>,
    /// The pool, as the pod sync sees it.
    runtime: Arc<dyn Runtime>,
    sync: Arc<PodSync>,
    registry: Arc<Registry>,
    tick_lock: tokio::sync::Mutex<()>,
    kick: Arc<tokio::sync::Notify>,
    cfg: Config,
    ops: Mutex<HashMap<String, Operation>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// CPU samples of running containers, for their metrics.
    rates: berth_agent::runtime::CpuRates,
    /// Per group (uid), held while a pass syncs it, outside the tick lock: a teardown waits
    /// for it, so no container starts behind a stop.
    syncing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

fn internal(e: impl std::error::Error) -> ArmError {
    ArmError::new(
        500,
        "InternalServerError",
        berth_core::error::Chain(&e).to_string(),
    )
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
        let registry = Arc::new(Registry {
            groups: Mutex::default(),
            changed,
            draining: Mutex::default(),
        });
        let host = Arc::new(GroupOwner {
            registry: registry.clone(),
        });
        let sync = Arc::new(
            PodSync::new(
                runtime.clone(),
                host,
                Backoff::default(),
                cfg.data_dir.clone(),
            )
            .with_any_hostname(),
        );
        let svc = Arc::new(Service {
            db,
            pool,
            runtime,
            sync,
            registry,
            tick_lock: tokio::sync::Mutex::new(()),
            kick: Arc::new(tokio::sync::Notify::new()),
            cfg,
            ops: Mutex::default(),
            sessions: Mutex::default(),
            rates: Default::default(),
            syncing: Mutex::default(),
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
            let state = if row.stopped {
                Lifecycle::Stopped(Box::new(Lifecycle::Running))
            } else {
                Lifecycle::Creating
            };
            // A database from before pools, or a host since taken out of the pool: the
            // group goes to the first host.
            let host = svc.pool.index_of(&row.host).unwrap_or_else(|| {
                if !row.host.is_empty() {
                    tracing::warn!(group = %row.key.name, host = %row.host, "the group's host is no longer in the pool; it moves to the first host");
                }
                0
            });
            svc.pool.assign(&row.uid, host);
            let g = svc.new_group(&row.key, &row.uid, group, state);
            svc.registry
                .groups
                .lock()
                .expect("groups")
                .insert(row.key, g);
        }
        Ok(svc)
    }

    fn new_group(
        &self,
        key: &Key,
        uid: &str,
        group: ContainerGroup,
        lifecycle: Lifecycle,
    ) -> Group {
        let root = self.git_root(uid);
        let pod = aci::to_pod(&group, &key.rg, &key.name, uid, &GitDirs { root: &root });
        let pod = serde_json::from_value(pod).expect("a validated group makes a valid pod");
        Group {
            uid: uid.to_string(),
            group,
            pod,
            lifecycle,
            status: None,
            events: BTreeMap::new(),
        }
    }

    /// The group as clients see it.
    fn view(&self, key: &Key, l: &Group) -> ContainerGroup {
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
        p.provisioning_state = Some(l.lifecycle.provisioning_state().into());
        let stopped = l.lifecycle.is_stopped();
        p.restart_policy.get_or_insert_with(|| "Always".into());
        p.sku.get_or_insert_with(|| "Standard".into());
        let observed = aci::observe(l.status.as_ref(), &l.events);
        for c in p.containers.iter_mut().chain(p.init_containers.iter_mut()) {
            let view = if stopped {
                json!({"restartCount": 0, "events": l.events.get(&c.name).cloned().unwrap_or_default()})
            } else {
                observed.containers.get(&c.name).cloned().unwrap_or_else(
                    || json!({"restartCount": 0, "currentState": {"state": "Waiting", "detailStatus": "ContainerCreating"}, "events": []}),
                )
            };
            c.properties.instance_view = Some(view);
        }
        let state = if stopped { "Stopped" } else { observed.state };
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

    fn with_group<T>(&self, key: &Key, f: impl FnOnce(&mut Group) -> T) -> Result<T, ArmError> {
        let mut groups = self.registry.groups.lock().expect("groups");
        groups.get_mut(key).map(f).ok_or_else(|| not_found(key))
    }

    pub fn get(&self, key: &Key) -> Result<ContainerGroup, ArmError> {
        let groups = self.registry.groups.lock().expect("groups");
        groups
            .get(key)
            .map(|l| self.view(key, l))
            .ok_or_else(|| not_found(key))
    }

    /// Groups of a subscription, optionally of one resource group (ARM matches its name
    /// without regard to case), in name order.
    pub fn list(&self, sub: &str, rg: Option<&str>) -> Vec<ContainerGroup> {
        let groups = self.registry.groups.lock().expect("groups");
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
            let groups = self.registry.groups.lock().expect("groups");
            groups.get(key).map(|l| {
                let host = self.placement(&l.uid);
                (
                    l.uid.clone(),
                    l.group.clone(),
                    l.lifecycle.is_stopped(),
                    host,
                )
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
        let state = if unchanged {
            None
        } else {
            Some(Lifecycle::Pending)
        };
        self.pool.assign(&uid, host);
        {
            let mut groups = self.registry.groups.lock().expect("groups");
            match (groups.get_mut(key), state) {
                (Some(l), None) => l.group = group,
                (Some(l), Some(p)) if !was_stopped => {
                    let events = std::mem::take(&mut l.events);
                    *l = self.new_group(key, &uid, group, p);
                    l.events = events;
                }
                _ => {
                    let l = self.new_group(key, &uid, group, Lifecycle::Pending);
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
        self.registry.bump();
        self.kick.notify_one();
        let op = self.operation(key, &uid);
        Ok((self.get(key)?, created, op))
    }

    /// Replace a group's tags (PATCH); nothing restarts.
    pub fn set_tags(
        &self,
        key: &Key,
        tags: BTreeMap<String, String>,
    ) -> Result<ContainerGroup, ArmError> {
        let (row, _) = self.with_group(key, |l| {
            l.group.tags = tags;
            let row = Row {
                key: key.clone(),
                uid: l.uid.clone(),
                body: serde_json::to_string(&l.group).unwrap_or_default(),
                stopped: l.lifecycle.is_stopped(),
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
        let uid = self.with_group(key, |l| l.uid.clone())?;
        self.begin_drain(&uid, &key.name)?;
        // Billing ends now; the containers go after the lock is released.
        if let Err(e) = self.db.delete(key, &uid, now_ms()) {
            self.end_drain(&uid);
            return Err(internal(e));
        }
        self.registry.groups.lock().expect("groups").remove(key);
        self.registry.bump();
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
        let (uid, res, stopped) = self.with_group(key, |l| {
            (l.uid.clone(), requests(&l.group), l.lifecycle.is_stopped())
        })?;
        if stopped {
            return Ok(());
        }
        self.begin_drain(&uid, &key.name)?;
        if let Err(e) = self.db.set_stopped(key, &uid, true, res, now_ms()) {
            self.end_drain(&uid);
            return Err(internal(e));
        }
        self.with_group(key, |l| {
            l.lifecycle.stop();
            l.status = None;
        })?;
        self.registry.bump();
        drop(_pass);
        self.teardown(&uid, Duration::from_secs(2))
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// Start a stopped group again (a fresh deployment); returns the operation id.
    pub async fn start(&self, key: &Key) -> Result<String, ArmError> {
        let _pass = self.tick_lock.lock().await;
        let (uid, res, stopped, group, host) = self.with_group(key, |l| {
            (
                l.uid.clone(),
                requests(&l.group),
                l.lifecycle.is_stopped(),
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
            self.with_group(key, |l| l.lifecycle.start())?;
            self.registry.bump();
            self.kick.notify_one();
        }
        Ok(self.operation(key, &uid))
    }

    /// Restart every container of a running group in place.
    pub async fn restart(&self, key: &Key) -> Result<(), ArmError> {
        let _pass = self.tick_lock.lock().await;
        let (uid, stopped) = self.with_group(key, |l| (l.uid.clone(), l.lifecycle.is_stopped()))?;
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
        self.with_group(key, |l| {
            l.status = None;
            l.events.entry(String::new()).or_default().push(event(
                "Restarting",
                "Restarting all containers of the group",
                "Normal",
            ));
        })?;
        drop(_pass);
        let res = self.teardown(&uid, Duration::from_secs(2)).await;
        self.registry.bump();
        self.kick.notify_one();
        res.map_err(internal)?;
        Ok(())
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }
}
