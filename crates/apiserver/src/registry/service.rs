//! Service cluster IPs (from 10.96.0.0/12) and node ports (30000-32767): chosen under the
//! registry's allocation lock by scanning the services already stored, then claimed in the
//! store, one key per address and port (`/registry/berth/allocations/...`), created with a
//! compare-and-swap, so two servers on one store never hand out the same one. A claim whose
//! Service is gone (or no longer holds it) is taken over once it is a minute old; younger,
//! its Service may still be on its way to the store.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use berth_core::resources::{self, Kind};
use berth_core::FieldError;
use rand::Rng;
use serde_json::{json, Value};

use super::{ListParams, Registry};
use crate::status::ApiError;

/// The service network.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The node port range.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn in_cidr(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base)
}

/// Fill in `spec.clusterIP(s)` and node ports for a service being created (`old` None) or
/// updated, refusing addresses and ports already taken.
pub(crate) async fn allocate(
    reg: &Registry,
    svc: &mut Value,
    old: Option<&Value>,
    exclude: &HashSet<String>,
) -> Result<(), ApiError> {
    let res = resources::of_kind(Kind::Service);
    let name = super::name_of(svc).to_string();
    let uid = svc.pointer("/metadata/uid").cloned();
    let all = reg.list(res, None, &ListParams::default()).await?;
    let mut used_ips: HashSet<String> = exclude
        .iter()
        .filter(|e| e.contains('.'))
        .cloned()
        .collect();
    let mut used_ports: HashSet<i64> = exclude.iter().filter_map(|e| e.parse().ok()).collect();
    for other in all
        .items
        .iter()
        .filter(|o| o.pointer("/metadata/uid") != uid.as_ref())
    {
        if let Some(ip) = other.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_string());
        }
        for p in other
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(np);
            }
        }
    }
    let Some(spec) = svc.get_mut("spec") else {
        return Ok(());
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(String::from);
    let wanted = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = match (wanted.as_str(), old_ip) {
        ("", Some(old)) => old,
        ("None", _) => "None".to_string(),
        ("", None) => {
            let (base, bits) = SERVICE_CIDR;
            let size = 1u32 << (32 - bits);
            let mut rng = rand::rng();
            let mut pick = None;
            for _ in 0..size {
                // The first 256 addresses are kept for Services with a fixed address
                // (`kubernetes` at .1, `kube-dns` at .10), as Kubernetes keeps a low band.
                let candidate = Ipv4Addr::from(u32::from(base) + rng.random_range(256..size - 1));
                if !used_ips.contains(&candidate.to_string()) {
                    pick = Some(candidate.to_string());
                    break;
                }
            }
            pick.ok_or_else(|| ApiError::internal("the service IP range 10.96.0.0/12 is full"))?
        }
        (given, _) => {
            let parsed: Option<Ipv4Addr> = given.parse().ok();
            if !parsed.is_some_and(in_cidr) {
                return Err(ApiError::invalid(res, &name, &[FieldError::invalid(
                    "spec.clusterIPs",
                    given,
                    "failed to allocate IP: the provided IP is not in the valid range 10.96.0.0/12",
                )]));
            }
            if used_ips.contains(given) {
                return Err(ApiError::invalid(
                    res,
                    &name,
                    &[FieldError::invalid(
                        "spec.clusterIPs",
                        given,
                        "failed to allocate IP: provided IP is already allocated",
                    )],
                ));
            }
            given.to_string()
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
        for (i, p) in ports.into_iter().flatten().enumerate() {
            let given = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            let port =
                if given != 0 {
                    if !NODE_PORTS.contains(&given) || used_ports.contains(&given) {
                        return Err(ApiError::invalid(res, &name, &[FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        given,
                        "provided port is already allocated or outside the range 30000-32767",
                    )]));
                    }
                    given
                } else if let Some(kept) = old_ports
                    .iter()
                    .find(|o| o.get("port") == p.get("port"))
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_i64)
                {
                    kept
                } else {
                    let mut rng = rand::rng();
                    let mut pick = None;
                    for _ in 0..4096 {
                        let c = rng.random_range(NODE_PORTS);
                        if !used_ports.contains(&c) {
                            pick = Some(c);
                            break;
                        }
                    }
                    pick.ok_or_else(|| ApiError::internal("no free node port in 30000-32767"))?
                };
            used_ports.insert(port);
            p["nodePort"] = json!(port);
        }
    }
    Ok(())
}

