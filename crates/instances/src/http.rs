//! The ARM-shaped REST API: one routing table; each handler parses, calls the service, and
//! shapes the answer as ACI does (status codes the Azure SDK accepts, long-running operations
//! with `Azure-AsyncOperation`, ARM error bodies).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use berth_core::aci::{self, ArmError, ContainerGroup};
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::Key;
use crate::service::{OpStatus, Service};

const PROVIDER: &str = "providers/Microsoft.ContainerInstance";
/// A group's metrics, under the group (Azure Monitor's path for any resource).
const METRICS: &str = "/providers/Microsoft.Insights/metrics";
const METRICS_VERSIONS: &[&str] = &["2018-01-01", "2019-07-01", "2023-10-01", "2024-02-01"];

pub struct Api {
    pub service: Arc<Service>,
    pub token: String,
    /// Groups per page of a list answer (the rest follow `nextLink`).
    pub page_size: usize,
    /// `/metrics`.
    pub telemetry: crate::telemetry::Telemetry,
}

type St = State<Arc<Api>>;

/// An ARM error as a response.
struct Arm(ArmError);

impl From<ArmError> for Arm {
    fn from(e: ArmError) -> Self {
        Arm(e)
    }
}

impl IntoResponse for Arm {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        (code, Json(self.0.body())).into_response()
    }
}

type Result<T> = std::result::Result<T, Arm>;

pub fn router(api: Arc<Api>) -> Router {
    let groups = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups";
    let sub_level = "/subscriptions/{sub}/providers/Microsoft.ContainerInstance";
    Router::new()
        .route(&format!("{sub_level}/containerGroups"), get(list_subscription))
        .route(&format!("{sub_level}/meteredUsage"), get(usage_subscription))
        .route(&format!("{sub_level}/locations/{{loc}}/{{what}}"), get(location))
        .route(
            &format!("{sub_level}/locations/{{loc}}/operations/{{id}}"),
            get(operation),
        )
        .route(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/meteredUsage",
            get(usage_group),
        )
        .route(groups, get(list_group))
        .route(
            &format!("{groups}/{{name}}"),
            put(put_group).get(get_group).delete(delete_group).patch(patch_group),
        )
        .route(&format!("{groups}/{{name}}/{{action}}"), post(action).get(usage_one))
        .route(&format!("{groups}/{{name}}{METRICS}"), get(metrics))
        .route(
            &format!("{groups}/{{name}}/containers/{{c}}/{{verb}}"),
            get(logs).post(connect),
        )
        .route(&format!("/{PROVIDER}/operations"), get(operations))
        // (the SDK spells this path's `resourcegroups` in lower case; ARM takes either)
        .route(
            "/subscriptions/{sub}/{rgs}/{rg}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}/providers/Microsoft.ContainerInstance/serviceAssociationLinks/{link}",
            axum::routing::any(no_subnets),
        )
        .route("/berth/instances/ws/{token}", get(websocket))
        .route("/metrics", get(prometheus_text))
        .fallback(|| async {
            Arm(ArmError::new(
                404,
                "NotFound",
                "No such resource or operation in the Microsoft.ContainerInstance provider.",
            ))
        })
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api)
}

/// `GET /metrics` (with the service's token; no api-version): Prometheus' text format.
async fn prometheus_text(State(api): St) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.telemetry.render(&api.service),
    )
        .into_response()
}

/// Bearer token and api-version, before any handler. The WebSocket path is authenticated
/// by its one-time password instead.
async fn guard(State(api): St, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/berth/instances/ws/") {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(berth_core::bearer);
    let ok = token.is_some_and(|t| {
        t.len() == api.token.len()
            && t.bytes()
                .zip(api.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        let msg = if token.is_none() {
            "The request has no 'Authorization: Bearer' header; send the instances token."
        } else {
            "The bearer token is not valid for this service; use the token `berth up` printed."
        };
        let mut r = Arm(ArmError::new(401, "AuthenticationFailed", msg)).into_response();
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    if path == "/metrics" {
        return next.run(req).await;
    }
    let version = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "api-version")
            .map(|(_, v)| v.to_string())
    });
    // A group's metrics are Azure Monitor's resource, with its own versions.
    let (versions, kind) = if path.ends_with(METRICS) {
        (METRICS_VERSIONS, "Microsoft.Insights/metrics")
    } else {
        (aci::API_VERSIONS, aci::TYPE)
    };
    match version {
        None => Arm(ArmError::bad(
            "MissingApiVersionParameter",
            "api-version",
            format!("The api-version query parameter (?api-version=) is required for all requests; supported: {}.", versions.join(", ")),
        ))
        .into_response(),
        Some(v) if !versions.contains(&v.as_str()) => Arm(ArmError::bad(
            "NoRegisteredProviderFound",
            "api-version",
            format!("The api-version '{v}' is not supported for resource type '{kind}'; supported: {}.", versions.join(", ")),
        ))
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

fn key(sub: String, rg: String, name: String) -> Key {
    Key { sub, rg, name }
}

/// `https://<host>` as the client reached us, for URLs we hand back.
fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}")
}

