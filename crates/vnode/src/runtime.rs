//! The virtual node's containers as a [`Runtime`], for the agent's HTTPS endpoint: `kubectl
//! logs` and `kubectl exec` on a virtual-node pod reach its group through the instances
//! API (its logs call and its exec WebSocket). Containers are `<group>/<container>`; the
//! node makes and removes groups itself, so the lifecycle calls are refused.
//!
//! ACI's limits show through: logs are read whole (`follow` polls them each second and
//! sends what is new), an exec runs a command line (shell-quoted; ACI itself splits at
//! spaces) on a terminal and reports no exit code (0).

use std::sync::Arc;
use std::time::Duration;

use berth_aci_client::{Client as Aci, GroupRef};
use berth_agent::runtime::{
    Channel, ContainerConfig, ContainerStats, ExecSession, LogOptions, LogStream, Observed,
    ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime, RuntimeError, State,
};
use futures::{FutureExt, StreamExt};
use serde_json::Value;

const DRIVER: &str = "instances";

pub struct Groups {
    pub aci: Arc<Aci>,
    pub subscription: String,
    pub resource_group: String,
    pub node: String,
}

fn failed(operation: &'static str) -> impl FnOnce(berth_aci_client::ClientError) -> RuntimeError {
    move |e| RuntimeError::Driver {
        driver: DRIVER,
        operation,
        source: Box::new(e),
    }
}

fn not_here(what: &'static str) -> RuntimeError {
    RuntimeError::NotSupported {
        driver: DRIVER,
        what,
    }
}

/// The suffix of a container id that names its previous run.
const PREVIOUS: &str = "/previous";

fn time(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str().and_then(|t| t.parse().ok())
}

/// Undo a terminal's output translation (each `\n` sent as `\r\n`), across chunks.
#[derive(Default)]
struct LineEnds {
    /// The last chunk ended in `\r`, held back until the next shows what follows it.
    held: bool,
}

impl LineEnds {
    fn undo(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        let mut input = bytes.iter().copied().peekable();
        if std::mem::take(&mut self.held) && input.peek() != Some(&b'\n') {
            out.push(b'\r');
        }
        while let Some(b) = input.next() {
            match (b, input.peek()) {
                (b'\r', Some(b'\n')) => {}
                (b'\r', None) => self.held = true,
                _ => out.push(b),
            }
        }
        out
    }
}

/// A container state in ACI's words as the runtime's.
fn state_of(v: &Value) -> Option<State> {
    match v["state"].as_str()? {
        "Running" => Some(State::Running {
            started_at: time(&v["startTime"]).unwrap_or_default(),
        }),
        "Terminated" => Some(State::Exited {
            exit_code: v["exitCode"].as_i64().unwrap_or(0),
            started_at: time(&v["startTime"]),
            finished_at: time(&v["finishTime"]).unwrap_or_default(),
            oom_killed: false,
        }),
        _ => None,
    }
}

impl Groups {
    /// The group and container of `id` (`<group>/<container>`, or with `/previous` the
    /// container's run before its current one).
    fn target(&self, id: &str) -> Option<(GroupRef, String, bool)> {
        let (group, container) = id.split_once('/')?;
        let (container, previous) = match container.strip_suffix(PREVIOUS) {
            Some(c) => (c, true),
            None => (container, false),
        };
        Some((
            GroupRef {
                sub: self.subscription.clone(),
                rg: self.resource_group.clone(),
                name: group.to_string(),
            },
            container.to_string(),
            previous,
        ))
    }
}

#[async_trait::async_trait]
impl Runtime for Groups {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn version(&self) -> String {
        format!("instances://{}", berth_aci_client::API_VERSION)
    }

    async fn ensure_image(&self, _image: &str, _policy: PullPolicy) -> Result<(), RuntimeError> {
        Err(not_here("pulling images"))
    }

    async fn create_sandbox(&self, _pod: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
        Err(not_here("sandboxes"))
    }

    async fn start_container(
        &self,
        _pod: &PodRef,
        _sandbox: &str,
        _c: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        Err(not_here("starting containers"))
    }

    /// Every container of this node's groups, as its current attempt.
    async fn list(&self) -> Result<Observed, RuntimeError> {
        let groups = self
            .aci
            .list(&self.subscription, Some(&self.resource_group))
            .await
            .map_err(failed("list groups"))?;
        let mut out = Observed::default();
        for g in groups {
            if g.tags.get(crate::group::TAG_NODE) != Some(&self.node) {
                continue;
            }
            let (Some(name), Some(uid)) = (&g.name, g.tags.get(crate::group::TAG_POD_UID)) else {
                continue;
            };
            let p = &g.properties;
            for c in p.containers.iter().chain(&p.init_containers) {
                let view = c.properties.instance_view.clone().unwrap_or_default();
                let attempt = view["restartCount"].as_u64().unwrap_or(0) as u32;
                let observed = |id: String, attempt: u32, state: State| ObservedContainer {
                    id,
                    pod_uid: uid.clone(),
                    name: c.name.clone(),
                    attempt,
                    image: c.properties.image.clone(),
                    image_id: String::new(),
                    state,
                };
                let id = format!("{name}/{}", c.name);
                // The run before this one, for `kubectl logs --previous`.
                let before = state_of(&view["previousState"]);
                if let (true, Some(s @ State::Exited { .. })) = (attempt > 0, before) {
                    out.containers
                        .push(observed(format!("{id}{PREVIOUS}"), attempt - 1, s));
                }
                let state = state_of(&view["currentState"]).unwrap_or(State::Created);
                out.containers.push(observed(id, attempt, state));
            }
        }
        Ok(out)
    }