/// The address of the `default/kubernetes` Service, unless the server is given another.
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Is `ip` one of the addresses kept for the system Services (10.96.0.0/24)?
pub fn is_system_address(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 96, 0]
}

/// The Services every cluster has: `default/kubernetes` (the API server, at `api`) and
/// `kube-system/kube-dns` at `cluster_dns` (each node's agent answers it). The first's
/// endpoints are the live API servers ([`super::peers`]); an address already taken by a
/// user's Service is left to it, with a warning.
pub(crate) async fn ensure_system(
    reg: &Registry,
    api: std::net::SocketAddr,
    api_ip: Ipv4Addr,
    cluster_dns: Ipv4Addr,
) -> Result<(), ApiError> {
    use super::WriteOptions;
    let svc = resources::of_kind(Kind::Service);
    let services = [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": api_ip.to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                "targetPort": api.port()}]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": cluster_dns.to_string(),
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
        }),
    ];
    for body in services {
        let ns = body
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        // Another server on the same store may have made it (its address is then taken,
        // which a create would report first).
        let name = super::name_of(&body).to_string();
        if reg.get_kv(svc, ns.as_deref(), &name).await?.is_some() {
            continue;
        }
        match reg
            .create(svc, ns.as_deref(), body, &WriteOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => tracing::warn!(error = %e.message, "a system Service could not be created"),
        }
    }
    Ok(())
}

const CLAIMS: &str = "/registry/berth/allocations/";
/// A claim younger than this may belong to a Service not yet stored.
const CLAIM_GRACE_SECS: i64 = 60;

/// The addresses and ports a Service holds, as claim keys and the value claimed.
fn held(svc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip.parse::<Ipv4Addr>().is_ok() {
            out.push((format!("{CLAIMS}serviceips/{ip}"), ip.to_string()));
        }
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            out.push((format!("{CLAIMS}nodeports/{np}"), np.to_string()));
        }
    }
    out
}

