//! What the API server asks of agents on a client's behalf: container logs
//! (`GET pods/<name>/log`), exec (`pods/<name>/exec`, WebSocket) and the node's own
//! endpoints (`GET nodes/<name>/proxy/stats/summary`).
//!
//! Both ends are checked: the agent's certificate must be signed by the cluster CA for the
//! node's address (issued by `POST /berth/v1/nodecert`), and the API server presents the
//! proxy token it derives for that node, which the agent alone was given.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use berth_core::{resources, Kind};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::auth::Tokens;
use crate::registry::Registry;
use crate::status::ApiError;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTPS client that trusts only the cluster CA.
#[derive(Clone)]
pub struct NodeProxy {
    client: Client<Https, Body>,
    tls: Arc<rustls::ClientConfig>,
}

/// Where a pod's container runs: the container's name, the node, and its agent's endpoint.
struct Target {
    container: String,
    node: String,
    address: String,
    port: u16,
}

impl Target {
    fn host(&self) -> String {
        url_host(&self.address)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            node: self.node.clone(),
            address: self.address.clone(),
            port: self.port,
        }
    }
}

/// An address as it goes in a URL's host (IPv6 in brackets).
fn url_host(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => address.to_string(),
    }
}

/// The WebSocket subprotocols Berth speaks for exec and attach, best first.
const EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The query parameters `kubectl logs` sends that the agent understands.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "previous",
];

impl NodeProxy {
    pub fn new(ca_pem: &str) -> NodeProxy {
        let tls = berth_tls::client_config(ca_pem);
        let https = berth_tls::https_connector(&tls);
        NodeProxy {
            client: Client::builder(TokioExecutor::new()).build(https),
            tls,
        }
    }

