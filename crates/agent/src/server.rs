//! The agent's own HTTPS endpoint, which the API server calls for what only the node has:
//! container logs. Its certificate is issued by the cluster CA (so the API server can check
//! it is talking to this node), and it accepts only the proxy token the API server derives
//! for this node (so nobody else can read the node's logs).
//!
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&sinceSeconds&sinceTime&timestamps&previous`
//! `GET /attach/{namespace}/{pod}/{container}?stdin&tty` (WebSocket, as exec: the container's
//! own stdio)
//! `GET /portForward/{namespace}/{pod}?port=P` (WebSocket: the pod's port as binary messages)
//! `GET /metrics` (Prometheus' text format)
//! `GET /stats/summary` (the kubelet's Summary API shape: node and container CPU and memory)
//! `GET /exec/{namespace}/{pod}/{container}?command=..&stdin&tty` (WebSocket,
//! `v5.channel.k8s.io`, `v4.channel.k8s.io` or `channel.k8s.io`: each binary message starts
//! with its channel: 0 stdin, 1 stdout, 2 stderr, 3 errors (v4, v5: the final Status), 4
//! terminal size; v5 adds 255 to close one. `base64.channel.k8s.io`: text messages, the
//! channel as a digit and the data in base64)

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

use berth_core::error::Chain;

use crate::runtime::{LogOptions, Runtime};

/// What the API server hands an agent so that it can serve: a certificate for the node and
/// the token the API server will present.
#[derive(Debug, Clone)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub proxy_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the serving certificate from the API server is not usable")]
    Certificate(#[source] berth_tls::TlsError),
    #[error("listening on {addr} failed")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct AgentState {
    runtime: Arc<dyn Runtime>,
    pods: Store<Pod>,
    token: String,
    node: String,
    /// CPU samples per container id (and "" for the node).
    rates: crate::runtime::CpuRates,
    metrics: crate::telemetry::Metrics,
}

/// The host's CPU time used (ns, all cores) and memory (total, available), from /proc.
fn host_usage() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, t)| t)
        .sum();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    // USER_HZ is 100 on Linux: a tick is 10 ms.
    (busy * 10_000_000, kib("MemTotal:"), kib("MemAvailable:"))
}

/// Listen on `addr` (port 0: any); returns the port and the server, which serves until it
/// is dropped.
pub fn serve(
    addr: std::net::SocketAddr,
    node: &str,
    serving: &Serving,
    runtime: Arc<dyn Runtime>,
    pods: Store<Pod>,
    metrics: crate::telemetry::Metrics,
) -> Result<(u16, impl std::future::Future<Output = ()> + Send + 'static), ServeError> {
    let config = berth_tls::server_config(
        &serving.cert_pem,
        &serving.key_pem,
        "the serving certificate from the API server",
    )
    .map_err(ServeError::Certificate)?;
    // The API server's proxy speaks HTTP/1.1 to agents (exec and logs upgrade or stream).
    let mut config = config;
    std::sync::Arc::make_mut(&mut config).alpn_protocols = vec![b"http/1.1".to_vec()];
    let listen = |source| ServeError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let port = listener.local_addr().map_err(listen)?.port();
    let state = Arc::new(AgentState {
        runtime,
        pods,
        token: serving.proxy_token.clone(),
        node: node.to_string(),
        rates: Default::default(),
        metrics,
    });
    // The node's first sample, so that its first rate covers the time since start.
    state.rates.seed("", jiff::Timestamp::now(), host_usage().0);
    let app = axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::get(exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::get(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::get(port_forward),
        )
        .route("/stats/summary", axum::routing::get(summary))
        .route("/metrics", axum::routing::get(prometheus_text))
        .with_state(state);
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen)?;
    Ok((port, berth_tls::accept(listener, config, app)))
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

fn authorized(state: &AgentState, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(berth_core::bearer);
    presented == Some(state.token.as_str())
}

/// `GET /metrics`: Prometheus' text format.
async fn prometheus_text(State(state): State<Arc<AgentState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    match state.runtime.list().await {
        Ok(observed) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.render(&observed),
        )
            .into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()),
    }
}

/// `GET /stats/summary`: CPU and memory of the node and of each running container, in the
/// shape of the kubelet's Summary API (what metrics-server reads).
async fn summary(State(state): State<Arc<AgentState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let now = jiff::Timestamp::now();
    let observed = match state.runtime.list().await {
        Ok(o) => o,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()),
    };
    let usage = |cores: u64, total: u64, memory: u64| {
        (
            serde_json::json!({"time": now.to_string(), "usageNanoCores": cores, "usageCoreNanoSeconds": total}),
            serde_json::json!({"time": now.to_string(), "workingSetBytes": memory, "usageBytes": memory}),
        )
    };
    let mut pods = Vec::new();
    for pod in state.pods.state() {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (mut pod_cores, mut pod_cpu, mut pod_mem) = (0u64, 0u64, 0u64);
        let mut containers = Vec::new();
        // The pod's running containers, their stats read at once.
        let running: Vec<_> = observed
            .containers
            .iter()
            .filter(|c| c.pod_uid == uid)
            .filter_map(|c| match c.state {
                crate::runtime::State::Running { started_at } => Some((c, started_at)),
                _ => None,
            })
            .collect();
        let stats =
            futures::future::join_all(running.iter().map(|(c, _)| state.runtime.stats(&c.id)))
                .await;
        for ((c, started_at), st) in running.into_iter().zip(stats) {
            let Ok(st) = st else {
                continue;
            };
            let rate = || state.rates.rate(&c.id, now, st.cpu_nanos, started_at);
            let Some(cores) = st.nano_cores.or_else(rate) else {
                continue;
            };
            pod_cores += cores;
            pod_cpu += st.cpu_nanos;
            pod_mem += st.working_set_bytes;
            let (cpu, memory) = usage(cores, st.cpu_nanos, st.working_set_bytes);
            containers.push(serde_json::json!({
                "name": c.name, "startTime": started_at.to_string(), "cpu": cpu, "memory": memory,
            }));
        }
        if containers.is_empty() {
            continue;
        }
        let (cpu, memory) = usage(pod_cores, pod_cpu, pod_mem);
        pods.push(serde_json::json!({
            "podRef": {"name": pod.metadata.name, "namespace": pod.metadata.namespace, "uid": uid},
            "containers": containers, "cpu": cpu, "memory": memory,
        }));
    }
    state
        .rates
        .retain(|id| id.is_empty() || observed.containers.iter().any(|c| c.id == id));
    let (host_cpu, total, available) = host_usage();
    let cores = state.rates.rate("", now, host_cpu, now).unwrap_or(0);
    let (cpu, mut memory) = usage(cores, host_cpu, total.saturating_sub(available));
    memory["availableBytes"] = available.into();
    axum::Json(serde_json::json!({
        "node": {"nodeName": state.node, "cpu": cpu, "memory": memory},
        "pods": pods,
    }))
    .into_response()
}

/// Check the caller is the API server, and find the attempts of a container, newest first.
/// The uid of pod `namespace/pod` on this node, for the API server's proxy token only.
fn pod_uid(
    state: &AgentState,
    headers: &HeaderMap,
    namespace: &str,
    pod: &str,
) -> Result<String, (StatusCode, String)> {
    if !authorized(state, headers) {
        return Err((StatusCode::UNAUTHORIZED, "Unauthorized".into()));
    }
    state
        .pods
        .state()
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(pod)
        })
        .and_then(|p| p.metadata.uid.clone())
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} is not on this node"),
            )
        })
}

async fn attempts(
    state: &AgentState,
    headers: &HeaderMap,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<crate::runtime::ObservedContainer>, Response> {
    let uid = pod_uid(state, headers, namespace, pod).map_err(|(c, m)| refuse(c, m))?;
    let observed = state
        .runtime
        .list()
        .await
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()))?;
    let mut attempts: Vec<_> = observed
        .containers
        .into_iter()
        .filter(|c| c.pod_uid == uid && c.name == container)
        .collect();
    attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
    Ok(attempts)
}

async fn container_logs(
    State(state): State<Arc<AgentState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let attempts = match attempts(&state, &headers, &namespace, &pod, &container).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let previous = q.get("previous").is_some_and(|v| flag_value(v));
    let Some(target) = attempts.get(usize::from(previous)) else {
        let what = if previous {
            "previous terminated container"
        } else {
            "container"
        };
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{what} {container:?} in pod {pod:?} not found"),
        );
    };
    let since = q
        .get("sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| jiff::Timestamp::now().as_second() - s)
        .or_else(|| {
            q.get("sinceTime")
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second())
        });
    let opts = LogOptions {
        follow: q.get("follow").is_some_and(|v| flag_value(v)) && !previous,
        tail: q.get("tailLines").and_then(|n| n.parse().ok()),
        since,
        timestamps: q.get("timestamps").is_some_and(|v| flag_value(v)),
    };
    match state.runtime.logs(&target.id, &opts).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
            ([("content-type", "text/plain")], body).into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, Chain(&e).to_string()),
    }
}

use berth_core::query::flag as flag_value;

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter().any(|(k, v)| k == name && flag_value(v))
}

async fn exec(
    State(state): State<Arc<AgentState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let at = (namespace, pod, container);
    stdio_session(state, at, q, headers, ws, true).await
}

async fn attach(
    State(state): State<Arc<AgentState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let at = (namespace, pod, container);
    stdio_session(state, at, q, headers, ws, false).await
}

/// An exec (a `command` run in the container) or an attach (to the container's own stdio),
/// served on the WebSocket.
async fn stdio_session(
    state: Arc<AgentState>,
    (namespace, pod, container): (String, String, String),
    q: Vec<(String, String)>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
    exec: bool,
) -> Response {
    let attempts = match attempts(&state, &headers, &namespace, &pod, &container).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let Some(target) = attempts
        .first()
        .filter(|c| matches!(c.state, crate::runtime::State::Running { .. }))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        );
    };
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if exec && command.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container".into(),
        );
    }
    let (tty, stdin) = (flag(&q, "tty"), flag(&q, "stdin"));
    let session = if exec {
        state.runtime.exec(&target.id, &command, tty, stdin).await
    } else {
        state.runtime.attach(&target.id, tty, stdin).await
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, Chain(&e).to_string()),
    };
    ws.protocols(Framing::PROTOCOLS).on_upgrade(move |socket| {
        let framing = Framing::of(socket.protocol().and_then(|p| p.to_str().ok()));
        pump(socket, framing, session, command)
    })
}

/// `GET /portForward/{namespace}/{pod}?port=P` (WebSocket): a connection to `P` on the
/// loopback of the pod's network namespace, its bytes carried in binary messages; an empty
/// message says that side has no more to send (a half-close), and the session ends once
/// both sides have said so. The connection is made before the upgrade, so a refused port
/// is an HTTP error the API server passes on.
async fn port_forward(
    State(state): State<Arc<AgentState>>,
    Path((namespace, pod)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let uid = match pod_uid(&state, &headers, &namespace, &pod) {
        Ok(uid) => uid,
        Err((code, message)) => return refuse(code, message),
    };
    let Some(port) = q
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid port {:?}: a port-forward needs a port in 1-65535",
                q.get("port")
            ),
        );
    };
    let sandbox = match state.runtime.list().await {
        Ok(o) => o
            .sandboxes
            .into_iter()
            .find(|s| s.pod_uid == uid && s.running),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()),
    };
    let Some(sandbox) = sandbox else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("pod {namespace}/{pod} has no running sandbox to forward into"),
        );
    };
    let netns = match state.runtime.net_namespace(&sandbox.id).await {
        Ok(ns) => ns,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, Chain(&e).to_string()),
    };
    let conn = match crate::runtime::podns::connect_loopback(netns, port).await {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("error forwarding port {port} to pod {pod}, uid {uid}: {e}"),
            )
        }
    };
    ws.on_upgrade(move |socket| splice(socket, conn))
}

/// Carry bytes between a WebSocket and a TCP connection, half-closes included (see
/// [`port_forward`]).
async fn splice(socket: axum::extract::ws::WebSocket, conn: tokio::net::TcpStream) {
    use axum::extract::ws::Message;
    use futures::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tx, mut rx) = socket.split();
    let (mut from_pod, mut to_pod) = conn.into_split();
    // Ok: the API server is done sending (an empty message); Err: its side went away.
    let up = async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if data.is_empty() {
                let _ = to_pod.shutdown().await;
                return Ok(to_pod);
            }
            if to_pod.write_all(&data).await.is_err() {
                break;
            }
        }
        Err(())
    };
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
            }
        }
        let _ = tx.send(Message::Binary(Vec::new().into())).await;
        Some(tx)
    };
    tokio::pin!(down);
    let tx = tokio::select! {
        sent = up => match sent {
            // Half-closed: the pod's answer still goes back.
            Ok(_to_pod) => (&mut down).await,
            // Gone: the pod's connection closes whole (both halves dropped here).
            Err(()) => None,
        },
        tx = &mut down => tx,
    };
    if let Some(mut tx) = tx {
        let _ = tx.close().await;
    }
}

/// How channel messages travel, by the subprotocol agreed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Binary messages led by the channel byte; the error channel carries a Status (v4, v5).
    Status,
    /// Binary messages; the error channel carries the error's text (`channel.k8s.io`).
    Plain,
    /// Text messages: the channel as an ASCII digit, the data in base64.
    Base64,
}

impl Framing {
    const PROTOCOLS: [&'static str; 4] = [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "channel.k8s.io",
        "base64.channel.k8s.io",
    ];

    fn of(protocol: Option<&str>) -> Framing {
        match protocol {
            Some("channel.k8s.io") => Framing::Plain,
            Some("base64.channel.k8s.io") => Framing::Base64,
            _ => Framing::Status,
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> axum::extract::ws::Message {
        use axum::extract::ws::Message;
        use base64::Engine as _;
        match self {
            Framing::Base64 => {
                let text = format!(
                    "{channel}{}",
                    base64::engine::general_purpose::STANDARD.encode(data)
                );
                Message::Text(text.into())
            }
            _ => {
                let mut frame = Vec::with_capacity(data.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(data);
                Message::Binary(frame.into())
            }
        }
    }

    /// A message from the client as (channel, data); `None` for what carries none.
    fn decode(self, msg: axum::extract::ws::Message) -> Option<(u8, Vec<u8>)> {
        use axum::extract::ws::Message;
        use base64::Engine as _;
        // The channel byte leads either kind of frame on the binary protocols: the Python
        // client sends text (its stdin as a string after `chr(0)`).
        let raw: Vec<u8> = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_str().as_bytes().to_vec(),
            _ => return None,
        };
        let (&first, rest) = raw.split_first()?;
        match self {
            Framing::Base64 => {
                let channel = first.checked_sub(b'0').filter(|c| *c <= 9)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, data))
            }
            _ => Some((first, rest.to_vec())),
        }
    }
}

/// Carry an exec session over a channel-multiplexed WebSocket until the command ends, then
/// send its status on channel 3.
async fn pump(
    socket: axum::extract::ws::WebSocket,
    framing: Framing,
    session: crate::runtime::ExecSession,
    command: Vec<String>,
) {
    use axum::extract::ws::Message;
    use futures::SinkExt;
    use tokio::io::AsyncWriteExt;
    let crate::runtime::ExecSession {
        mut output,
        input,
        resize,
        exit,
    } = session;
    let (mut tx, mut rx) = socket.split();
    // Ends when the client goes away (closing stdin, so a container attached with
    // `stdinOnce` sees its end even over a protocol without a close signal).
    let mut input_task = tokio::spawn(async move {
        let mut input = input;
        while let Some(Ok(msg)) = rx.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = framing.decode(msg) else {
                continue;
            };
            match channel {
                0 => {
                    if let Some(w) = input.as_mut() {
                        if w.write_all(&data).await.is_err() {
                            input = None;
                        }
                    }
                }
                4 => {
                    let size: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                    let w = size["Width"].as_u64().unwrap_or(80) as u16;
                    let h = size["Height"].as_u64().unwrap_or(24) as u16;
                    resize(w, h).await;
                }
                // v5: the client closed a stream; stdin is the only one it writes.
                255 if data.first() == Some(&0) => {
                    if let Some(mut w) = input.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        if let Some(mut w) = input {
            let _ = w.shutdown().await;
        }
    });
    let forward = async {
        while let Some(chunk) = output.next().await {
            let Ok((channel, bytes)) = chunk else {
                break;
            };
            let channel = match channel {
                crate::runtime::Channel::Stdout => 1,
                crate::runtime::Channel::Stderr => 2,
            };
            if tx.send(framing.encode(channel, &bytes)).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        // The client is gone: nothing more to tell it (a quiet container would otherwise
        // hold this session, and its attach, open).
        _ = &mut input_task => return,
    }
    let status = match exit.await {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": Chain(&e).to_string(),
        }),
    };
    // The older protocols carry only an error's text, and nothing on success.
    let error = match framing {
        Framing::Status => Some(status.to_string()),
        _ => status["message"].as_str().map(String::from),
    };
    if let Some(error) = error {
        let _ = tx.send(framing.encode(3, error.as_bytes())).await;
    }
    let _ = tx
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
    input_task.abort();
}

#[cfg(test)]
mod tests {
    use super::Framing;
    use axum::extract::ws::Message;

    #[test]
    fn each_protocol_frames_channels_its_own_way() {
        let bin = Framing::of(Some("v4.channel.k8s.io")).encode(1, b"hi");
        assert_eq!(bin, Message::Binary(vec![1, b'h', b'i'].into()));
        assert_eq!(Framing::of(Some("channel.k8s.io")), Framing::Plain);
        let b64 = Framing::of(Some("base64.channel.k8s.io"));
        assert_eq!(b64.encode(2, b"hi"), Message::Text("2aGk=".into()));
        assert_eq!(
            b64.decode(Message::Text("0ZWNobyBoaQo=".into())),
            Some((0, b"echo hi\n".to_vec()))
        );
        assert_eq!(b64.decode(Message::Text("xaGk=".into())), None);
        // The Python client writes stdin as text after chr(0).
        assert_eq!(
            Framing::Status.decode(Message::Text("\u{0}ls\n".into())),
            Some((0, b"ls\n".to_vec()))
        );
    }
}
