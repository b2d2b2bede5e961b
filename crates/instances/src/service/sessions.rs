//! Containers reached through a group: their output (logs, attach) and one-time
//! WebSocket sessions for exec and attach.

use std::time::Duration;

use berth_agent::runtime::{LogOptions, RuntimeError};
use berth_core::aci::ArmError;
use futures::StreamExt;

use super::{internal, Service};
use crate::db::Key;

/// A WebSocket handed out by `exec` or `attach`, good for one connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub container_id: String,
    pub password: String,
    /// `None` for attach (the container's output, followed).
    pub command: Option<Vec<String>>,
    pub rows: u16,
    pub cols: u16,
    pub(super) expires: std::time::Instant,
}

/// One container's use now: CPU in millicores (since the previous reading, at least a
/// second apart) and memory in bytes (its working set).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerMetrics {
    pub container: String,
    pub cpu_millicores: f64,
    pub memory_bytes: u64,
}

impl Service {
    /// What each running container of a group uses now (the metrics ACI publishes as
    /// `CpuUsage` and `MemoryUsage`); a container just started has no CPU figure yet.
    pub async fn metrics(&self, key: &Key) -> Result<Vec<ContainerMetrics>, ArmError> {
        let uid = self.with_group(key, |l| l.uid.clone())?;
        let obs = self.runtime.list().await.map_err(internal)?;
        let now = jiff::Timestamp::now();
        let mut running: Vec<_> = obs
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid)
            .filter_map(|c| match c.state {
                berth_agent::runtime::State::Running { started_at } => Some((c, started_at)),
                _ => None,
            })
            .collect();
        running.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let stats =
            futures::future::join_all(running.iter().map(|(c, _)| self.runtime.stats(&c.id))).await;
        let mut out = Vec::new();
        for ((c, started_at), st) in running.into_iter().zip(stats) {
            let Ok(st) = st else { continue };
            let Some(nano) = self.rates.rate(&c.id, now, st.cpu_nanos, started_at) else {
                continue;
            };
            out.push(ContainerMetrics {
                container: c.name.clone(),
                cpu_millicores: nano as f64 / 1e6,
                memory_bytes: st.working_set_bytes,
            });
        }
        self.rates
            .retain(|id| obs.containers.iter().any(|c| c.id == id));
        Ok(out)
    }

    /// The runtime id of a container's latest attempt.
    async fn container_id(&self, key: &Key, container: &str) -> Result<String, ArmError> {
        self.attempt_id(key, container, false).await
    }

    /// The runtime id of a container's latest attempt, or (`previous`) the one before it.
    async fn attempt_id(
        &self,
        key: &Key,
        container: &str,
        previous: bool,
    ) -> Result<String, ArmError> {
        let (uid, known) = self.with_group(key, |l| {
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
        let mut attempts: Vec<_> = obs
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid && c.name == container)
            .collect();
        attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
        if previous {
            return attempts.get(1).map(|c| c.id.clone()).ok_or_else(|| {
                ArmError::new(
                    404,
                    "PreviousContainerNotFound",
                    format!("The container '{container}' has not been restarted, so it has no previous run to show."),
                )
            });
        }
        attempts.first().map(|c| c.id.clone()).ok_or_else(|| {
            ArmError::new(
                409,
                "ContainerNotRunning",
                format!("The container '{container}' has not started yet; try again once it runs."),
            )
        })
    }

    /// The last lines of a container's output (`previous`: of its run before this one, a
    /// Berth addition to ACI's logs call, as `kubectl logs --previous`).
    pub async fn logs(
        &self,
        key: &Key,
        container: &str,
        tail: Option<u64>,
        timestamps: bool,
        previous: bool,
    ) -> Result<String, ArmError> {
        let id = self.attempt_id(key, container, previous).await?;
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
}