fn version(q: &Query<Vec<(String, String)>>) -> String {
    q.iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| aci::API_VERSIONS[0].into())
}

fn param<'a>(q: &'a Query<Vec<(String, String)>>, name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn operation_headers(
    headers: &HeaderMap,
    sub: &str,
    loc: &str,
    op: &str,
    v: &str,
) -> [(String, String); 2] {
    let url = format!(
        "{}/subscriptions/{sub}/{PROVIDER}/locations/{loc}/operations/{op}?api-version={v}",
        base(headers)
    );
    [
        ("azure-asyncoperation".into(), url),
        ("retry-after".into(), "0".into()),
    ]
}

fn with_headers(mut r: Response, hs: [(String, String); 2]) -> Response {
    for (k, v) in hs {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// Decode a body, naming the field that does not fit.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Arm(ArmError::bad(
            "InvalidRequestContent",
            path.clone(),
            format!("The request content is invalid at '{path}': {}", e.inner()),
        ))
    })
}

async fn put_group(
    State(api): St,
    Path((sub, rg, name)): Path<(String, String, String)>,
    q: Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    let group: ContainerGroup = decode(&body)?;
    let k = key(sub.clone(), rg, name);
    let loc = group.location.clone();
    let (view, created, op) = api.service.put(&k, group).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let r = (code, Json(view)).into_response();
    Ok(with_headers(
        r,
        operation_headers(&headers, &sub, &loc, &op, &version(&q)),
    ))
}

async fn get_group(
    State(api): St,
    Path((sub, rg, name)): Path<(String, String, String)>,
) -> Result<Json<ContainerGroup>> {
    Ok(Json(api.service.get(&key(sub, rg, name))?))
}

/// Run a stateful operation to its end even if the caller hangs up: one cut short between
/// its store write and its teardown would leave containers nothing knows of.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = std::result::Result<T, ArmError>> + Send + 'static,
) -> std::result::Result<T, ArmError> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(ArmError::new(500, "InternalServerError", e.to_string())))
}