/// Claim in the store what `svc` holds. `Ok(Some(value))`: that address or port is held by
/// another live Service (nothing else was claimed by this call that is not released).
pub(crate) async fn claim(
    reg: &Registry,
    svc: &Value,
    now: i64,
) -> Result<Option<String>, ApiError> {
    let res = resources::of_kind(Kind::Service);
    let me = json!({
        "namespace": svc.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        "name": svc.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "uid": svc.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        "claimed": now,
    });
    let bytes = serde_json::to_vec(&me).expect("json");
    let mut made = Vec::new();
    for (key, value) in held(svc) {
        let taken = match reg.store.create(&key, bytes.clone()).await {
            Ok(_) => {
                made.push(key);
                continue;
            }
            Err(berth_store::StoreError::AlreadyExists { .. }) => {
                let found = reg
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| ApiError::from_store(res, "", e))?;
                let Some(kv) = found else {
                    // Released meanwhile: the next attempt claims it.
                    for k in made {
                        let _ = reg.store.delete(&k, None).await;
                    }
                    return Ok(Some(value));
                };
                let owner: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                if owner.get("uid") == me.get("uid") {
                    continue;
                }
                if still_holds(reg, &owner, &key).await?
                    || now - owner.get("claimed").and_then(Value::as_i64).unwrap_or(0)
                        < CLAIM_GRACE_SECS
                {
                    Some(value.clone())
                } else {
                    // A leftover (its Service went, or a write never finished): take it over,
                    // unless someone else did first.
                    match reg.store.update(&key, bytes.clone(), kv.mod_revision).await {
                        Ok(_) => None,
                        Err(_) => Some(value.clone()),
                    }
                }
            }
            Err(e) => return Err(ApiError::from_store(res, "", e)),
        };
        if let Some(v) = taken {
            for k in made {
                let _ = reg.store.delete(&k, None).await;
            }
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Does the Service named in a claim still exist with that uid and hold the claimed key?
async fn still_holds(reg: &Registry, owner: &Value, key: &str) -> Result<bool, ApiError> {
    let res = resources::of_kind(Kind::Service);
    let (Some(ns), Some(name)) = (
        owner.get("namespace").and_then(Value::as_str),
        owner.get("name").and_then(Value::as_str),
    ) else {
        return Ok(false);
    };
    match reg.get(res, Some(ns), name).await {
        Ok(svc) => Ok(svc.pointer("/metadata/uid") == owner.get("uid")
            && held(&svc).iter().any(|(k, _)| k == key)),
        Err(e) if e.code == http::StatusCode::NOT_FOUND => Ok(false),
        Err(e) => Err(e),
    }
}

/// Give back the claims of `svc` that `keep` (its new version, if any) no longer holds.
pub(crate) async fn release(reg: &Registry, svc: &Value, keep: Option<&Value>) {
    let kept: HashSet<String> = keep
        .map(held)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for (key, _) in held(svc) {
        if kept.contains(&key) {
            continue;
        }
        let Ok(Some(kv)) = reg.store.get(&key).await else {
            continue;
        };
        let owner: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        if owner.get("uid") == svc.pointer("/metadata/uid") {
            let _ = reg.store.delete(&key, Some(kv.mod_revision)).await;
        }
    }
}

/// Choose and claim the Service's addresses and ports (see the module's doc). A value the
/// user gave that another Service holds is refused; one chosen here is chosen again.
pub(crate) async fn allocate_and_claim(
    reg: &Registry,
    svc: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<(), ApiError> {
    let res = resources::of_kind(Kind::Service);
    let given = svc.clone();
    let mut exclude = HashSet::new();
    loop {
        let mut candidate = given.clone();
        allocate(reg, &mut candidate, old, &exclude).await?;
        if dry_run {
            *svc = candidate;
            return Ok(());
        }
        let now = jiff::Timestamp::now().as_second();
        let Some(taken) = claim(reg, &candidate, now).await? else {
            *svc = candidate;
            return Ok(());
        };
        let name = super::name_of(&given).to_string();
        let asked_ip =
            given.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(taken.as_str());
        let asked_port = given
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|p| {
                p.get("nodePort")
                    .and_then(Value::as_i64)
                    .map(|n| n.to_string())
                    == Some(taken.clone())
            });
        let kept = old.is_some_and(|o| held(o).iter().any(|(_, v)| *v == taken));
        if (asked_ip || asked_port) && !kept {
            let field = if asked_ip {
                "spec.clusterIPs"
            } else {
                "spec.ports.nodePort"
            };
            return Err(ApiError::invalid(
                res,
                &name,
                &[FieldError::invalid(
                    field,
                    taken.as_str(),
                    "provided value is already allocated",
                )],
            ));
        }
        exclude.insert(taken);
        if exclude.len() > 32 {
            return Err(ApiError::internal(
                "no free service address or node port could be claimed",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;
    use berth_store::{SqliteOptions, SqliteStore, Store};
    use std::sync::Arc;

    fn svc(name: &str, ip: Option<&str>, node_port: Option<i64>) -> Value {
        let mut spec = json!({"type": "NodePort", "ports": [{"port": 80}]});
        if let Some(ip) = ip {
            spec["clusterIP"] = json!(ip);
        }
        if let Some(np) = node_port {
            spec["ports"][0]["nodePort"] = json!(np);
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
    }

    /// Two servers on one store: what one holds, the other cannot hand out; what is deleted
    /// is free again.
    #[tokio::test]
    async fn two_registries_on_one_store_never_share_an_address_or_port() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).unwrap());
        let (a, b) = (Registry::new(store.clone()), Registry::new(store.clone()));
        a.bootstrap().await.unwrap();
        b.bootstrap().await.unwrap();
        let res = resources::of_kind(Kind::Service);
        let opts = WriteOptions::default();
        a.create(
            res,
            Some("default"),
            svc("one", Some("10.96.7.7"), Some(30007)),
            &opts,
        )
        .await
        .unwrap();
        let clash = b
            .create(
                res,
                Some("default"),
                svc("two", Some("10.96.7.7"), None),
                &opts,
            )
            .await
            .unwrap_err();
        assert_eq!(
            clash.code,
            http::StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            clash.message
        );
        let clash = b
            .create(res, Some("default"), svc("two", None, Some(30007)), &opts)
            .await
            .unwrap_err();
        assert!(
            clash.message.contains("already allocated"),
            "{}",
            clash.message
        );
        // Nothing of the refused creates stays claimed: a third Service gets a fresh address.
        let three = b
            .create(res, Some("default"), svc("three", None, None), &opts)
            .await
            .unwrap();
        assert_ne!(
            three.object.pointer("/spec/clusterIP"),
            Some(&json!("10.96.7.7"))
        );
        // Deleted, the address and port are free for the other server.
        a.delete(res, Some("default"), "one", &Default::default())
            .await
            .unwrap();
        b.create(
            res,
            Some("default"),
            svc("two", Some("10.96.7.7"), Some(30007)),
            &opts,
        )
        .await
        .unwrap();
    }
}
