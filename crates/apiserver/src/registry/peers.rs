//! The API servers sharing a store, and the `default/kubernetes` endpoints made of them.
//!
//! Every server keeps a Lease in `kube-system` (named and labelled as Kubernetes' servers
//! name their identity Leases) that carries the address pods reach it at, and renews it every
//! few seconds. On each renewal it also writes the `default/kubernetes` Endpoints and
//! EndpointSlices from the Leases still current, if they differ: a server killed outright
//! drops out once its Lease runs out; one that stops in order takes its Lease away at once.
//! Writes carry the resourceVersion they read, so servers racing each other converge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_core::resources::{self, Kind};
use serde_json::{json, Value};

use super::{DeleteOptions, ListParams, Part, Registry, WriteOptions};
use crate::status::ApiError;

/// The label on every API server's Lease, as Kubernetes sets it.
pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
/// Where a server's Lease says which address and port it serves on.
pub const ADDRESS_ANNOTATION: &str = "berth.dev/address";
const NAMESPACE: &str = "kube-system";
/// The name of the Service, its Endpoints and its first slice.
const SERVICE: &str = "kubernetes";

/// One API server as the others see it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Stable across the server's restarts (host and data dir), so a restarted server takes
    /// up its own Lease again.
    pub identity: String,
    /// Where pods and other servers reach it.
    pub address: SocketAddr,
    /// How long its Lease holds unrenewed; it is renewed every third of that.
    pub lease: Duration,
}

impl Peer {
    /// `apiserver-<16 hex digits of the identity's hash>`: Kubernetes names its servers'
    /// Leases `apiserver-<hash>` too.
    pub fn lease_name(&self) -> String {
        // FNV-1a: stable across builds and processes, unlike the std hasher's seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.identity.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("apiserver-{h:016x}")
    }
}

/// Renew `me`'s Lease and keep the `kubernetes` endpoints current until the task is aborted.
pub fn start(reg: Registry, me: Peer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((me.lease / 3).max(Duration::from_millis(200)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = Seen::default();
        loop {
            tick.tick().await;
            if let Err(e) = beat(&reg, &me, &mut seen).await {
                tracing::warn!(error = %e.message, "renewing this API server's Lease");
            }
        }
    })
}

/// Take `me` out: its Lease goes, and the endpoints with it.
pub async fn leave(reg: &Registry, me: &Peer) -> Result<(), ApiError> {
    let lease = resources::of_kind(Kind::Lease);
    match reg
        .delete(
            lease,
            Some(NAMESPACE),
            &me.lease_name(),
            &DeleteOptions::default(),
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.reason == "NotFound" => {}
        Err(e) => return Err(e),
    }
    reconcile(reg, &mut Seen::default()).await
}

/// Renew `me`'s Lease, then write the endpoints.
pub(crate) async fn beat(reg: &Registry, me: &Peer, seen: &mut Seen) -> Result<(), ApiError> {
    renew(reg, me).await?;
    reconcile(reg, seen).await
}

async fn renew(reg: &Registry, me: &Peer) -> Result<(), ApiError> {
    let res = resources::of_kind(Kind::Lease);
    let name = me.lease_name();
    let now = berth_core::micro_time(jiff::Timestamp::now());
    let seconds = me.lease.as_secs().max(1);
    match reg.get(res, Some(NAMESPACE), &name).await {
        Ok(mut current) => {
            current["metadata"]["annotations"][ADDRESS_ANNOTATION] = json!(me.address.to_string());
            current["spec"]["holderIdentity"] = json!(me.identity);
            current["spec"]["leaseDurationSeconds"] = json!(seconds);
            current["spec"]["renewTime"] = json!(now);
            reg.update(
                res,
                Some(NAMESPACE),
                &name,
                current,
                Part::Main,
                &WriteOptions::default(),
            )
            .await?;
        }
        Err(e) if e.reason == "NotFound" => {
            let body = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": NAMESPACE,
                             "labels": {IDENTITY_LABEL: "kube-apiserver"},
                             "annotations": {ADDRESS_ANNOTATION: me.address.to_string()}},
                "spec": {"holderIdentity": me.identity, "leaseDurationSeconds": seconds,
                         "acquireTime": now, "renewTime": now}
            });
            reg.create(res, Some(NAMESPACE), body, &WriteOptions::default())
                .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// When this server last saw each peer Lease's `renewTime` change, on its own clock: a
/// peer is live while its Lease keeps changing, however far its clock is from this one's.
/// (First sight counts as a change only if the Lease is current by this server's clock, so a
/// long-dead server's Lease is not taken for a live one at start.)
#[derive(Debug, Default)]
pub(crate) struct Seen(std::collections::HashMap<String, (String, Option<std::time::Instant>)>);

