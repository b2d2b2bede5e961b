//! The HTTP layer: one routing function, request parsing into a typed [`Action`], and
//! rendering of the result. No Kubernetes semantics live here; they are the registry's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::custom::Catalog;
use berth_core::kinds::convert;
use berth_core::resources::{self, Kind, Resource};
use serde_json::{json, Value};

use crate::auth::{self, Identity, Tokens};
use crate::authz::{review, Attributes};
use crate::discovery;
use crate::format::{self, Shape};
use crate::registry::{
    DeleteOptions, FieldValidation, ListParams, Part, PatchType, Registry, WatchEvent, WriteOptions,
};
use crate::status::ApiError;

/// Largest request body accepted, as Kubernetes' 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct AppState {
    pub registry: Registry,
    pub tokens: Tokens,
    pub bookmark_every: Duration,
    /// Where the cluster CA lives (to sign agents' serving certificates).
    pub pki: berth_tls::TlsFiles,
    /// Calls to agents (logs).
    pub proxy: crate::proxy::NodeProxy,
    /// `/metrics`.
    pub telemetry: crate::telemetry::Telemetry,
    /// Who may do what.
    pub authz: crate::authz::Authorizer,
    /// ServiceAccount tokens whose bound objects were recently seen alive.
    pub validated: crate::tokenrequest::Validated,
}

/// The one routing table: everything goes to [`handle`], which routes by path; every
/// request is counted and timed on the way.
pub fn router(state: Arc<AppState>) -> axum::Router {
    let telemetry = state.telemetry.clone();
    axum::Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            telemetry,
            crate::telemetry::track,
        ))
}

/// Every request enters here.
pub async fn handle(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match route(&app, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code.as_u16(), reason = e.reason, "request refused");
            e.into_response()
        }
    }
}

pub(crate) fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response();
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn ok(body: &Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, body, &[]))
}