    /// Find the container (the one named in `container=`, or the only one) and its node.
    async fn target(
        registry: &Registry,
        ns: &str,
        name: &str,
        query: &[(String, String)],
    ) -> Result<Target, ApiError> {
        let (pod, at) = Self::pod_endpoint(registry, ns, name).await?;
        let names = |path: &str| -> Vec<String> {
            pod.pointer(path)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        };
        let (containers, inits) = (names("/spec/containers"), names("/spec/initContainers"));
        let asked = query
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.clone());
        let container = match (asked, containers.as_slice()) {
            (Some(c), _) if containers.contains(&c) || inits.contains(&c) => c,
            (Some(c), _) => {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )))
            }
        };
        Ok(Target {
            container,
            node: at.node,
            address: at.address,
            port: at.port,
        })
    }

    /// A pod, and the agent of the node it is bound to.
    async fn pod_endpoint(
        registry: &Registry,
        ns: &str,
        name: &str,
    ) -> Result<(Value, Endpoint), ApiError> {
        let pod = registry
            .get(resources::of_kind(Kind::Pod), Some(ns), name)
            .await?;
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            })?
            .to_string();
        let (address, port) = Self::agent_endpoint(registry, &node).await?;
        Ok((
            pod,
            Endpoint {
                node,
                address,
                port,
            },
        ))
    }

    /// The address and port of a node's agent, from the Node's status.
    async fn agent_endpoint(
        registry: &Registry,
        node_name: &str,
    ) -> Result<(String, u16), ApiError> {
        let node = registry
            .get(resources::of_kind(Kind::Node), None, node_name)
            .await?;
        let address = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str());
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0 && *p <= u16::MAX as u64);
        match (address, port) {
            (Some(a), Some(p)) => Ok((a.to_string(), p as u16)),
            _ => Err(ApiError::bad_request(format!(
                "node {node_name} has no agent endpoint (no InternalIP address or kubelet \
                 port in its status)"
            ))),
        }
    }

    /// GET `path` (with its query) from a node's agent, streaming the answer back.
    async fn get_from_agent(
        &self,
        tokens: &Tokens,
        node_name: &str,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Response, ApiError> {
        let url = format!("https://{host}:{port}{path}");
        let req = http::Request::get(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", tokens.proxy_token(node_name)),
            )
            .body(Body::empty())
            .map_err(|e| ApiError::internal(format!("building the request to {url}: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| {
            ApiError::internal(format!(
                "reaching the agent of node {node_name} at {host}:{port} failed: {e}"
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let message = body
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            return Err(match status.as_u16() {
                404 => ApiError::new(status, "NotFound", message),
                401 | 403 => ApiError::internal(format!(
                    "the agent of node {node_name} refused the API server: {message}"
                )),
                _ => ApiError::bad_request(message),
            });
        }
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("text/plain"));
        Ok((
            [(http::header::CONTENT_TYPE, content_type)],
            Body::new(resp.into_body()),
        )
            .into_response())
    }

    /// `GET nodes/<name>/proxy/<path>`: what the node's agent serves (`stats/summary`).
    pub async fn node_get(
        &self,
        registry: &Registry,
        tokens: &Tokens,
        node_name: &str,
        path_and_query: &str,
    ) -> Result<Response, ApiError> {
        let (address, port) = Self::agent_endpoint(registry, node_name).await?;
        self.get_from_agent(tokens, node_name, &url_host(&address), port, path_and_query)
            .await
    }

    /// `GET pods/<name>/log`: stream from the agent of the pod's node.
    pub async fn pod_log(
        &self,
        registry: &Registry,
        tokens: &Tokens,
        ns: &str,
        name: &str,
        query: &[(String, String)],
    ) -> Result<Response, ApiError> {
        let t = Self::target(registry, ns, name, query).await?;
        let (host, port, container, node_name) = (t.host(), t.port, &t.container, &t.node);
        let mut path = format!("/containerLogs/{ns}/{name}/{container}");
        let params: Vec<String> = query
            .iter()
            .filter(|(k, _)| LOG_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        self.get_from_agent(tokens, node_name, &host, port, &path)
            .await
    }
}

impl NodeProxy {
    /// `pods/<name>/exec`: a WebSocket from the client, another to the agent of the pod's
    /// node, and every message carried across unchanged (the channel protocol is the
    /// agent's business).
    pub async fn pod_exec(
        &self,
        registry: &Registry,
        tokens: &Tokens,
        ns: &str,
        name: &str,
        what: &str,
        req: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        use axum::extract::FromRequestParts;
        let (mut parts, _) = req.into_parts();
        let axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>> =
            axum::extract::Query::try_from_uri(&parts.uri)
                .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let offered: Vec<String> = parts
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|_| {
                ApiError::bad_request(
                    "exec and attach need a WebSocket upgrade (v5.channel.k8s.io, \
                     v4.channel.k8s.io, channel.k8s.io or base64.channel.k8s.io); SPDY is not \
                     supported",
                )
            })?;
        let protocol = EXEC_PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "none of the offered WebSocket protocols {offered:?} is supported: use {}",
                    EXEC_PROTOCOLS.join(" or ")
                ))
            })?;
        let t = Self::target(registry, ns, name, &query).await?;
        let mut params: Vec<String> = query
            .iter()
            .filter(|(k, _)| ["command", "stdin", "stdout", "stderr", "tty"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if params.is_empty() {
            params.push(String::new());
        }
        let url = format!(
            "wss://{}:{}/{what}/{ns}/{name}/{}?{}",
            t.host(),
            t.port,
            t.container,
            params.join("&")
        );
        let agent = self
            .agent_socket(
                &tokens.proxy_token(&t.node),
                &t.endpoint(),
                &url,
                Some(protocol),
            )
            .await
            .map_err(AgentRefusal::into_api_error)?;
        Ok(ws
            .protocols([*protocol])
            .on_upgrade(move |client| pipe(client, agent)))
    }
}

impl NodeProxy {
    /// `pods/<name>/portforward`, in whichever protocol the client speaks (see
    /// [`crate::portforward`]); each connection it opens goes to the pod's agent.
    pub async fn pod_port_forward(
        &self,
        registry: &Registry,
        tokens: &Tokens,
        ns: &str,
        name: &str,
        req: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        use crate::portforward as pf;
        use axum::extract::FromRequestParts;
        let (mut parts, _) = req.into_parts();
        let axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>> =
            axum::extract::Query::try_from_uri(&parts.uri)
                .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        let (_, at) = Self::pod_endpoint(registry, ns, name).await?;
        let proxy = self.clone();
        let token = tokens.proxy_token(&at.node);
        let base = format!(
            "wss://{}:{}/portForward/{}/{}",
            url_host(&at.address),
            at.port,
            encode(ns),
            encode(name)
        );
        let dial: pf::Dial = Arc::new(move |port| {
            let (proxy, token, at) = (proxy.clone(), token.clone(), at.clone());
            let url = format!("{base}?port={port}");
            Box::pin(async move {
                proxy
                    .agent_socket(&token, &at, &url, None)
                    .await
                    .map_err(|e| e.message().to_string())
            })
        });
        let upgrade = |name: &str| {
            parts
                .headers
                .get_all(http::header::UPGRADE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(name)))
        };
        if upgrade("SPDY/3.1") {
            return pf::spdy_upgrade(&mut parts, dial);
        }
        if !upgrade("websocket") {
            return Err(ApiError::bad_request(
                "port-forward needs an upgrade: Upgrade: SPDY/3.1 (X-Stream-Protocol-Version: \
                 portforward.k8s.io) or a WebSocket (SPDY/3.1+portforward.k8s.io or \
                 v4.channel.k8s.io)",
            ));
        }
        let offered: Vec<String> = parts
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("a bad WebSocket upgrade: {e}")))?;
        if offered.iter().any(|p| p == pf::SPDY_TUNNEL) {
            return Ok(ws
                .protocols([pf::SPDY_TUNNEL])
                .on_upgrade(move |socket| pf::spdy_tunnel(socket, dial)));
        }
        if !offered.is_empty() && !offered.iter().any(|p| p == pf::CHANNELS) {
            return Err(ApiError::bad_request(format!(
                "none of the offered WebSocket protocols {offered:?} is supported for \
                 port-forward: use {} or {}",
                pf::SPDY_TUNNEL,
                pf::CHANNELS
            )));
        }
        let ports = pf::ports(&query)?;
        Ok(ws
            .protocols([pf::CHANNELS])
            .on_upgrade(move |socket| pf::channel_session(socket, ports, dial)))
    }
}