async fn delete_group(
    State(api): St,
    Path((sub, rg, name)): Path<(String, String, String)>,
) -> Result<Response> {
    let service = api.service.clone();
    let k = key(sub, rg, name);
    let deleted = to_the_end(async move { service.delete(&k).await }).await?;
    Ok(match deleted {
        Some(view) => (StatusCode::OK, Json(view)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Deserialize)]
struct TagsPatch {
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

async fn patch_group(
    State(api): St,
    Path((sub, rg, name)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<ContainerGroup>> {
    let patch: TagsPatch = decode(&body)?;
    Ok(Json(api.service.set_tags(&key(sub, rg, name), patch.tags)?))
}

fn page(
    api: &Api,
    headers: &HeaderMap,
    q: &Query<Vec<(String, String)>>,
    path: &str,
    all: Vec<ContainerGroup>,
) -> Json<Value> {
    let skip: usize = param(q, "$skipToken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = (skip + api.page_size).min(all.len());
    let items: Vec<_> = all[skip.min(end)..end].to_vec();
    let mut out = json!({ "value": items });
    if end < all.len() {
        out["nextLink"] = json!(format!(
            "{}{path}?api-version={}&$skipToken={end}",
            base(headers),
            version(q)
        ));
    }
    Json(out)
}

async fn list_subscription(
    State(api): St,
    Path(sub): Path<String>,
    q: Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Json<Value> {
    let all = api.service.list(&sub, None);
    page(&api, &headers, &q, uri.path(), all)
}

async fn list_group(
    State(api): St,
    Path((sub, rg)): Path<(String, String)>,
    q: Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Json<Value> {
    let all = api.service.list(&sub, Some(&rg));
    page(&api, &headers, &q, uri.path(), all)
}

async fn action(
    State(api): St,
    Path((sub, rg, name, action)): Path<(String, String, String, String)>,
    q: Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response> {
    let k = key(sub.clone(), rg, name);
    match action.as_str() {
        "restart" => {
            let (service, k) = (api.service.clone(), k.clone());
            to_the_end(async move { service.restart(&k).await }).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "stop" => {
            let (service, k) = (api.service.clone(), k.clone());
            to_the_end(async move { service.stop(&k).await }).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "start" => {
            let loc = api.service.get(&k)?.location;
            let op = api.service.start(&k).await?;
            let r = StatusCode::ACCEPTED.into_response();
            Ok(with_headers(
                r,
                operation_headers(&headers, &sub, &loc, &op, &version(&q)),
            ))
        }
        other => Err(Arm(ArmError::new(
            404,
            "NotFound",
            format!("'{other}' is not an action on container groups; use restart, stop or start."),
        ))),
    }
}

async fn operation(
    State(api): St,
    Path((sub, _loc, id)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let (status, started) = api
        .service
        .wait_operation(&id, Duration::from_secs(2))
        .await
        .ok_or_else(|| {
            ArmError::new(
                404,
                "OperationNotFound",
                format!("No operation '{id}' is known here."),
            )
        })?;
    let mut out = json!({
        "id": format!("/subscriptions/{sub}/{PROVIDER}/operations/{id}"),
        "name": id,
        "startTime": started.to_string(),
    });
    match status {
        OpStatus::InProgress => out["status"] = json!("InProgress"),
        OpStatus::Succeeded => {
            out["status"] = json!("Succeeded");
            out["endTime"] = json!(Timestamp::now().to_string());
        }
        OpStatus::Failed(e) => {
            out["status"] = json!("Failed");
            out["endTime"] = json!(Timestamp::now().to_string());
            out["error"] = e.body()["error"].clone();
        }
    }
    Ok(Json(out))
}

/// `GET /providers/Microsoft.ContainerInstance/operations`: what the provider offers, as
/// ARM lists a provider's operations.
async fn operations() -> Json<Value> {
    let op = |name: &str, resource: &str, operation: &str, description: &str| {
        json!({
            "name": format!("Microsoft.ContainerInstance/{name}"),
            "display": {"provider": "Microsoft Container Instance", "resource": resource,
                        "operation": operation, "description": description},
            "origin": "User",
        })
    };
    Json(json!({"value": [
        op("containerGroups/read", "Container Group", "Get Container Group", "Get all container groups."),
        op("containerGroups/write", "Container Group", "Create or Update Container Group", "Create or update a container group."),
        op("containerGroups/delete", "Container Group", "Delete Container Group", "Delete a container group."),
        op("containerGroups/restart/action", "Container Group", "Restart Container Group", "Restart every container of a group."),
        op("containerGroups/stop/action", "Container Group", "Stop Container Group", "Stop every container of a group."),
        op("containerGroups/start/action", "Container Group", "Start Container Group", "Start a stopped container group."),
        op("containerGroups/containers/logs/read", "Container", "Get Container Logs", "Get the logs of a container."),
        op("containerGroups/containers/exec/action", "Container", "Exec Into Container", "Run a command in a container."),
        op("containerGroups/containers/attach/action", "Container", "Attach To Container", "Follow a container's output."),
        op("containerGroups/outboundNetworkDependenciesEndpoints/read", "Container Group", "List Outbound Network Dependencies", "List what a group must reach outside."),
        op("locations/usages/read", "Usage", "Get Usage", "Get the quota and use of a location."),
        op("locations/capabilities/read", "Capabilities", "Get Capabilities", "Get what a location offers."),
        op("locations/cachedImages/read", "Cached Images", "Get Cached Images", "Get the images the hosts hold."),
        op("locations/operations/read", "Operation", "Get Operation", "Get the state of a long-running operation."),
    ]}))
}

/// Subnet service association links: there are no virtual networks to delegate here.
async fn no_subnets() -> Arm {
    Arm(ArmError::bad(
        "VirtualNetworkNotSupported",
        "subnet",
        "This service has no virtual networks or subnets to link; a host's groups join a Berth cluster's pod network with `berth instances --pod-network` instead.".to_string(),
    ))
}

async fn location(
    State(api): St,
    Path((sub, loc, what)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    match what.as_str() {
        "usages" => {
            let (groups, cpu) = api.service.count(&sub);
            let id =
                |n: &str| format!("/subscriptions/{sub}/{PROVIDER}/locations/{loc}/usages/{n}");
            Ok(Json(json!({"value": [
                {"id": id("ContainerGroups"), "unit": "Count", "currentValue": groups, "limit": 1000,
                 "name": {"value": "ContainerGroups", "localizedValue": "Container Groups"}},
                {"id": id("StandardCores"), "unit": "Count", "currentValue": cpu.ceil() as i64, "limit": 1000,
                 "name": {"value": "StandardCores", "localizedValue": "Standard Cores"}},
            ]})))
        }
        "capabilities" => Ok(Json(json!({"value": [{
            "resourceType": "containerGroups", "osType": "Linux", "location": loc,
            "ipAddressType": "Public", "gpu": "None",
            "capabilities": {"maxMemoryInGB": aci::MAX_MEMORY_GB, "maxCpu": aci::MAX_CPU, "maxGpuCount": 0},
        }]}))),
        // The images the hosts hold: a group of only these starts without a pull.
        "cachedImages" => {
            let images = api.service.runtime().images().await.unwrap_or_default();
            let value: Vec<Value> = images
                .into_iter()
                .map(|image| json!({"osType": "Linux", "image": image}))
                .collect();
            Ok(Json(json!({ "value": value })))
        }
        other => Err(Arm(ArmError::new(
            404,
            "NotFound",
            format!(
                "'{other}' is not served for locations; use usages, capabilities or cachedImages."
            ),
        ))),
    }
}

async fn logs(
    State(api): St,
    Path((sub, rg, name, c, verb)): Path<(String, String, String, String, String)>,
    q: Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    if verb != "logs" {
        return Err(Arm(ArmError::new(
            405,
            "MethodNotAllowed",
            format!("GET is not served for '{verb}'; exec and attach are POST."),
        )));
    }
    let tail = match param(&q, "tail") {
        None => None,
        Some(t) => Some(t.parse::<u64>().map_err(|_| {
            ArmError::bad(
                "InvalidParameter",
                "tail",
                format!("tail must be a whole number of lines, not '{t}'."),
            )
        })?),
    };
    let timestamps = param(&q, "timestamps") == Some("true");
    let previous = param(&q, "previous") == Some("true");
    let content = api
        .service
        .logs(&key(sub, rg, name), &c, tail, timestamps, previous)
        .await?;
    Ok(Json(json!({ "content": content })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ExecRequest {
    command: Option<String>,
    terminal_size: Option<TerminalSize>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TerminalSize {
    rows: u16,
    cols: u16,
}

async fn connect(
    State(api): St,
    Path((sub, rg, name, c, verb)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let k = key(sub, rg, name);
    let (token, password) = match verb.as_str() {
        "exec" => {
            let req: ExecRequest = if body.is_empty() {
                ExecRequest::default()
            } else {
                decode(&body)?
            };
            let command = req.command.unwrap_or_else(|| "/bin/sh".into());
            // Words as a shell splits them (quotes keep spaces in an argument), which for
            // a command without quotes is ACI's split at spaces.
            let Some(argv) = shlex::split(&command) else {
                return Err(Arm(ArmError::bad(
                    "InvalidParameter",
                    "command",
                    format!("The exec command {command:?} has an unclosed quote or a trailing backslash."),
                )));
            };
            if argv.is_empty() {
                return Err(Arm(ArmError::bad(
                    "InvalidParameter",
                    "command",
                    "The exec command is empty; give a program, for example '/bin/sh'.",
                )));
            }
            let size = req
                .terminal_size
                .unwrap_or(TerminalSize { rows: 24, cols: 80 });
            api.service
                .session(&k, &c, Some(argv), size.rows, size.cols)
                .await?
        }
        "attach" => api.service.session(&k, &c, None, 0, 0).await?,
        other => {
            return Err(Arm(ArmError::new(
                404,
                "NotFound",
                format!("'{other}' is not served for containers; use logs, exec or attach."),
            )))
        }
    };
    let uri = base(&headers).replacen("https://", "wss://", 1);
    Ok(Json(json!({
        "webSocketUri": format!("{uri}/berth/instances/ws/{token}"),
        "password": password,
    })))
}

/// The exec/attach socket: the client's first message is the password; then stdin goes in
/// and the container's output comes out, as text where it is text.
async fn websocket(
    State(api): St,
    Path(token): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    let session = api.service.take_session(&token).ok_or_else(|| {
        ArmError::new(
            404,
            "SessionNotFound",
            "This exec or attach session is unknown or used; ask for a new one.",
        )
    })?;
    let svc = api.service.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(e) = relay(svc, session, socket).await {
            tracing::debug!(error = %e, "exec session ended with an error");
        }
    }))
}

fn frame(bytes: &[u8]) -> Message {
    match std::str::from_utf8(bytes) {
        Ok(s) => Message::Text(s.to_string().into()),
        Err(_) => Message::Binary(bytes.to_vec().into()),
    }
}

async fn relay(
    svc: Arc<Service>,
    session: crate::service::Session,
    socket: WebSocket,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (mut tx, mut rx) = socket.split();
    let first = rx.next().await.transpose()?;
    let given = match first {
        Some(Message::Text(t)) => t.to_string(),
        Some(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    };
    if given.trim() != session.password {
        tx.send(Message::Text(
            "the password does not match this session".into(),
        ))
        .await?;
        tx.send(Message::Close(None)).await?;
        return Ok(());
    }
    let Some(command) = session.command.clone() else {
        let mut out = svc.follow(&session.container_id).await?;
        while let Some(chunk) = out.next().await {
            tx.send(frame(&chunk?)).await?;
        }
        tx.send(Message::Close(None)).await?;
        return Ok(());
    };
    let exec = svc
        .runtime()
        .exec(&session.container_id, &command, true, true)
        .await?;
    if session.rows > 0 && session.cols > 0 {
        (exec.resize)(session.cols, session.rows).await;
    }
    let mut input = exec.input;
    let pump_in = async move {
        use tokio::io::AsyncWriteExt as _;
        while let Some(Ok(msg)) = rx.next().await {
            let bytes = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Some(w) = input.as_mut() {
                if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
        }
    };
    let mut output = exec.output;
    let pump_out = async move {
        while let Some(Ok((_, bytes))) = output.next().await {
            if tx.send(frame(&bytes)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = pump_out => {}
        _ = pump_in => {}
    }
    Ok(())
}

fn window(q: &Query<Vec<(String, String)>>) -> Result<(Timestamp, Timestamp)> {
    let parse = |name: &str, default: Timestamp| -> Result<Timestamp> {
        match param(q, name) {
            None => Ok(default),
            Some(s) => s.parse().map_err(|_| {
                Arm(ArmError::bad(
                    "InvalidParameter",
                    name,
                    format!("'{s}' is not an RFC 3339 time (for example 2026-11-23T00:00:00Z)."),
                ))
            }),
        }
    };
    Ok((
        parse("from", Timestamp::UNIX_EPOCH)?,
        parse("to", Timestamp::now())?,
    ))
}

fn usage_answer(
    api: &Api,
    list: Vec<crate::db::Usage>,
    from: Timestamp,
    to: Timestamp,
) -> Json<Value> {
    let p = api.service.prices();
    let cost = |u: &crate::db::Usage| u.vcpu_seconds * p.vcpu_second + u.gb_seconds * p.gb_second;
    let total_cost: f64 = list.iter().map(cost).sum();
    let value: Vec<Value> = list
        .iter()
        .map(|u| {
            json!({
                "resourceGroup": u.rg, "containerGroup": u.name, "tags": u.tags,
                "vcpuSeconds": u.vcpu_seconds, "memoryGbSeconds": u.gb_seconds,
                "cost": cost(u), "currency": p.currency,
            })
        })
        .collect();
    Json(json!({
        "from": from.to_string(), "to": to.to_string(),
        "prices": p, "value": value,
        "total": {
            "vcpuSeconds": list.iter().map(|u| u.vcpu_seconds).sum::<f64>(),
            "memoryGbSeconds": list.iter().map(|u| u.gb_seconds).sum::<f64>(),
            "cost": total_cost, "currency": p.currency,
        },
    }))
}

async fn usage_subscription(
    State(api): St,
    Path(sub): Path<String>,
    q: Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let (from, to) = window(&q)?;
    let list = api.service.usage(
        &sub,
        param(&q, "resourceGroup"),
        param(&q, "containerGroup"),
        from,
        to,
    )?;
    Ok(usage_answer(&api, list, from, to))
}

async fn usage_group(
    State(api): St,
    Path((sub, rg)): Path<(String, String)>,
    q: Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let (from, to) = window(&q)?;
    let list = api
        .service
        .usage(&sub, Some(&rg), param(&q, "containerGroup"), from, to)?;
    Ok(usage_answer(&api, list, from, to))
}

/// `GET <group>/providers/Microsoft.Insights/metrics?metricnames=CpuUsage,MemoryUsage`: the
/// group's use now, as Azure Monitor answers for a container group (one data point, CPU in
/// millicores, memory in bytes; per container with `$filter=containerName eq '*'`, else the
/// group's sum).
async fn metrics(
    State(api): St,
    Path((sub, rg, name)): Path<(String, String, String)>,
    q: Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    let names = param(&q, "metricnames").unwrap_or("CpuUsage,MemoryUsage");
    let mut wanted = Vec::new();
    for m in names.split(',').map(str::trim) {
        match m {
            "CpuUsage" => wanted.push((m, "Count", "CPU Usage")),
            "MemoryUsage" => wanted.push((m, "Bytes", "Memory Usage")),
            other => {
                return Err(Arm(ArmError::bad(
                    "BadRequest",
                    "metricnames",
                    format!("Metric '{other}' is not published for container groups; use CpuUsage and MemoryUsage."),
                )))
            }
        }
    }
    let split =
        param(&q, "$filter").is_some_and(|f| f.to_ascii_lowercase().contains("containername"));
    let k = key(sub, rg, name);
    let list = api.service.metrics(&k).await?;
    let now = Timestamp::now().to_string();
    let id = format!(
        "/subscriptions/{}/resourceGroups/{}/{PROVIDER}/containerGroups/{}",
        k.sub, k.rg, k.name
    );
    let value: Vec<Value> = wanted
        .iter()
        .map(|(metric, unit, shown)| {
            let read = |m: &crate::service::ContainerMetrics| match *metric {
                "CpuUsage" => m.cpu_millicores,
                _ => m.memory_bytes as f64,
            };
            let point = |v: f64| json!([{"timeStamp": now, "average": v}]);
            let series: Vec<Value> = if split {
                list.iter()
                    .map(|m| json!({
                        "metadatavalues": [{"name": {"value": "containername", "localizedValue": "containername"}, "value": m.container}],
                        "data": point(read(m)),
                    }))
                    .collect()
            } else {
                vec![json!({"metadatavalues": [], "data": point(list.iter().map(read).sum())})]
            };
            json!({
                "id": format!("{id}{METRICS}/{metric}"),
                "type": "Microsoft.Insights/metrics",
                "name": {"value": metric, "localizedValue": shown},
                "unit": unit,
                "timeseries": series,
            })
        })
        .collect();
    Ok(Json(json!({
        "cost": 0,
        "interval": "PT1M",
        "namespace": "Microsoft.ContainerInstance/containerGroups",
        "value": value,
    })))
}

async fn usage_one(
    State(api): St,
    Path((sub, rg, name, what)): Path<(String, String, String, String)>,
    q: Query<Vec<(String, String)>>,
) -> Result<Json<Value>> {
    if what == "outboundNetworkDependenciesEndpoints" {
        // A group here needs nothing outside its host to run (no registry, no storage
        // account): the list is empty, for a group that exists.
        api.service.get(&key(sub, rg, name))?;
        return Ok(Json(json!([])));
    }
    if what != "meteredUsage" {
        return Err(Arm(ArmError::new(
            405,
            "MethodNotAllowed",
            format!("GET is not served for '{what}'; restart, stop and start are POST, meteredUsage and outboundNetworkDependenciesEndpoints are GET."),
        )));
    }
    let (from, to) = window(&q)?;
    let list = api.service.usage(&sub, Some(&rg), Some(&name), from, to)?;
    Ok(usage_answer(&api, list, from, to))
}