async fn route(app: &Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let identity = auth::authenticate(&app.tokens, req.headers())?;
    if identity == Identity::Anonymous && !auth::is_public(&path) {
        return Err(ApiError::unauthorized());
    }
    if let Identity::User(crate::authz::User {
        bound: Some(bound), ..
    }) = &identity
    {
        let token = auth::bearer(req.headers()).unwrap_or_default();
        app.validated.check(&app.registry, token, bound).await?;
    }
    // Anyone may read the public paths; `/berth/v1/...` checks its callers itself.
    let node_scope = if auth::is_public(&path) || path.starts_with("/berth/") {
        None
    } else {
        let attrs = Attributes::from_request(req.method(), &path, req.uri().query());
        app.authz.authorize(&identity, &attrs)?
    };
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match segs.as_slice() {
        ["version"] if read_only => ok(&discovery::version()),
        ["metrics"] if read_only => Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            app.telemetry.render(),
        )
            .into_response()),
        ["healthz" | "livez"] if read_only => Ok((StatusCode::OK, "ok").into_response()),
        ["readyz"] if read_only => match app.registry.store().current_revision().await {
            Ok(_) => Ok((StatusCode::OK, "ok").into_response()),
            Err(e) => Err(ApiError::internal(format!("store not ready: {e}"))),
        },
        ["api"] if read_only => ok(&discovery::core_versions()),
        ["apis"] if read_only => ok(&discovery::groups(&app.registry.custom)),
        ["api", v] if read_only => discovery::resource_list(&app.registry.custom, "", v)
            .map_or_else(|| Err(ApiError::path_not_found(&path)), |b| ok(&b)),
        ["apis", g] if read_only => discovery::group(&app.registry.custom, g)
            .map_or_else(|| Err(ApiError::path_not_found(&path)), |b| ok(&b)),
        ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] if read_only && !rest.is_empty() => {
            match rest {
                ["nodes"] => crate::metrics::nodes(app, None).await,
                ["nodes", n] => crate::metrics::nodes(app, Some(n)).await,
                ["pods"] => crate::metrics::pods(app, None, None).await,
                ["namespaces", ns, "pods"] => crate::metrics::pods(app, Some(ns), None).await,
                ["namespaces", ns, "pods", n] => crate::metrics::pods(app, Some(ns), Some(n)).await,
                _ => Err(ApiError::path_not_found(&path)),
            }
        }
        ["apis", g, v] if read_only => discovery::resource_list(&app.registry.custom, g, v)
            .map_or_else(|| Err(ApiError::path_not_found(&path)), |b| ok(&b)),
        ["berth", "v1", "nodetoken"] if *req.method() == Method::POST => {
            node_token(app, &identity, req).await
        }
        ["berth", "v1", "nodecert"] if *req.method() == Method::POST => {
            node_cert(app, &identity, req).await
        }
        ["api", "v1", "namespaces", ns, "pods", name, "exec" | "attach"]
            if matches!(*req.method(), Method::GET | Method::POST) =>
        {
            let (ns, name, what) = (ns.to_string(), name.to_string(), segs[6].to_string());
            app.proxy
                .pod_exec(&app.registry, &app.tokens, &ns, &name, &what, req)
                .await
        }
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"]
            if matches!(*req.method(), Method::GET | Method::POST) =>
        {
            let (ns, name) = (ns.to_string(), name.to_string());
            app.proxy
                .pod_port_forward(&app.registry, &app.tokens, &ns, &name, req)
                .await
        }
        ["api", "v1", "nodes", node, "proxy", rest @ ..] if read_only => {
            let mut path = format!("/{}", rest.join("/"));
            if let Some(q) = req.uri().query() {
                path.push('?');
                path.push_str(q);
            }
            app.proxy
                .node_get(&app.registry, &app.tokens, node, &path)
                .await
        }
        ["api", "v1", "namespaces", ns, "pods", name, "log"] if read_only => {
            let Query(query): Query<Vec<(String, String)>> = Query::try_from_uri(req.uri())
                .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
            app.proxy
                .pod_log(&app.registry, &app.tokens, ns, name, &query)
                .await
        }
        ["openapi", "v2"] if read_only => Ok((
            [(header::CONTENT_TYPE, discovery::OPENAPI_V2_PROTOBUF)],
            discovery::openapi_v2(),
        )
            .into_response()),
        ["openapi", "v3"] if read_only => ok(&discovery::openapi_v3_root(&app.registry.custom)),
        ["openapi", "v3", rest @ ..] if read_only => {
            discovery::openapi_v3_group(&app.registry.custom, &rest.join("/"))
                .map_or_else(|| Err(ApiError::path_not_found(&path)), |b| ok(&b))
        }
        ["api", v, rest @ ..] => {
            let (v, rest) = (
                v.to_string(),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            resource(app, &identity, node_scope, "", &v, &rest, req).await
        }
        ["apis", g @ (review::AUTHORIZATION | review::AUTHENTICATION), "v1", rest @ ..]
            if *req.method() == Method::POST =>
        {
            // Each review at its own path: its group, and a namespace only for the local one.
            let served = review::of_group_version(g, "v1");
            let (plural, ns) = match rest {
                [plural]
                    if served
                        .iter()
                        .any(|(p, _, namespaced)| p == plural && !namespaced) =>
                {
                    (plural.to_string(), None)
                }
                ["namespaces", ns, plural]
                    if served
                        .iter()
                        .any(|(p, _, namespaced)| p == plural && *namespaced) =>
                {
                    (plural.to_string(), Some(ns.to_string()))
                }
                _ => return Err(ApiError::path_not_found(&path)),
            };
            let g = g.to_string();
            let ct = content_type(req.headers());
            let body = parse_body(&ct, &read_body(req.into_body()).await?)?;
            let answer = review::review(&app.authz, &identity, &g, &plural, ns.as_deref(), body)?;
            Ok(json_response(StatusCode::CREATED, &answer, &[]))
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            let rest = rest.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            resource(app, &identity, node_scope, &g, &v, &rest, req).await
        }
        _ if !read_only
            && segs.first().is_some_and(|s| {
                [
                    "version", "healthz", "livez", "readyz", "api", "apis", "openapi",
                ]
                .contains(s)
            }) =>
        {
            Err(ApiError::method_not_allowed(req.method().as_str(), &path))
        }
        _ => Err(ApiError::path_not_found(&path)),
    }
}