/// A WebSocket to an agent, over TLS that trusts only the cluster CA.
pub type AgentSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Where a node's agent listens, and who it is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub node: String,
    pub address: String,
    pub port: u16,
}

/// Why an agent did not take a WebSocket.
#[derive(Debug)]
pub enum AgentRefusal {
    /// It answered, with this status and message.
    Answered(http::StatusCode, String),
    /// It could not be reached (or the handshake failed).
    Unreachable(String),
}

impl AgentRefusal {
    /// The agent's message, for a client's error channel.
    pub fn message(&self) -> &str {
        match self {
            AgentRefusal::Answered(_, m) | AgentRefusal::Unreachable(m) => m,
        }
    }

    fn into_api_error(self) -> ApiError {
        match self {
            AgentRefusal::Answered(status, body) if status.as_u16() == 404 => {
                ApiError::new(status, "NotFound", body)
            }
            AgentRefusal::Answered(_, body) => ApiError::bad_request(body),
            AgentRefusal::Unreachable(e) => ApiError::internal(e),
        }
    }
}

impl NodeProxy {
    /// Open a WebSocket to `url` (`wss://` on the node's agent), presenting the proxy token
    /// of the node and offering `protocol`.
    pub async fn agent_socket(
        &self,
        token: &str,
        at: &Endpoint,
        url: &str,
        protocol: Option<&str>,
    ) -> Result<AgentSocket, AgentRefusal> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let unreachable = |e: String| {
            AgentRefusal::Unreachable(format!(
                "reaching the agent of node {} at {}:{} failed: {e}",
                at.node, at.address, at.port
            ))
        };
        let mut agent_req = url
            .into_client_request()
            .map_err(|e| unreachable(e.to_string()))?;
        let h = agent_req.headers_mut();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .map_err(|_| unreachable("a bad token".into()))?,
        );
        if let Some(p) = protocol {
            h.insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                p.parse()
                    .map_err(|_| unreachable("a bad protocol".into()))?,
            );
        }
        let tcp = tokio::net::TcpStream::connect((at.address.as_str(), at.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let server_name = rustls::pki_types::ServerName::try_from(at.address.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match tokio_tungstenite::client_async(agent_req, tls).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(AgentRefusal::Answered(resp.status(), body))
            }
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

/// Carry WebSocket messages both ways until either side closes.
async fn pipe<S>(client: axum::extract::ws::WebSocket, agent: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use axum::extract::ws::Message as C;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as A;
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let out = match msg {
                C::Binary(b) => A::Binary(b),
                C::Text(t) => A::Text(t.as_str().into()),
                C::Close(_) => break,
                _ => continue,
            };
            if agent_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = agent_tx.close().await;
    };
    let down = async {
        while let Some(Ok(msg)) = agent_rx.next().await {
            let out = match msg {
                A::Binary(b) => C::Binary(b),
                A::Text(t) => C::Text(t.as_str().into()),
                A::Close(_) => break,
                _ => continue,
            };
            if client_tx.send(out).await.is_err() {
                break;
            }
        }
        // A normal closure (1000): clients take a close without a code as an error.
        let _ = client_tx
            .send(C::Close(Some(axum::extract::ws::CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    };
    // The agent ends the session (after the status on channel 3); the client may hang up.
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters stay).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
