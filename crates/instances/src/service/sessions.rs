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

impl Service {
    /// The runtime id of a container's latest attempt.
    async fn container_id(&self, key: &Key, container: &str) -> Result<String, ArmError> {
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
}