/// `POST /berth/v1/nodetoken {"nodeName": "n1"}`: trade the node-join token for the token
/// of one node, which may write only that node's objects.
async fn node_token(
    app: &Arc<AppState>,
    who: &Identity,
    req: Request,
) -> Result<Response, ApiError> {
    if !matches!(who, Identity::Admin | Identity::Bootstrap) {
        return Err(ApiError::forbidden(
            "a node token is issued for the node-join token or the admin only",
        ));
    }
    let body = parse_body("application/json", &read_body(req.into_body()).await?)?;
    let name = body.get("nodeName").and_then(Value::as_str).unwrap_or("");
    if let Some(why) = berth_core::validation::dns1123_subdomain(name) {
        return Err(ApiError::bad_request(format!(
            "nodeName {name:?} is not a valid node name: {why}"
        )));
    }
    ok(&json!({"nodeName": name, "token": app.tokens.node_token(name)}))
}

/// `POST /berth/v1/nodecert {"address": "10.0.0.5"}`: a node's serving certificate (signed by
/// the cluster CA for its name and address) and the token the API server will show it.
async fn node_cert(
    app: &Arc<AppState>,
    who: &Identity,
    req: Request,
) -> Result<Response, ApiError> {
    let Identity::Node(node) = who else {
        return Err(ApiError::forbidden(
            "a serving certificate is issued to a node, with its node token",
        ));
    };
    let body = parse_body("application/json", &read_body(req.into_body()).await?)?;
    let address = body.get("address").and_then(Value::as_str).unwrap_or("");
    let sans = node_cert_sans(node, address).map_err(ApiError::forbidden)?;
    let (cert, key) = berth_tls::sign_leaf(&app.pki, &format!("berth-node-{node}"), &sans)
        .map_err(|e| ApiError::internal(format!("signing a certificate for node {node}: {e:#}")))?;
    ok(&json!({"cert": cert, "key": key, "proxyToken": app.tokens.proxy_token(node)}))
}

/// The names a node's serving certificate may cover: its own name and the address it
/// serves on, which must be an IP address (or its name), and never the names pods reach the
/// API server by (the `kubernetes` Service's address and DNS names: pods trust this CA). Other
/// addresses are not checked against the nodes' or the server's: several nodes (an agent and
/// a virtual node, or a server and its host's agent) may serve on one host's address.
fn node_cert_sans(node: &str, address: &str) -> Result<Vec<String>, String> {
    let api_names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    if api_names.contains(&node) {
        return Err(format!(
            "node {node:?} may not have a certificate for a name of the API server's"
        ));
    }
    let ip = match address.parse::<std::net::IpAddr>() {
        Ok(ip) => ip,
        Err(_) if address == node => return Ok(vec![node.to_string()]),
        Err(_) => {
            return Err(format!(
                "node {node:?} asked for a certificate for {address:?}: a node's serving address must be an IP address or its own name"
            ))
        }
    };
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{address} is not an address a node serves on"));
    }
    if matches!(ip, std::net::IpAddr::V4(v4) if crate::registry::is_system_address(v4)) {
        return Err(format!(
            "node {node:?} may not have a certificate for {address}: an address kept for the system Services (the `kubernetes` Service's among them)"
        ));
    }
    Ok(vec![node.to_string(), ip.to_string()])
}

/// Enforce what a node may touch: its own Node and Lease, pods bound to it.
async fn check_node_scope(
    reg: &Registry,
    scope: &auth::NodeScope,
    who: &Identity,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let Identity::Node(node) = who else {
        return Ok(());
    };
    let allowed = match scope {
        auth::NodeScope::Any => true,
        // Collections (deletecollection) are never one node's.
        _ if name.is_empty() => false,
        auth::NodeScope::OwnName => name == node,
        auth::NodeScope::UsedByPodOnNode => {
            let pods = resources::of_kind(Kind::Pod);
            let on_node = ListParams {
                fields: berth_core::selector::FieldSelector::parse(&format!(
                    "spec.nodeName={node}"
                ))
                .map_err(|e| ApiError::internal(format!("a node's field selector: {e}")))?,
                omit_managed: true,
                ..ListParams::default()
            };
            reg.list(pods, ns, &on_node)
                .await?
                .items
                .iter()
                .any(|p| crate::authz::pod_uses(p, res.plural, name))
        }
        auth::NodeScope::PodOnNode => match reg.get(res, ns, name).await {
            Ok(pod) => pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.as_str()),
            // Let the registry answer NotFound as it would to anyone.
            Err(e) if e.reason == "NotFound" => true,
            Err(e) => return Err(e),
        },
    };
    if allowed {
        Ok(())
    } else if *scope == auth::NodeScope::UsedByPodOnNode {
        Err(ApiError::forbidden(format!(
            "node {node:?} may not read {} {name:?}: no pod bound to it uses it",
            res.qualified()
        )))
    } else {
        Err(ApiError::forbidden(format!(
            "node {node:?} may not modify {} {name:?}: it is not this node's",
            res.qualified()
        )))
    }
}

