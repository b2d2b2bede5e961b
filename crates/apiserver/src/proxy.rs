//! What the API server asks of agents on a client's behalf: container logs
//! (`GET pods/<name>/log`), streamed from the agent of the pod's node.
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
pub struct NodeProxy {
    client: Client<Https, Body>,
}

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
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()).flatten() {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        NodeProxy {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// `GET pods/<name>/log`: find the container and the node, and stream from its agent.
    pub async fn pod_log(
        &self,
        registry: &Registry,
        tokens: &Tokens,
        ns: &str,
        name: &str,
        query: &[(String, String)],
    ) -> Result<Response, ApiError> {
        let pods = resources::of_kind(Kind::Pod);
        let pod = registry.get(pods, Some(ns), name).await?;
        let containers: Vec<&str> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect();
        let inits: Vec<&str> = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .collect();
        let asked = query
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.as_str());
        let container = match (asked, containers.as_slice()) {
            (Some(c), _) if containers.contains(&c) || inits.contains(&c) => c.to_string(),
            (Some(c), _) => {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
            (None, [only]) => only.to_string(),
            (None, _) => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )))
            }
        };
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            })?;
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
            .filter(|p| *p > 0);
        let (Some(address), Some(port)) = (address, port) else {
            return Err(ApiError::bad_request(format!(
                "node {node_name} has no agent endpoint to read logs from (no InternalIP \
                 address or kubelet port in its status)"
            )));
        };
        let host = match address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => address.to_string(),
        };
        let mut url = format!("https://{host}:{port}/containerLogs/{ns}/{name}/{container}");
        let params: Vec<String> = query
            .iter()
            .filter(|(k, _)| LOG_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
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
        Ok((
            [(http::header::CONTENT_TYPE, "text/plain")],
            Body::new(resp.into_body()),
        )
            .into_response())
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
