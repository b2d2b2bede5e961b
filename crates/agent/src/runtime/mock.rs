//! The mock driver: no processes, behaviour read from each container's environment, for
//! tests. `MOCK_RUN_FOR=<seconds>` exits after that long (default: runs until stopped),
//! `MOCK_EXIT_CODE=<n>` is the exit code (default 0), `MOCK_START_ERROR=<message>` fails the
//! start. Images whose name starts with `missing/` are absent from the node.
//! [`MockRuntime::without_sandboxes`] is a node whose pod sandboxes cannot be made (a missing
//! pause image, say).

use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use futures::{FutureExt, StreamExt};

use super::{
    ContainerConfig, Observed, ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime,
    RuntimeError, State,
};

#[derive(Debug, Clone)]
struct Entry {
    container: ObservedContainer,
    run_for: Option<f64>,
    exit_code: i64,
}

#[derive(Default)]
pub struct MockRuntime {
    sandboxes: Mutex<Vec<ObservedSandbox>>,
    containers: Mutex<Vec<Entry>>,
    next_id: Mutex<u64>,
    /// Every sandbox creation fails with this pull error.
    sandbox_error: Option<String>,
}

impl MockRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node on which no pod sandbox can be made: the pause image cannot be had, for
    /// `why`.
    pub fn without_sandboxes(why: &str) -> Self {
        MockRuntime {
            sandbox_error: Some(why.to_string()),
            ..Self::default()
        }
    }

    fn id(&self, prefix: &str) -> String {
        let mut n = self.next_id.lock().expect("mock id");
        *n += 1;
        format!("{prefix}{:060}", *n)
    }

    /// The state now, for an entry whose behaviour says when it exits.
    fn refresh(e: &mut Entry, now: Timestamp) {
        if let (State::Running { started_at }, Some(secs)) = (&e.container.state, e.run_for) {
            let end = started_at
                .checked_add(SignedDuration::from_secs_f64(secs))
                .unwrap_or(now);
            if end <= now {
                e.container.state = State::Exited {
                    exit_code: e.exit_code,
                    started_at: Some(*started_at),
                    finished_at: end,
                    oom_killed: false,
                };
            }
        }
    }
}

fn env<'a>(c: &'a ContainerConfig, key: &str) -> Option<&'a str> {
    c.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[async_trait::async_trait]