/// Where in the resource tree a request points.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch: bool,
}

fn parse_target(
    catalog: &Catalog,
    group: &str,
    version: &str,
    segs: &[String],
) -> Result<Target, ApiError> {
    let full = || {
        format!(
            "/{}/{}",
            if group.is_empty() {
                "api".to_string()
            } else {
                format!("apis/{group}")
            },
            version
        )
    };
    let not_found = || ApiError::path_not_found(&format!("{}/{}", full(), segs.join("/")));
    let (watch, segs) = match segs.first().map(String::as_str) {
        Some("watch") => (true, &segs[1..]),
        _ => (false, segs),
    };
    let find = |plural: &str| catalog.resolve(group, version, plural);
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let t =
        |res: &'static Resource, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
            res,
            namespace: ns.map(String::from),
            name: name.map(String::from),
            sub: sub.map(String::from),
            watch,
        };
    let target = match s.as_slice() {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let res = find(plural).expect("checked");
            match rest {
                [] => t(res, Some(ns), None, None),
                [name] => t(res, Some(ns), Some(name), None),
                [name, sub] => t(res, Some(ns), Some(name), Some(sub)),
                _ => return Err(not_found()),
            }
        }
        [plural, rest @ ..] => {
            let res = find(plural).ok_or_else(not_found)?;
            match rest {
                [] => t(res, None, None, None),
                [name] if !res.namespaced => t(res, None, Some(name), None),
                [name, sub] if !res.namespaced => t(res, None, Some(name), Some(sub)),
                _ => return Err(not_found()),
            }
        }
        _ => return Err(not_found()),
    };
    Ok(target)
}

/// What a request asks of the registry.
enum Action {
    Get,
    List,
    Watch,
    Create(Value),
    Update(Value, Part),
    Patch(PatchType, Value, Part),
    Delete(DeleteOptions),
    DeleteCollection(DeleteOptions),
    GetScale,
    UpdateScale(Value),
    PatchScale(PatchType, Value),
    Bind(Value),
    Evict(Value),
    RequestToken(Value),
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Parse a body as JSON or YAML (by content type) into a JSON value.
fn parse_body(ct: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty: send the object as JSON or YAML",
        ));
    }
    match ct {
        "application/yaml" | "application/apply-patch+yaml" => {
            serde_saphyr::from_slice::<Value>(bytes).map_err(|e| {
                ApiError::bad_request(format!("the YAML body could not be parsed: {e}"))
            })
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(bytes),
        _ => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the JSON body could not be parsed: {e}"))),
    }
}

fn patch_type(ct: &str) -> Result<PatchType, ApiError> {
    match ct {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY))
}

