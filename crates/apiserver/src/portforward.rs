//! `pods/<name>/portforward`: a client's connections to a pod's ports. Each connection goes
//! to the pod's agent as a WebSocket of its own (`/portForward/{ns}/{pod}?port=P`: bytes in
//! binary messages, an empty one a half-close), and the agent connects to the port on the
//! pod's loopback. Clients speak one of three protocols, all served here:
//! - SPDY/3.1 over an HTTP upgrade (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version:
//!   portforward.k8s.io`), kubectl's fallback: each connection is an error stream and a data
//!   stream that share a `requestid`;
//! - the same SPDY carried in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`),
//!   kubectl 1.32's default;
//! - WebSocket `v4.channel.k8s.io` (kube-rs, the Python client): `ports=a,b`, one connection
//!   per port for the session, data on channel 2i and errors on 2i+1, each channel's first
//!   message the port (two bytes, little-endian).

use std::collections::HashMap;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as AgentMessage;

use crate::proxy::AgentSocket;
use crate::spdy::{self, Codec, Frame};
use crate::status::ApiError;

/// Opens a connection to a port of the pod (through its agent), or says why it cannot.
pub type Dial = Arc<dyn Fn(u16) -> BoxFuture<'static, Result<AgentSocket, String>> + Send + Sync>;

/// kubectl's protocol, in a WebSocket or after an HTTP upgrade.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that carries SPDY.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The channel protocol of kube-rs and the Python client.
pub const CHANNELS: &str = "v4.channel.k8s.io";

/// What a forward tells the session that owns the client's connection.
enum Event {
    Data(u64, Bytes),
    /// The forward ended, with the error to show the client if it failed.
    Done(u64, Option<String>),
}

/// How the client's side of a forward ended.
enum Upstream {
    HalfClosed,
    Reset,
    AgentGone,
}

/// Carry one connection to `port`: what the client sends arrives on `from_client` (an empty
/// chunk: it has no more to send; the channel closed: it reset), what the pod sends leaves
/// as events tagged `key`.
async fn forward(
    dial: Dial,
    port: u16,
    key: u64,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
    events: mpsc::Sender<Event>,
) {
    let socket = match dial(port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Done(key, Some(e))).await;
            return;
        }
    };
    let (mut tx, mut rx) = socket.split();
    let up = async {
        while let Some(b) = from_client.recv().await {
            let last = b.is_empty();
            if tx.send(AgentMessage::Binary(b)).await.is_err() {
                return Upstream::AgentGone;
            }
            if last {
                return Upstream::HalfClosed;
            }
        }
        Upstream::Reset
    };
    let down = async {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                AgentMessage::Binary(b) => b,
                AgentMessage::Close(_) => break,
                _ => continue,
            };
            if data.is_empty() || events.send(Event::Data(key, data)).await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(down);
    tokio::select! {
        how = up => match how {
            Upstream::Reset => return,
            // The client sends no more; the pod's answer still comes, unless the client's
            // session ends first.
            Upstream::HalfClosed | Upstream::AgentGone => tokio::select! {
                _ = &mut down => {}
                _ = events.closed() => return,
            },
        },
        _ = &mut down => {}
    }
    let _ = events.send(Event::Done(key, None)).await;
}

/// Frames or messages waiting to go to the client, and a forward's events waiting for the
/// session: bounded, so a slow client holds back the pod (through the agent's WebSocket)
/// rather than filling the API server's memory.
const QUEUE: usize = 64;

/// One connection of a SPDY session: its two streams and the way to its forward.
struct Request {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    to_pod: Option<mpsc::UnboundedSender<Bytes>>,
}