impl Runtime for MockRuntime {
    fn name(&self) -> &'static str {
        "mock"
    }

    fn version(&self) -> String {
        "mock://1".into()
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError> {
        if !image.starts_with("missing/") {
            return Ok(());
        }
        match policy {
            PullPolicy::Never => Err(RuntimeError::ImageNeverPull {
                image: image.into(),
            }),
            _ => Err(RuntimeError::ImagePull {
                image: image.into(),
                message: "no registry serves it (mock)".into(),
            }),
        }
    }

    async fn create_sandbox(&self, pod: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
        if let Some(why) = &self.sandbox_error {
            return Err(RuntimeError::ImagePull {
                image: "berth/pause:1".into(),
                message: why.clone(),
            });
        }
        let n = self.sandboxes.lock().expect("mock").len();
        let sb = ObservedSandbox {
            id: self.id("s"),
            pod_uid: pod.uid.clone(),
            ip: Some(format!("10.244.0.{}", n % 250 + 2)),
            running: true,
        };
        self.sandboxes.lock().expect("mock").push(sb.clone());
        Ok(sb)
    }

    async fn start_container(
        &self,
        pod: &PodRef,
        _sandbox: &str,
        c: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        if let Some(msg) = env(c, "MOCK_START_ERROR") {
            return Err(RuntimeError::Start {
                container: c.name.clone(),
                message: msg.into(),
            });
        }
        self.ensure_image(&c.image, PullPolicy::Never)
            .await
            .map_err(|e| RuntimeError::Start {
                container: c.name.clone(),
                message: e.to_string(),
            })?;
        let id = self.id("c");
        let entry = Entry {
            container: ObservedContainer {
                id: id.clone(),
                pod_uid: pod.uid.clone(),
                name: c.name.clone(),
                attempt: c.attempt,
                image: c.image.clone(),
                image_id: format!("mock://{}", c.image),
                state: State::Running {
                    started_at: Timestamp::now(),
                },
            },
            run_for: env(c, "MOCK_RUN_FOR").and_then(|v| v.parse().ok()),
            exit_code: env(c, "MOCK_EXIT_CODE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        self.containers.lock().expect("mock").push(entry);
        Ok(id)
    }

    async fn list(&self) -> Result<Observed, RuntimeError> {
        let now = Timestamp::now();
        let mut containers = self.containers.lock().expect("mock");
        for e in containers.iter_mut() {
            Self::refresh(e, now);
        }
        Ok(Observed {
            sandboxes: self.sandboxes.lock().expect("mock").clone(),
            containers: containers.iter().map(|e| e.container.clone()).collect(),
        })
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let now = Timestamp::now();
        for e in self
            .containers
            .lock()
            .expect("mock")
            .iter_mut()
            .filter(|e| e.container.id == id)
        {
            Self::refresh(e, now);
            if let State::Running { started_at } = e.container.state {
                e.container.state = State::Exited {
                    exit_code: 137,
                    started_at: Some(started_at),
                    finished_at: now,
                    oom_killed: false,
                };
            }
        }
        for s in self
            .sandboxes
            .lock()
            .expect("mock")
            .iter_mut()
            .filter(|s| s.id == id)
        {
            s.running = false;
        }
        Ok(())
    }

    /// One line per container: `<name> attempt <n> started` (the tail of it, if asked).
    async fn logs(
        &self,
        id: &str,
        opts: &super::LogOptions,
    ) -> Result<super::LogStream, RuntimeError> {
        let line = self
            .containers
            .lock()
            .expect("mock")
            .iter()
            .find(|e| e.container.id == id)
            .map(|e| {
                format!(
                    "{} attempt {} started\n",
                    e.container.name, e.container.attempt
                )
            })
            .ok_or_else(|| RuntimeError::Start {
                container: id.into(),
                message: "no such container".into(),
            })?;
        let lines = if opts.tail == Some(0) {
            vec![]
        } else {
            vec![Ok(bytes::Bytes::from(line))]
        };
        Ok(futures::stream::iter(lines).boxed())
    }

    /// A running mock container uses 1 ms of CPU per second it has run and 1 MiB.
    async fn stats(&self, id: &str) -> Result<super::ContainerStats, RuntimeError> {
        let containers = self.containers.lock().expect("mock");
        let e = containers
            .iter()
            .find(|e| e.container.id == id)
            .ok_or_else(|| RuntimeError::Start {
                container: id.into(),
                message: "no such container".into(),
            })?;
        let ran = match e.container.state {
            State::Running { started_at } => {
                (Timestamp::now().as_millisecond() - started_at.as_millisecond()).max(0) as u64
            }
            _ => 0,
        };
        Ok(super::ContainerStats {
            cpu_nanos: ran * 1_000,
            working_set_bytes: 1 << 20,
            nano_cores: None,
        })
    }

    /// `echo a b` (or `busybox echo a b`) prints `a b`; `false` exits 1; anything else prints
    /// nothing and exits 0.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _tty: bool,
        _stdin: bool,
    ) -> Result<super::ExecSession, RuntimeError> {
        let code = self.exec_status(id, command).await?;
        let command = match command.split_first() {
            Some((first, rest)) if first.ends_with("busybox") => rest,
            _ => command,
        };
        let out = match command.split_first() {
            Some((first, rest)) if first == "echo" => format!("{}\n", rest.join(" ")),
            _ => String::new(),
        };
        let chunks = if out.is_empty() {
            vec![]
        } else {
            vec![Ok((super::Channel::Stdout, bytes::Bytes::from(out)))]
        };
        Ok(super::ExecSession {
            output: futures::stream::iter(chunks).boxed(),
            input: None,
            resize: Box::new(|_, _| futures::future::ready(()).boxed()),
            exit: futures::future::ready(Ok(code)).boxed(),
        })
    }

    /// Exit code 1 for the command `false`, else 0, in a running container.
    async fn exec_status(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let running =
            self.containers.lock().expect("mock").iter().any(|e| {
                e.container.id == id && matches!(e.container.state, State::Running { .. })
            });
        if !running {
            return Err(RuntimeError::Start {
                container: id.into(),
                message: "container is not running".into(),
            });
        }
        Ok(if command.first().map(String::as_str) == Some("false") {
            1
        } else {
            0
        })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.containers
            .lock()
            .expect("mock")
            .retain(|e| e.container.id != id);
        self.sandboxes.lock().expect("mock").retain(|s| s.id != id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, env: &[(&str, &str)]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: "mock/app:1".into(),
            command: None,
            args: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: vec![],
            working_dir: None,
            cpu_millis: None,
            memory_bytes: None,
            pull_policy: PullPolicy::IfNotPresent,
            attempt: 0,
            stdio: Default::default(),
        }
    }

    #[tokio::test]
    async fn mock_passes_the_conformance_suite() {
        let rt = MockRuntime::new();
        let runs = config("runs", &[]);
        let exits = config("exits", &[("MOCK_RUN_FOR", "0.2"), ("MOCK_EXIT_CODE", "3")]);
        crate::runtime::conformance::check(&rt, "uid-mock", runs, exits).await;
    }
}