async fn resource(
    app: &Arc<AppState>,
    who: &Identity,
    node_scope: Option<auth::NodeScope>,
    group: &str,
    version: &str,
    segs: &[String],
    req: Request,
) -> Result<Response, ApiError> {
    let target = parse_target(&app.registry.custom, group, version, segs)?;
    // An older version served beside the stored one: the registry works in the storage
    // version, and `versions` converts at the boundary.
    let versions = Versions {
        served: target.res,
        storage: app.registry.storage_of(target.res)?,
        custom: app.registry.custom.of(target.res),
        omit_managed: req
            .headers()
            .get(OMIT_MANAGED_FIELDS)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
    };
    let res = versions.storage;
    let method = req.method().clone();
    let Query(q): Query<HashMap<String, String>> = Query::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let shape = Shape::from_accept(
        accept.as_deref(),
        q.get("includeObject").map(String::as_str),
    );
    let ct = content_type(req.headers());
    let path = req.uri().path().to_string();
    let bytes = read_body(req.into_body()).await?;
    let body = || parse_body(&ct, &bytes);
    let delete_opts = || -> Result<DeleteOptions, ApiError> {
        let mut opts: DeleteOptions = if bytes.iter().all(u8::is_ascii_whitespace) {
            DeleteOptions::default()
        } else {
            serde_json::from_value(parse_body(&ct, &bytes)?)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        if let Some(g) = q.get("gracePeriodSeconds") {
            opts.grace_period_seconds = Some(
                g.parse()
                    .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
            );
        }
        if let Some(p) = q.get("propagationPolicy") {
            opts.propagation_policy = Some(p.clone());
        }
        if q.get("dryRun").is_some_and(|d| d == "All") {
            opts.dry_run = vec!["All".into()];
        }
        Ok(opts)
    };
    let sub = target.sub.as_deref();
    let is_watch = target.watch || q.get("watch").is_some_and(|w| berth_core::query::flag(w));
    let action = match (&method, target.name.is_some(), sub) {
        (&Method::GET, false, None) if is_watch => Action::Watch,
        (&Method::GET, false, None) => Action::List,
        (&Method::POST, false, None) => Action::Create(versions.incoming(body()?)?),
        (&Method::DELETE, false, None) => Action::DeleteCollection(delete_opts()?),
        (&Method::GET, true, None) if !is_watch => Action::Get,
        (&Method::GET, true, Some("status")) if !is_watch && res.status => Action::Get,
        (&Method::PUT, true, None) => Action::Update(versions.incoming(body()?)?, Part::Main),
        (&Method::PUT, true, Some("status")) if res.status => {
            Action::Update(versions.incoming(body()?)?, Part::Status)
        }
        (&Method::PATCH, true, None) => Action::Patch(patch_type(&ct)?, body()?, Part::Main),
        (&Method::PATCH, true, Some("status")) if res.status => {
            Action::Patch(patch_type(&ct)?, body()?, Part::Status)
        }
        (&Method::DELETE, true, None) => Action::Delete(delete_opts()?),
        (&Method::GET, true, Some("scale")) if res.scale => Action::GetScale,
        (&Method::PUT, true, Some("scale")) if res.scale => Action::UpdateScale(body()?),
        (&Method::PATCH, true, Some("scale")) if res.scale => {
            Action::PatchScale(patch_type(&ct)?, body()?)
        }
        (&Method::POST, true, Some("binding")) if res.kind == Kind::Pod => Action::Bind(body()?),
        (&Method::POST, true, Some("eviction")) if res.kind == Kind::Pod => Action::Evict(body()?),
        (&Method::POST, true, Some("token")) if res.kind == Kind::ServiceAccount => {
            Action::RequestToken(body()?)
        }
        (_, true, Some(s @ ("log" | "exec" | "attach" | "portforward" | "proxy")))
            if res.kind == Kind::Pod =>
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods/{s} needs a node agent running the pod; none serves this pod yet"),
            ))
        }
        (_, _, Some(s)) if !matches!(s, "status" | "scale" | "binding" | "eviction" | "token") => {
            return Err(ApiError::path_not_found(&path))
        }
        _ => return Err(ApiError::method_not_allowed(method.as_str(), &path)),
    };
    let ns = target.namespace.as_deref();
    let name = target.name.as_deref().unwrap_or("");
    if q.get("fieldManager").is_some_and(|m| m.len() > 128) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let write = WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        field_manager: q.get("fieldManager").cloned(),
        force: q.get("force").is_some_and(|f| berth_core::query::flag(f)),
        user_agent: user_agent.clone(),
        // Escalation prevention looks at what would be stored, however it was written.
        admit: (matches!(who, Identity::User(_))
            && matches!(
                res.kind,
                Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding
            ))
        .then(|| {
            let (authz, who, kind) = (app.authz.clone(), who.clone(), res.kind);
            let ns = ns.map(String::from);
            crate::registry::Admit(Arc::new(move |obj: &Value| {
                authz.check_grant(&who, kind, ns.as_deref(), obj)
            }))
        }),
    };
    let reg = &app.registry;
    if let Some(scope) = &node_scope {
        let subject = match &action {
            Action::Create(body) => body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            _ => name,
        };
        check_node_scope(reg, scope, who, res, ns, subject).await?;
    }
    match action {
        Action::Get => ok(&versions.object(reg.get(res, ns, name).await?, shape)),
        Action::List => {
            let params = ListParams {
                omit_managed: versions.omit_managed,
                ..ListParams::from_query(res, &q)?
            };
            ok(&versions.list(reg.list(res, ns, &params).await?, shape))
        }
        Action::Watch => {
            let params = ListParams {
                omit_managed: versions.omit_managed,
                ..ListParams::from_query(res, &q)?
            };
            let rx = reg.watch(res, ns, params, app.bookmark_every).await?;
            Ok(watch_response(versions, rx, shape))
        }
        Action::Create(body) => Ok(outcome(
            versions,
            reg.create(res, ns, body, &write).await?,
            shape,
        )),
        Action::Update(body, part) => Ok(outcome(
            versions,
            reg.update(res, ns, name, body, part, &write).await?,
            shape,
        )),
        Action::Patch(kind, body, part) => {
            if kind == PatchType::Apply && write.field_manager.as_deref().unwrap_or("").is_empty() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            if kind != PatchType::Apply && write.force {
                return Err(ApiError::forbidden(
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            if kind == PatchType::Apply && versions.converts() {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "server-side apply of {} is served in {}; apply the object in that version",
                        versions.served.qualified(),
                        versions.storage.api_version()
                    ),
                ));
            }
            let out = reg
                .patch(versions.served, ns, name, kind, &body, part, &write)
                .await?;
            Ok(outcome(versions, out, shape))
        }
        Action::Delete(opts) => {
            let (obj, gone) = reg.delete(res, ns, name, &opts).await?;
            let code = if gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(json_response(code, &versions.object(obj, shape), &[]))
        }
        Action::DeleteCollection(opts) => {
            let params = ListParams::from_query(res, &q)?;
            let items = reg.delete_collection(res, ns, &params, &opts).await?;
            let listed = crate::registry::ListResult {
                items,
                resource_version: 0,
                continue_token: None,
            };
            ok(&versions.list(listed, Shape::Object))
        }
        Action::GetScale => ok(&reg.get_scale(res, ns, name).await?),
        Action::UpdateScale(body) => ok(&reg
            .update_scale(res, ns, name, Some(&body), None, &write)
            .await?),
        Action::PatchScale(kind, body) => ok(&reg
            .update_scale(res, ns, name, None, Some((kind, &body)), &write)
            .await?),
        Action::Bind(body) => Ok(json_response(
            StatusCode::CREATED,
            &reg.bind(ns, name, &body).await?,
            &[],
        )),
        Action::Evict(body) => Ok(json_response(
            StatusCode::CREATED,
            &reg.evict(ns, name, &body).await?,
            &[],
        )),
        Action::RequestToken(body) => Ok(json_response(
            StatusCode::CREATED,
            &crate::tokenrequest::create(reg, &app.tokens, who, ns.unwrap_or_default(), name, body)
                .await?,
            &[],
        )),
    }
}

