//! The agent's own HTTPS endpoint, which the API server calls for what only the node has:
//! container logs. Its certificate is issued by the cluster CA (so the API server can check
//! it is talking to this node), and it accepts only the proxy token the API server derives
//! for this node (so nobody else can read the node's logs).
//!
//! `GET /containerLogs/{namespace}/{pod}/{container}?follow&tailLines&sinceSeconds&sinceTime&timestamps&previous`

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;

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
    Certificate(#[source] rustls::Error),
    #[error("the serving certificate from the API server holds no {what}")]
    Pem { what: &'static str },
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
}

fn tls_config(s: &Serving) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut s.cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(ServeError::Pem {
            what: "certificate",
        });
    }
    let key = rustls_pemfile::private_key(&mut s.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(ServeError::Pem {
            what: "private key",
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::Certificate)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServeError::Certificate)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Start serving on `addr` (port 0: any); returns the port.
pub fn serve(
    addr: std::net::SocketAddr,
    serving: &Serving,
    runtime: Arc<dyn Runtime>,
    pods: Store<Pod>,
) -> Result<u16, ServeError> {
    let config = tls_config(serving)?;
    let listen = |source| ServeError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let port = listener.local_addr().map_err(listen)?.port();
    let state = Arc::new(AgentState {
        runtime,
        pods,
        token: serving.proxy_token.clone(),
    });
    let app = axum::Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(state);
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    );
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the agent's HTTPS endpoint stopped");
        }
    });
    Ok(port)
}

fn refuse(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

async fn container_logs(
    State(state): State<Arc<AgentState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(state.token.as_str()) {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let Some(uid) = state
        .pods
        .state()
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && p.metadata.name.as_deref() == Some(pod.as_str())
        })
        .and_then(|p| p.metadata.uid.clone())
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        );
    };
    let observed = match state.runtime.list().await {
        Ok(o) => o,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    let mut attempts: Vec<_> = observed
        .containers
        .iter()
        .filter(|c| c.pod_uid == uid && c.name == container)
        .collect();
    attempts.sort_by_key(|c| std::cmp::Reverse(c.attempt));
    let previous = q.get("previous").is_some_and(|v| v == "true");
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
        follow: q.get("follow").is_some_and(|v| v == "true") && !previous,
        tail: q.get("tailLines").and_then(|n| n.parse().ok()),
        since,
        timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
    };
    match state.runtime.logs(&target.id, &opts).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
            ([("content-type", "text/plain")], body).into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, format!("{e:#}")),
    }
}