/// Serve kubectl's SPDY port-forward: frames arrive as chunks of `input` (split anywhere),
/// and what is written goes to `output`, one frame per buffer.
pub async fn spdy_session(
    mut input: impl Stream<Item = Bytes> + Unpin,
    output: mpsc::Sender<Vec<u8>>,
    dial: Dial,
) {
    let mut codec = Codec::default();
    let (events_tx, mut events) = mpsc::channel(QUEUE);
    // By request id; each has a key of its own for its forward's events.
    let mut keys: HashMap<String, u64> = HashMap::new();
    let mut requests: HashMap<u64, Request> = HashMap::new();
    let mut streams: HashMap<u32, u64> = HashMap::new();
    let mut next_key = 0u64;
    loop {
        tokio::select! {
            chunk = input.next() => {
                let Some(chunk) = chunk else { break };
                codec.feed(&chunk);
                loop {
                    let frame = match codec.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "port-forward: SPDY from the client is malformed");
                            let _ = output.send(codec.encode(&Frame::GoAway { last_good: 0, status: spdy::PROTOCOL_ERROR })).await;
                            return;
                        }
                    };
                    match frame {
                        Frame::SynStream { id, headers, .. } => {
                            let kind = Frame::header(&headers, "streamtype").unwrap_or("");
                            let port = Frame::header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                            let (Some(port), "data" | "error") = (port, kind) else {
                                let _ = output.send(codec.encode(&Frame::RstStream { id, status: spdy::PROTOCOL_ERROR })).await;
                                continue;
                            };
                            // Clients older than request ids open the data stream right
                            // after the error stream.
                            let request = Frame::header(&headers, "requestid").map(String::from).unwrap_or_else(|| {
                                (if kind == "data" { id.saturating_sub(2) } else { id }).to_string()
                            });
                            let _ = output.send(codec.encode(&Frame::SynReply { id, flags: 0, headers: vec![] })).await;
                            let key = *keys.entry(request).or_insert_with(|| { next_key += 1; next_key });
                            let r = requests.entry(key).or_insert(Request { port, error: None, data: None, to_pod: None });
                            if kind == "data" { r.data = Some(id) } else { r.error = Some(id) }
                            streams.insert(id, key);
                            if let (Some(_), Some(_), None) = (r.error, r.data, &r.to_pod) {
                                let (to_pod, from_client) = mpsc::unbounded_channel();
                                r.to_pod = Some(to_pod);
                                tokio::spawn(forward(dial.clone(), r.port, key, from_client, events_tx.clone()));
                            }
                        }
                        Frame::Data { id, flags, data } => {
                            let Some(r) = streams.get(&id).and_then(|k| requests.get_mut(k)) else { continue };
                            if r.data != Some(id) {
                                continue; // the client closes its error stream at once
                            }
                            if let Some(to_pod) = &r.to_pod {
                                if !data.is_empty() {
                                    let _ = to_pod.send(data);
                                }
                                if flags & spdy::FLAG_FIN != 0 {
                                    let _ = to_pod.send(Bytes::new());
                                }
                            }
                        }
                        Frame::RstStream { id, .. } => {
                            if let Some(key) = streams.remove(&id) {
                                if let Some(r) = requests.remove(&key) {
                                    streams.retain(|_, k| *k != key);
                                    keys.retain(|_, k| *k != key);
                                    drop(r); // its forward sees the reset
                                }
                            }
                        }
                        Frame::Ping(id) => {
                            let _ = output.send(codec.encode(&Frame::Ping(id))).await;
                        }
                        Frame::GoAway { .. } => return,
                        Frame::SynReply { .. } | Frame::Ignored(_) => {}
                    }
                }
            }
            Some(event) = events.recv() => match event {
                Event::Data(key, bytes) => {
                    if let Some(id) = requests.get(&key).and_then(|r| r.data) {
                        let _ = output.send(spdy::data_frame(id, 0, &bytes)).await;
                    }
                }
                Event::Done(key, error) => {
                    let Some(r) = requests.remove(&key) else { continue };
                    streams.retain(|_, k| *k != key);
                    keys.retain(|_, k| *k != key);
                    // As the kubelet ends one: the error (plain text) if any, then the error
                    // stream closed, then the data stream.
                    if let Some(id) = r.error {
                        if let Some(e) = error {
                            let _ = output.send(spdy::data_frame(id, 0, e.as_bytes())).await;
                        }
                        let _ = output.send(spdy::data_frame(id, spdy::FLAG_FIN, &[])).await;
                    }
                    if let Some(id) = r.data {
                        let _ = output.send(spdy::data_frame(id, spdy::FLAG_FIN, &[])).await;
                    }
                }
            },
        }
    }
}