/// The version a request was made in and the version its kind is stored in; the same for
/// every kind but those with older versions served beside ([`resources::ALSO_SERVED`]).
#[derive(Clone)]
struct Versions {
    served: &'static Resource,
    storage: &'static Resource,
    /// The served version's definition, for a custom kind.
    custom: Option<Arc<berth_core::custom::CustomVersion>>,
    /// The client asked for objects without `metadata.managedFields` ([`OMIT_MANAGED_FIELDS`]).
    omit_managed: bool,
}

use berth_core::fields::OMIT_MANAGED_FIELDS;

fn strip_managed(mut obj: Value) -> Value {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    obj
}

impl Versions {
    fn converts(&self) -> bool {
        self.served.version != self.storage.version
    }

    /// A request body, in the storage version.
    fn incoming(&self, body: Value) -> Result<Value, ApiError> {
        if !self.converts() {
            return Ok(body);
        }
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        convert::to_storage(self.served, self.storage, body)
            .map_err(|e| ApiError::unconvertible(self.served, &name, e))
    }

    /// A stored object as the request's version and shape show it. Tables are made from the
    /// stored object: their columns are the same in every version.
    fn object(&self, obj: Value, shape: Shape) -> Value {
        let obj = if self.omit_managed {
            strip_managed(obj)
        } else {
            obj
        };
        match shape {
            Shape::Object if self.converts() => convert::from_storage(self.served, obj),
            _ => format::object(self.storage, self.custom.as_deref(), obj, shape),
        }
    }

