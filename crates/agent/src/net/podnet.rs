//! The node's pod network: a bridge holding the first address of the node's pod CIDR, and
//! for each pod sandbox a veth pair into its network namespace with an address of the
//! CIDR (the CNI bridge plugin's job, done here). Addresses are handed out by the agent
//! (host-local IPAM): one file per address under `<data dir>/net/ips/`, naming the pod, so
//! a restarted agent knows which are taken.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_core::net::Cidr;

use super::links::{LinkError, Links};
use crate::runtime::fnv;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("the pod network {cidr} has no free address left")]
    Full { cidr: Cidr },
    #[error("recording the address of pod {uid} in {path}")]
    Record {
        uid: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A record younger than this is never taken for a leftover: its sandbox may not be
/// listed yet.
const FRESH: Duration = Duration::from_secs(60);

pub struct PodNet {
    links: Arc<dyn Links>,
    pub bridge: String,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    /// The pods' MTU: the underlay's less the overlay's 50 bytes.
    pub mtu: u32,
    dir: PathBuf,
    /// Pod uid -> address.
    ips: Mutex<HashMap<String, Ipv4Addr>>,
    /// One attach at a time (address choice and its record).
    attaching: tokio::sync::Mutex<()>,
}

/// The bridge's name for `node` (at most 15 characters, as Linux allows).
pub fn bridge_name(node: &str) -> String {
    format!("brt{:012x}", fnv(node) & 0xffff_ffff_ffff)
}

/// The host side of a pod's veth pair (at most 15 characters; the peer adds a `p`).
pub fn host_if(uid: &str) -> String {
    format!("bv{:012x}", fnv(uid) & 0xffff_ffff_ffff)
}

/// The lowest address of `cidr` past the gateway that is not taken (not the broadcast).
pub fn next_free(cidr: Cidr, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (2..cidr.size().saturating_sub(1) as u32)
        .filter_map(|n| cidr.host(n))
        .find(|ip| !taken.contains(ip))
}

impl PodNet {
    /// Make the bridge for `cidr` and read the addresses already handed out.
    pub async fn new(
        links: Arc<dyn Links>,
        node: &str,
        cidr: Cidr,
        data_dir: &Path,
        mtu: u32,
    ) -> Result<PodNet, PodNetError> {
        let gateway = cidr.host(1).ok_or(PodNetError::Full { cidr })?;
        let bridge = bridge_name(node);
        links.bridge(&bridge, gateway, cidr.bits).await?;
        let dir = data_dir.join("net").join("ips");
        let record = |source| PodNetError::Record {
            uid: String::new(),
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(record)?;
        let mut ips = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(record)?.flatten() {
            let (Ok(ip), Ok(uid)) = (
                entry.file_name().to_string_lossy().parse::<Ipv4Addr>(),
                std::fs::read_to_string(entry.path()),
            ) else {
                continue;
            };
            if cidr.contains(ip) {
                ips.insert(uid.trim().to_string(), ip);
            } else {
                // From a pod CIDR this node no longer has.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(PodNet {
            links,
            bridge,
            cidr,
            gateway,
            mtu,
            dir,
            ips: Mutex::new(ips),
            attaching: tokio::sync::Mutex::new(()),
        })
    }

    /// Give pod `uid`'s sandbox (its network namespace at `netns`) its address and link.
    pub async fn attach(&self, uid: &str, netns: &Path) -> Result<Ipv4Addr, PodNetError> {
        let _one = self.attaching.lock().await;
        let known = self.ips.lock().expect("ips").get(uid).copied();
        let ip = match known {
            Some(ip) => ip,
            None => {
                let taken: HashSet<Ipv4Addr> =
                    self.ips.lock().expect("ips").values().copied().collect();
                let ip =
                    next_free(self.cidr, &taken).ok_or(PodNetError::Full { cidr: self.cidr })?;
                let path = self.dir.join(ip.to_string());
                std::fs::write(&path, uid).map_err(|source| PodNetError::Record {
                    uid: uid.into(),
                    path,
                    source,
                })?;
                self.ips.lock().expect("ips").insert(uid.to_string(), ip);
                ip
            }
        };
        self.links
            .attach(
                netns,
                &self.bridge,
                &host_if(uid),
                ip,
                self.cidr.bits,
                self.gateway,
                self.mtu,
            )
            .await?;
        Ok(ip)
    }

    /// Give what was made for `from` (its address, and the link in its namespace) to pod
    /// `to`: a sandbox linked while warm, claimed by a pod. `None` if `from` has no address.
    pub fn rekey(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        let mut ips = self.ips.lock().expect("ips");
        let ip = *ips.get(from)?;
        std::fs::write(self.dir.join(ip.to_string()), to).ok()?;
        ips.remove(from);
        // An address `to` held before (a link that failed half way) is free again.
        if let Some(old) = ips.insert(to.to_string(), ip).filter(|old| *old != ip) {
            let _ = std::fs::remove_file(self.dir.join(old.to_string()));
        }
        Some(ip)
    }

    /// The address of pod `uid`, if it has one.
    pub fn ip_of(&self, uid: &str) -> Option<Ipv4Addr> {
        self.ips.lock().expect("ips").get(uid).copied()
    }

    /// Pod `uid`'s sandbox is gone: its address is free. (Its veth went with the namespace.)
    pub fn release(&self, uid: &str) {
        if let Some(ip) = self.ips.lock().expect("ips").remove(uid) {
            let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
        }
    }

    /// Free the addresses of pods that have no sandbox any more (`live`: the pods that do),
    /// leaving alone records younger than a minute.
    pub fn retain(&self, live: &HashSet<&str>) {
        let gone: Vec<(String, Ipv4Addr)> = self
            .ips
            .lock()
            .expect("ips")
            .iter()
            .filter(|(uid, _)| !live.contains(uid.as_str()))
            .map(|(u, ip)| (u.clone(), *ip))
            .collect();
        for (uid, ip) in gone {
            let path = self.dir.join(ip.to_string());
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > FRESH)
                .unwrap_or(true);
            if old {
                self.release(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::links::Recording;

    #[test]
    fn addresses_skip_the_network_the_gateway_and_the_broadcast() {
        let cidr: Cidr = "10.42.3.0/30".parse().unwrap();
        assert_eq!(
            next_free(cidr, &HashSet::new()),
            Some(Ipv4Addr::new(10, 42, 3, 2))
        );
        let taken = HashSet::from([Ipv4Addr::new(10, 42, 3, 2)]);
        assert_eq!(next_free(cidr, &taken), None);
    }

    #[tokio::test]
    async fn addresses_are_recorded_kept_across_restarts_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let links = Arc::new(Recording::default());
        let cidr: Cidr = "10.42.3.0/24".parse().unwrap();
        let net = PodNet::new(links.clone(), "n1", cidr, dir.path(), 1450)
            .await
            .unwrap();
        let a = net
            .attach("pod-a", Path::new("/proc/1/ns/net"))
            .await
            .unwrap();
        let b = net
            .attach("pod-b", Path::new("/proc/2/ns/net"))
            .await
            .unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 42, 3, 2), Ipv4Addr::new(10, 42, 3, 3))
        );
        // Attaching again (a restarted sandbox) keeps the address.
        assert_eq!(
            net.attach("pod-a", Path::new("/proc/3/ns/net"))
                .await
                .unwrap(),
            a
        );
        let calls = links.calls.lock().unwrap().clone();
        assert_eq!(
            calls[0],
            format!("bridge {} 10.42.3.1/24", bridge_name("n1"))
        );
        assert!(
            calls[1].starts_with("attach /proc/1/ns/net")
                && calls[1].ends_with("10.42.3.2/24 via 10.42.3.1"),
            "{calls:?}"
        );

        // A restarted agent knows what is taken.
        let again = PodNet::new(links.clone(), "n1", cidr, dir.path(), 1450)
            .await
            .unwrap();
        assert_eq!(again.ip_of("pod-b"), Some(b));
        again.release("pod-a");
        assert_eq!(again.attach("pod-c", Path::new("/x")).await.unwrap(), a);
        // Fresh records are kept even when their pod is not listed.
        again.retain(&HashSet::new());
        assert_eq!(again.ip_of("pod-b"), Some(b));
    }

    #[tokio::test]
    async fn a_warm_sandboxs_address_passes_to_the_pod_that_claims_it_and_is_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let links = Arc::new(Recording::default());
        let cidr: Cidr = "10.42.4.0/24".parse().unwrap();
        let net = PodNet::new(links.clone(), "n1", cidr, dir.path(), 1450)
            .await
            .unwrap();
        let ip = net
            .attach("warm-abc", Path::new("/proc/1/ns/net"))
            .await
            .unwrap();
        assert_eq!(net.rekey("warm-abc", "pod-a"), Some(ip));
        assert_eq!(
            (net.ip_of("pod-a"), net.ip_of("warm-abc")),
            (Some(ip), None)
        );
        // Nothing to hand over: nothing changes.
        assert_eq!(net.rekey("warm-abc", "pod-b"), None);
        assert_eq!(net.ip_of("pod-b"), None);
        // The next address is another one, and a restart reads the pod's record.
        let other = net.attach("pod-c", Path::new("/x")).await.unwrap();
        assert_ne!(other, ip);
        let again = PodNet::new(links, "n1", cidr, dir.path(), 1450)
            .await
            .unwrap();
        assert_eq!(again.ip_of("pod-a"), Some(ip));
    }
}
