//! Health probes: startup, liveness and readiness, each httpGet, tcpSocket or exec, with
//! Kubernetes' timing (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold,
//! failureThreshold). State is per container id, so a restarted container starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

#[derive(Debug, Default, Clone)]
struct Track {
    last_run: Option<Timestamp>,
    successes: i32,
    failures: i32,
    /// The probe's verdict so far: None until thresholds are met either way.
    ok: Option<bool>,
    last_message: String,
}

/// What the prober concluded for one container this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub started: bool,
    pub ready: bool,
    /// Set when liveness (or startup) failed past its threshold: restart the container.
    pub kill: Option<String>,
}

#[derive(Default)]
pub struct Prober {
    tracks: Mutex<HashMap<(String, Kind), Track>>,
}

/// Where a network probe connects: its `host`, else the pod's IP.
fn target_host(host: Option<&str>, pod_ip: Option<&str>) -> String {
    host.or(pod_ip).unwrap_or("127.0.0.1").to_string()
}

/// The running container a prober looks at, at `now`.
pub struct Subject<'a> {
    pub rt: &'a dyn Runtime,
    pub container: &'a Container,
    /// The runtime's id of this run of the container.
    pub id: &'a str,
    pub started_at: Timestamp,
    pub pod_ip: Option<&'a str>,
    pub now: Timestamp,
}

/// Why one run of a probe (or a hook run as one) failed; its text is what Kubernetes shows
/// after "Liveness probe failed: ".
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid probe port {0}")]
    InvalidPort(i32),
    #[error("the probe names port {0:?}, which the container does not declare")]
    UndeclaredPort(String),
    #[error("HTTP probe to {host}:{port} failed")]
    Http {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no HTTP status line")]
    NoStatusLine,
    #[error("HTTP probe failed with statuscode: {0}")]
    Status(u16),
    #[error("dial tcp {host}:{port}")]
    Dial {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("command {command:?} exited with {code}")]
    Exit { command: Vec<String>, code: i64 },
    #[error("the probe's command could not run")]
    Exec(#[source] crate::runtime::RuntimeError),
    #[error("probe timed out")]
    Timeout,
    #[error("the probe has no handler: set httpGet, tcpSocket or exec")]
    NoHandler,
}

/// Run a container's `preStop` hook within `limit`; a hook's failure is only reported, as
/// Kubernetes does (the container is stopped either way).
pub async fn pre_stop(
    s: &Subject<'_>,
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    limit: Duration,
) -> Result<(), ProbeError> {
    if let Some(sleep) = &hook.sleep {
        let d = Duration::from_secs(sleep.seconds.max(0) as u64).min(limit);
        tokio::time::sleep(d).await;
        return Ok(());
    }
    // The handler types are a probe's; run it as one with the time that is left.
    let as_probe = Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        timeout_seconds: Some(limit.as_secs().max(1) as i32),
        ..Default::default()
    };
    run_once(s, &as_probe).await
}

/// The outcome of one probe run.
async fn run_once(s: &Subject<'_>, probe: &Probe) -> Result<(), ProbeError> {
    let (container, pod_ip) = (s.container, s.pod_ip);
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |p: &IntOrString| -> Result<u16, ProbeError> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).map_err(|_| ProbeError::InvalidPort(*n)),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| ProbeError::UndeclaredPort(name.clone())),
        }
    };
    if let Some(http) = &probe.http_get {
        let port = port_of(&http.port)?;
        let host = target_host(http.host.as_deref(), pod_ip);
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let io = |source| ProbeError::Http {
            host: host.clone(),
            port,
            source,
        };
        let fut = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(io)?;
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: berth-probe/1\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.map_err(io)?;
            let mut buf = vec![0u8; 256];
            let n = s.read(&mut buf).await.map_err(io)?;
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or(ProbeError::NoStatusLine)?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(ProbeError::Status(code))
            }
        };
        return tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(ProbeError::Timeout));
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(&tcp.port)?;
        let host = target_host(tcp.host.as_deref(), pod_ip);
        let fut = tokio::net::TcpStream::connect((host.as_str(), port));
        return match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(ProbeError::Dial { host, port, source }),
            Err(_) => Err(ProbeError::Timeout),
        };
    }
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match tokio::time::timeout(timeout, s.rt.exec_status(s.id, &cmd)).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(code)) => Err(ProbeError::Exit { command: cmd, code }),
            Ok(Err(e)) => Err(ProbeError::Exec(e)),
            Err(_) => Err(ProbeError::Timeout),
        };
    }
    Err(ProbeError::NoHandler)
}

impl Prober {
    /// Run the container's probes that are due and return the verdict.
    pub async fn check(&self, s: &Subject<'_>) -> Verdict {
        let mut verdict = Verdict {
            started: true,
            ready: true,
            kill: None,
        };
        if let Some(p) = &s.container.startup_probe {
            match self.run(s, Kind::Startup, p).await {
                Some(true) => {}
                failed_or_pending => {
                    verdict.started = false;
                    verdict.ready = false;
                    if failed_or_pending == Some(false) {
                        verdict.kill = Some(format!(
                            "Startup probe failed: {}",
                            self.message(s.id, Kind::Startup)
                        ));
                    }
                    return verdict;
                }
            }
        }
        if let Some(p) = &s.container.liveness_probe {
            if self.run(s, Kind::Liveness, p).await == Some(false) {
                verdict.kill = Some(format!(
                    "Liveness probe failed: {}",
                    self.message(s.id, Kind::Liveness)
                ));
            }
        }
        if let Some(p) = &s.container.readiness_probe {
            verdict.ready = self.run(s, Kind::Readiness, p).await == Some(true);
        }
        verdict
    }

    fn message(&self, id: &str, kind: Kind) -> String {
        self.tracks
            .lock()
            .expect("probe tracks")
            .get(&(id.to_string(), kind))
            .map(|t| t.last_message.clone())
            .unwrap_or_default()
    }

    async fn run(&self, s: &Subject<'_>, kind: Kind, p: &Probe) -> Option<bool> {
        let (id, started_at, now) = (s.id, s.started_at, s.now);
        let key = (id.to_string(), kind);
        let track = self
            .tracks
            .lock()
            .expect("probe tracks")
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let delay = p.initial_delay_seconds.unwrap_or(0).max(0) as i64;
        let period = p.period_seconds.unwrap_or(10).max(1) as i64;
        let due = now.as_second() >= started_at.as_second() + delay
            && track
                .last_run
                .is_none_or(|t| now.as_second() - t.as_second() >= period);
        if !due {
            return track.ok;
        }
        let result = run_once(s, p).await;
        let mut tracks = self.tracks.lock().expect("probe tracks");
        let t = tracks.entry(key).or_default();
        t.last_run = Some(now);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        match result {
            Ok(()) => {
                t.successes += 1;
                t.failures = 0;
                if t.successes >= success_threshold {
                    t.ok = Some(true);
                }
            }
            Err(e) => {
                t.failures += 1;
                t.successes = 0;
                t.last_message = berth_core::error::Chain(&e).to_string();
                if t.failures >= failure_threshold {
                    t.ok = Some(false);
                }
            }
        }
        t.ok
    }

    /// Forget probes of containers that no longer run.
    pub fn retain(&self, live_ids: &[&str]) {
        self.tracks
            .lock()
            .expect("probe tracks")
            .retain(|(id, _), _| live_ids.contains(&id.as_str()));
    }
}