    fn list(&self, mut listed: crate::registry::ListResult, shape: Shape) -> Value {
        if self.omit_managed {
            listed.items = listed.items.into_iter().map(strip_managed).collect();
        }
        if !self.converts() || shape != Shape::Object {
            return format::list(self.storage, self.custom.as_deref(), listed, shape);
        }
        listed.items = listed
            .items
            .into_iter()
            .map(|o| convert::from_storage(self.served, o))
            .collect();
        format::list(self.served, self.custom.as_deref(), listed, shape)
    }
}

/// A write's answer: 201 when it created, 200 otherwise, with its warnings.
fn outcome(versions: Versions, out: crate::registry::Outcome, shape: Shape) -> Response {
    let code = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(code, &versions.object(out.object, shape), &out.warnings)
}

/// One watch event as a line of JSON, `type` first as Kubernetes writes it: a client that
/// reads the type first decodes the object straight into its own type, where one that meets
/// the object first must hold all of it in a generic form until the type comes.
fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"{\"type\":");
    let _ = serde_json::to_writer(&mut line, kind);
    line.extend_from_slice(b",\"object\":");
    let _ = serde_json::to_writer(&mut line, object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// Stream watch events as one JSON object per line.
fn watch_response(
    versions: Versions,
    rx: tokio::sync::mpsc::Receiver<WatchEvent>,
    shape: Shape,
) -> Response {
    let versions = Arc::new(versions);
    let stream = futures::stream::unfold(rx, move |mut rx| {
        let versions = versions.clone();
        async move {
            let ev = rx.recv().await?;
            let object = match (ev.kind, shape) {
                ("ERROR" | "BOOKMARK", _) => ev.object,
                (_, shape) => versions.object(ev.object, shape),
            };
            Some((Ok::<_, Infallible>(watch_line(ev.kind, &object)), rx))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_carry_the_type_before_the_object() {
        let line = watch_line(
            "MODIFIED",
            &json!({"kind": "Pod", "metadata": {"name": "a\"b"}}),
        );
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.starts_with(r#"{"type":"MODIFIED","object":{"#),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        let back: Value = serde_json::from_str(text).unwrap();
        assert_eq!(back["object"]["metadata"]["name"], "a\"b");
    }

    fn segs(p: &str) -> Vec<String> {
        p.split('/').map(String::from).collect()
    }

    #[test]
    fn a_node_certificate_covers_only_what_is_the_nodes() {
        assert_eq!(
            node_cert_sans("a", "192.168.1.11").unwrap(),
            ["a", "192.168.1.11"]
        );
        assert_eq!(
            node_cert_sans("a", "127.0.0.1").unwrap(),
            ["a", "127.0.0.1"]
        );
        assert_eq!(node_cert_sans("a", "a").unwrap(), ["a"]);
        for (node, addr) in [
            ("a", "10.96.0.1"),
            ("a", "kubernetes.default.svc"),
            ("a", "b"),
            ("a", "0.0.0.0"),
            ("kubernetes", "192.168.1.11"),
        ] {
            assert!(node_cert_sans(node, addr).is_err(), "{node} {addr}");
        }
    }

    #[test]
    fn targets_parse_like_kubernetes_paths() {
        let t = parse_target(
            &Catalog::default(),
            "apps",
            "v1",
            &segs("namespaces/default/deployments/web/scale"),
        )
        .unwrap();
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("deployments", Some("default"), Some("web"), Some("scale"))
        );
        let t = parse_target(
            &Catalog::default(),
            "",
            "v1",
            &segs("namespaces/kube-system"),
        )
        .unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = parse_target(&Catalog::default(), "", "v1", &segs("namespaces/x/status")).unwrap();
        assert_eq!(
            (t.res.plural, t.sub.as_deref()),
            ("namespaces", Some("status"))
        );
        let t = parse_target(&Catalog::default(), "", "v1", &segs("pods")).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse_target(&Catalog::default(), "", "v1", &segs("widgets")).is_err());
        assert!(parse_target(&Catalog::default(), "apps", "v1", &segs("pods")).is_err());
        assert!(parse_target(&Catalog::default(), "", "v1", &segs("pods/x")).is_err());
    }
}