/// The addresses of the servers whose Lease is current, by port.
fn live(
    leases: &[Value],
    now: jiff::Timestamp,
    clock: std::time::Instant,
    seen: &mut Seen,
) -> BTreeMap<u16, BTreeSet<IpAddr>> {
    let mut by_port: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut present = BTreeSet::new();
    for l in leases {
        if l.pointer(&format!(
            "/metadata/labels/{}",
            IDENTITY_LABEL.replace('/', "~1")
        ))
        .is_none()
        {
            continue;
        }
        let name = super::name_of(l).to_string();
        let renew_time = l
            .pointer("/spec/renewTime")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let seconds = l
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(0);
        let current_by_wall = renew_time.parse::<jiff::Timestamp>().is_ok_and(|t| {
            t.checked_add(jiff::SignedDuration::from_secs(seconds))
                .is_ok_and(|end| end > now)
        });
        let changed = match seen.0.get(&name) {
            Some((before, at)) if *before == renew_time => *at,
            Some(_) => Some(clock),
            None => current_by_wall.then_some(clock),
        };
        seen.0.insert(name.clone(), (renew_time, changed));
        present.insert(name);
        let current = changed.is_some_and(|at| {
            clock.saturating_duration_since(at) < Duration::from_secs(seconds as u64)
        });
        let address = l
            .pointer(&format!(
                "/metadata/annotations/{}",
                ADDRESS_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let (true, Some(a)) = (current, address) {
            by_port.entry(a.port()).or_default().insert(a.ip());
        }
    }
    seen.0.retain(|name, _| present.contains(name));
    by_port
}

/// The slices for `by_port`: one per port (a slice has one set of ports), the first named
/// `kubernetes`, the others `kubernetes-<port>`.
fn slices(by_port: &BTreeMap<u16, BTreeSet<IpAddr>>) -> Vec<(String, Value)> {
    by_port
        .iter()
        .enumerate()
        .map(|(i, (port, ips))| {
            let name = if i == 0 {
                SERVICE.to_string()
            } else {
                format!("{SERVICE}-{port}")
            };
            let endpoints: Vec<Value> = ips
                .iter()
                .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
                .collect();
            let body = json!({
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
            });
            (name, body)
        })
        .collect()
}

fn subsets(by_port: &BTreeMap<u16, BTreeSet<IpAddr>>) -> Value {
    by_port
        .iter()
        .map(|(port, ips)| {
            let addresses: Vec<Value> =
                ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            json!({"addresses": addresses,
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect()
}

/// Write the `kubernetes` Service's target port, Endpoints and slices from the live Leases,
/// where they differ.
pub(crate) async fn reconcile(reg: &Registry, seen: &mut Seen) -> Result<(), ApiError> {
    let leases = reg
        .list(
            resources::of_kind(Kind::Lease),
            Some(NAMESPACE),
            &ListParams::default(),
        )
        .await?
        .items;
    let by_port = live(
        &leases,
        jiff::Timestamp::now(),
        std::time::Instant::now(),
        seen,
    );
    let Some(first_port) = by_port.keys().next().copied() else {
        // Nobody is current (this server's own renewal failed): leave things as they are.
        return Ok(());
    };
    let svc = resources::of_kind(Kind::Service);
    let mut service = reg.get(svc, Some("default"), SERVICE).await?;
    if service.pointer("/spec/ports/0/targetPort") != Some(&json!(first_port)) {
        service["spec"]["ports"][0]["targetPort"] = json!(first_port);
        put(reg, svc, service).await?;
    }

    let endpoints = resources::of_kind(Kind::Endpoints);
    let subsets = subsets(&by_port);
    match reg.get(endpoints, Some("default"), SERVICE).await {
        Ok(current) if current.get("subsets") == Some(&subsets) => {}
        Ok(mut current) => {
            current["subsets"] = subsets;
            put(reg, endpoints, current).await?;
        }
        Err(e) if e.reason == "NotFound" => {
            let body = json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": SERVICE, "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": subsets
            });
            create(reg, endpoints, body).await?;
        }
        Err(e) => return Err(e),
    }

    let slice_res = resources::of_kind(Kind::EndpointSlice);
    let wanted = slices(&by_port);
    for (name, body) in &wanted {
        match reg.get(slice_res, Some("default"), name).await {
            Ok(current)
                if ["addressType", "endpoints", "ports"]
                    .iter()
                    .all(|k| current.get(k) == body.get(k)) => {}
            Ok(mut current) => {
                for k in ["addressType", "endpoints", "ports"] {
                    current[k] = body[k].clone();
                }
                put(reg, slice_res, current).await?;
            }
            Err(e) if e.reason == "NotFound" => {
                let mut full = json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": SERVICE}}
                });
                for k in ["addressType", "endpoints", "ports"] {
                    full[k] = body[k].clone();
                }
                create(reg, slice_res, full).await?;
            }
            Err(e) => return Err(e),
        }
    }
    // Slices of ports no live server serves on any more.
    let stale = reg
        .list(slice_res, Some("default"), &ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| {
            let labels = s.pointer("/metadata/labels");
            let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
            label("kubernetes.io/service-name") == Some(SERVICE)
                && label("endpointslice.kubernetes.io/managed-by").is_none()
        })
        .map(|s| super::name_of(&s).to_string())
        .filter(|n| n.starts_with(&format!("{SERVICE}-")) && !wanted.iter().any(|(w, _)| w == n))
        .filter(|n| n[SERVICE.len() + 1..].parse::<u16>().is_ok())
        .collect::<Vec<_>>();
    for name in stale {
        match reg
            .delete(slice_res, Some("default"), &name, &DeleteOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.reason == "NotFound" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Create `obj` in `default`, unless another server just did.
async fn create(reg: &Registry, res: &resources::Resource, obj: Value) -> Result<(), ApiError> {
    match reg
        .create(res, Some("default"), obj, &WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replace `obj` as read (its resourceVersion makes a race with another server a conflict,
/// which the next beat settles).
async fn put(reg: &Registry, res: &resources::Resource, obj: Value) -> Result<(), ApiError> {
    let name = super::name_of(&obj).to_string();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(String::from);
    match reg
        .update(
            res,
            ns.as_deref(),
            &name,
            obj,
            Part::Main,
            &WriteOptions::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "Conflict" => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(addr: &str, renewed: &str, seconds: i64) -> Value {
        json!({"metadata": {"name": format!("apiserver-{addr}"),
                            "labels": {IDENTITY_LABEL: "kube-apiserver"},
                            "annotations": {ADDRESS_ANNOTATION: addr}},
               "spec": {"renewTime": renewed, "leaseDurationSeconds": seconds}})
    }

    /// After first sight, a peer is judged by whether its Lease changes on this server's
    /// clock, not by its clock: one far behind stays live while it renews, one that stops
    /// renewing goes after its duration even if its clock runs ahead.
    #[test]
    fn peers_are_judged_by_their_renewals_on_this_servers_clock() {
        let now: jiff::Timestamp = "2026-12-07T06:00:00Z".parse().unwrap();
        let clock = std::time::Instant::now();
        let mut seen = Seen::default();
        let ahead = |t: &str| lease("10.0.0.1:6443", t, 10);
        let behind = |t: &str| lease("10.0.0.2:6443", t, 10);
        // First sight: only what is current by this clock.
        let by_port = live(
            &[
                ahead("2026-12-07T06:05:00.000000Z"),
                behind("2026-12-07T05:30:00.000000Z"),
            ],
            now,
            clock,
            &mut seen,
        );
        assert_eq!(by_port[&6443].len(), 1);
        // The one behind renews (its renewTime changes): live, though an hour old here.
        let later = clock + Duration::from_secs(3);
        let by_port = live(
            &[
                ahead("2026-12-07T06:05:00.000000Z"),
                behind("2026-12-07T05:30:03.000000Z"),
            ],
            now,
            later,
            &mut seen,
        );
        assert_eq!(by_port[&6443].len(), 2);
        // The one ahead stopped at 06:05 by its clock: gone 10 s after it was last seen to
        // change, here.
        let much_later = clock + Duration::from_secs(11);
        let by_port = live(
            &[
                ahead("2026-12-07T06:05:00.000000Z"),
                behind("2026-12-07T05:30:10.000000Z"),
            ],
            now,
            much_later,
            &mut seen,
        );
        let left: Vec<String> = by_port[&6443].iter().map(|ip| ip.to_string()).collect();
        assert_eq!(left, ["10.0.0.2"]);
    }

    #[test]
    fn only_current_leases_make_endpoints_one_slice_per_port() {
        let now: jiff::Timestamp = "2026-12-07T06:00:00Z".parse().unwrap();
        let leases = [
            lease("10.0.0.1:6443", "2026-12-07T05:59:55.000000Z", 10),
            lease("10.0.0.2:6443", "2026-12-07T05:59:58.000000Z", 10),
            // ran out two seconds ago
            lease("10.0.0.3:6443", "2026-12-07T05:59:48.000000Z", 10),
            lease("127.0.0.1:7002", "2026-12-07T05:59:59.000000Z", 10),
            // not a server's Lease
            json!({"metadata": {"annotations": {ADDRESS_ANNOTATION: "10.0.0.9:1"}},
                   "spec": {"renewTime": "2026-12-07T05:59:59.000000Z", "leaseDurationSeconds": 10}}),
        ];
        let by_port = live(
            &leases,
            now,
            std::time::Instant::now(),
            &mut Seen::default(),
        );
        assert_eq!(by_port.len(), 2);
        assert_eq!(
            by_port[&6443]
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2"]
        );
        let s = slices(&by_port);
        assert_eq!(s[0].0, "kubernetes");
        assert_eq!(s[0].1["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(s[1].0, "kubernetes-7002");
        assert_eq!(s[1].1["ports"][0]["port"], 7002);
        let sub = subsets(&by_port);
        assert_eq!(sub.as_array().unwrap().len(), 2);
        assert_eq!(sub[1]["addresses"][0]["ip"], "127.0.0.1");
    }

    #[test]
    fn a_lease_name_depends_only_on_the_identity() {
        let p = |id: &str| Peer {
            identity: id.into(),
            address: "127.0.0.1:1".parse().unwrap(),
            lease: Duration::from_secs(10),
        };
        assert_eq!(p("h:/a").lease_name(), p("h:/a").lease_name());
        assert_ne!(p("h:/a").lease_name(), p("h:/b").lease_name());
        assert_eq!(p("x").lease_name().len(), "apiserver-".len() + 16);
    }
}