    async fn stop(&self, _id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        Err(not_here("stopping single containers"))
    }

    async fn remove(&self, _id: &str) -> Result<(), RuntimeError> {
        Err(not_here("removing single containers"))
    }

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogStream, RuntimeError> {
        let (g, container, previous) = self.target(id).ok_or_else(|| not_here("this container"))?;
        let first = self
            .aci
            .logs(&g, &container, opts.tail, previous)
            .await
            .map_err(failed("read logs"))?;
        let head = futures::stream::once(async move { Ok(bytes::Bytes::from(first.clone())) });
        if !opts.follow {
            return Ok(head.boxed());
        }
        // Follow: read the whole log each second and send what was added.
        let aci = self.aci.clone();
        let seen = aci
            .logs(&g, &container, None, false)
            .await
            .map(|l| l.len())
            .unwrap_or(0);
        let more =
            futures::stream::unfold((aci, g, container, seen), |(aci, g, c, seen)| async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match aci.logs(&g, &c, None, false).await {
                        Ok(all) if all.len() > seen => {
                            let new = bytes::Bytes::from(all.as_bytes()[seen..].to_vec());
                            let len = all.len();
                            return Some((Ok(new), (aci, g, c, len)));
                        }
                        Ok(_) => {}
                        // The group is gone: the stream ends.
                        Err(_) => return None,
                    }
                }
            });
        Ok(head.chain(more).boxed())
    }

    /// A running container's use, from the group's metrics (a rate, not a total).
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let (g, container, _) = self.target(id).ok_or_else(|| not_here("this container"))?;
        let all = self.aci.metrics(&g).await.map_err(failed("read metrics"))?;
        let (millicores, bytes) =
            all.get(&container)
                .copied()
                .ok_or(RuntimeError::NotSupported {
                    driver: DRIVER,
                    what: "metrics of a container that has just started",
                })?;
        Ok(ContainerStats {
            cpu_nanos: 0,
            working_set_bytes: bytes,
            nano_cores: Some((millicores * 1e6) as u64),
        })
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, RuntimeError> {
        let (g, container, _) = self.target(id).ok_or_else(|| not_here("this container"))?;
        // Berth's instances service splits the line as a shell does; ACI itself splits at
        // spaces, where an argument that needs quoting cannot pass.
        let line = shlex::try_join(command.iter().map(String::as_str)).map_err(|e| {
            RuntimeError::Start {
                container: container.clone(),
                message: format!("the command cannot be sent to a container group: {e}"),
            }
        })?;
        let (out_tx, out_rx) = futures::channel::mpsc::unbounded();
        let (writer, reader) = tokio::io::duplex(16 * 1024);
        let input = berth_agent::runtime::chunks(Box::new(reader))
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok().map(|b| b.to_vec())))
            .boxed();
        let aci = self.aci.clone();
        // A group's exec is always a terminal: where the caller asked for none, its line
        // ends go back to what the program wrote.
        let mut lines = (!tty).then(LineEnds::default);
        let session = tokio::spawn(async move {
            aci.connect(&g, &container, Some(&line), input, |bytes| {
                let out = match &mut lines {
                    Some(l) => l.undo(bytes),
                    None => bytes.to_vec(),
                };
                let _ = out_tx.unbounded_send(Ok((Channel::Stdout, bytes::Bytes::from(out))));
            })
            .await
        });
        Ok(ExecSession {
            output: out_rx.boxed(),
            input: stdin
                .then(|| Box::pin(writer) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>),
            resize: Box::new(|_, _| futures::future::ready(()).boxed()),
            exit: async move {
                match session.await {
                    Ok(Ok(())) => Ok(0),
                    Ok(Err(e)) => Err(failed("exec")(e)),
                    Err(_) => Ok(255),
                }
            }
            .boxed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LineEnds;

    #[test]
    fn a_terminals_line_ends_are_undone_across_chunks() {
        let mut l = LineEnds::default();
        let mut out = l.undo(b"one\r\ntwo\r");
        out.extend(l.undo(b"\nthree\r"));
        out.extend(l.undo(b"x\r\n"));
        assert_eq!(out, b"one\ntwo\nthree\rx\n");
    }
}