/// Serve the `v4.channel.k8s.io` port-forward of kube-rs and the Python client on `socket`:
/// one connection to each of `ports` for the whole session, which ends when every one has.
pub async fn channel_session(socket: axum::extract::ws::WebSocket, ports: Vec<u16>, dial: Dial) {
    use axum::extract::ws::{CloseFrame, Message};
    let (mut tx, mut rx) = socket.split();
    let (events_tx, mut events) = mpsc::channel(QUEUE);
    let mut to_pod = Vec::with_capacity(ports.len());
    for (i, port) in ports.iter().enumerate() {
        let [lo, hi] = port.to_le_bytes();
        for channel in [2 * i as u8, 2 * i as u8 + 1] {
            if tx
                .send(Message::Binary(vec![channel, lo, hi].into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let (sender, from_client) = mpsc::unbounded_channel();
        to_pod.push(Some(sender));
        tokio::spawn(forward(
            dial.clone(),
            *port,
            i as u64,
            from_client,
            events_tx.clone(),
        ));
    }
    let mut live = ports.len();
    while live > 0 {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() > 1 && b[0] % 2 == 0 => {
                    if let Some(Some(sender)) = to_pod.get(usize::from(b[0] / 2)) {
                        let _ = sender.send(b.slice(1..));
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            Some(event) = events.recv() => match event {
                Event::Data(i, bytes) => {
                    let mut m = Vec::with_capacity(bytes.len() + 1);
                    m.push(2 * i as u8);
                    m.extend_from_slice(&bytes);
                    if tx.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                Event::Done(i, error) => {
                    if let Some(e) = error {
                        let mut m = vec![2 * i as u8 + 1];
                        m.extend_from_slice(e.as_bytes());
                        let _ = tx.send(Message::Binary(m.into())).await;
                    }
                    if let Some(slot) = to_pod.get_mut(i as usize) {
                        *slot = None;
                    }
                    live -= 1;
                }
            },
        }
    }
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// The ports of a `v4.channel.k8s.io` request: `ports=a,b` or `ports=a&ports=b`.
pub fn ports(query: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut out = Vec::new();
    for (_, v) in query.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => out.push(port),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {p:?} in query parameter \"ports\": ports are 1-65535"
                    )))
                }
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "query parameter \"ports\" is required: name the pod's ports to forward (ports=8080)",
        ));
    }
    if out.len() > 128 {
        return Err(ApiError::bad_request(
            "at most 128 ports can be forwarded in one session",
        ));
    }
    Ok(out)
}

/// Answer kubectl's `Upgrade: SPDY/3.1` and serve the session on the upgraded connection.
pub fn spdy_upgrade(parts: &mut http::request::Parts, dial: Dial) -> Result<Response, ApiError> {
    let offered: Vec<&str> = parts
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.contains(&SPDY_PROTOCOL) {
        let mut resp = ApiError::forbidden(format!(
            "unable to upgrade: the port-forward stream protocol {SPDY_PROTOCOL} was not \
             offered (X-Stream-Protocol-Version: {offered:?})"
        ))
        .into_response();
        resp.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            http::HeaderValue::from_static(SPDY_PROTOCOL),
        );
        return Ok(resp);
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded (HTTP/2?)"))?;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: the SPDY upgrade failed");
                return;
            }
        };
        let (read, mut write) = tokio::io::split(upgraded);
        let (output, mut frames) = mpsc::channel::<Vec<u8>>(QUEUE);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(f) = frames.recv().await {
                if write.write_all(&f).await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let input = read_chunks(read);
        spdy_session(input, output, dial).await;
        let _ = writer.await;
    });
    Ok(http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1")
        .header("x-stream-protocol-version", SPDY_PROTOCOL)
        .body(axum::body::Body::empty())
        .expect("a valid response"))
}

/// A reader as a stream of the chunks it yields, ending at EOF or an error.
fn read_chunks(
    read: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> impl Stream<Item = Bytes> + Unpin {
    use tokio::io::AsyncReadExt;
    Box::pin(futures::stream::unfold(read, |mut read| async move {
        let mut buf = vec![0u8; 32 * 1024];
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Bytes::from(buf), read))
            }
        }
    }))
}

/// Serve SPDY carried in a WebSocket's binary messages (kubectl 1.32's tunnel).
pub async fn spdy_tunnel(socket: axum::extract::ws::WebSocket, dial: Dial) {
    use axum::extract::ws::Message;
    let (mut tx, rx) = socket.split();
    let (output, mut frames) = mpsc::channel::<Vec<u8>>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if tx.send(Message::Binary(f.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    });
    let input = Box::pin(
        rx.take_while(|m| {
            std::future::ready(matches!(
                m,
                Ok(Message::Binary(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_))
            ))
        })
        .filter_map(|m| async move {
            match m {
                Ok(Message::Binary(b)) => Some(b),
                _ => None,
            }
        }),
    );
    spdy_session(input, output, dial).await;
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ports_come_comma_joined_or_repeated_and_are_checked() {
        assert_eq!(ports(&q(&[("ports", "80,8080")])).unwrap(), vec![80, 8080]);
        assert_eq!(
            ports(&q(&[("ports", "80"), ("ports", "81")])).unwrap(),
            vec![80, 81]
        );
        for bad in ["0", "70000", "http", ""] {
            let e = ports(&q(&[("ports", bad)])).unwrap_err();
            assert!(e.message.contains("ports"), "{bad}: {}", e.message);
        }
        assert!(ports(&q(&[])).unwrap_err().message.contains("required"));
    }
}
