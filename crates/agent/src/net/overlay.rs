//! The overlay: nodes reach each other's pod CIDRs over VXLAN, the way flannel's vxlan
//! backend does. One VXLAN device per node (made once another node is there to reach),
//! whose MAC the node publishes in its own annotation; for every other node that has a pod
//! CIDR, an address and a published MAC: an FDB entry (its MAC to its address), a neighbour
//! entry (its device's address, the first of its CIDR, to its MAC) and an onlink route to
//! its CIDR through that address. Nodes that come, go or move are reprogrammed on the
//! Node watch's event.
//!
//! ```text
//!  pod 10.42.0.5 ─veth─ bridge 10.42.0.1 ── route 10.42.1.0/24 via 10.42.1.0 dev vxlan
//!        (node A, 192.0.2.1)                  neigh 10.42.1.0 → MAC(B); fdb MAC(B) → 192.0.2.2
//!                       ═══ UDP 4789 ═══▶ node B's vxlan ─▶ bridge 10.42.1.1 ─▶ pod 10.42.1.7
//! ```

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::net::Cidr;
use k8s_openapi::api::core::v1::Node;

use super::links::{Links, Peer};

/// The annotation that carries a node's VXLAN MAC.
pub const MAC_ANNOTATION: &str = "berth.dev/vxlan-mac";
/// The overlay's VXLAN network identifier and UDP port (the IANA port).
pub const VNI: u32 = 1;
pub const PORT: u16 = 4789;

/// The VXLAN device's name on this node.
pub fn device_name() -> String {
    "berth.vxlan".into()
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    <[u8; 6]>::try_from(parts).ok()
}

/// A node's underlay address: its InternalIP.
fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

pub use berth_core::net::VIA_ANNOTATION;

fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// What the overlay should hold, from the nodes: whether this node needs its device at all
/// (some other node has a pod CIDR and an address), and the peers it can program (those
/// that also published their MAC). A node carried by another (`berth.dev/pod-network-via`)
/// is reached through its carrier, and not at all from the carrier itself. Pure.
pub fn peers(nodes: &[Arc<Node>], me: &str) -> (bool, Vec<Peer>) {
    let mut wanted = false;
    let mut out = Vec::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let cidr = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Cidr>().ok());
        let carrier = match annotation(n, VIA_ANNOTATION) {
            None => Some(&**n),
            Some(via) if via == me => continue,
            Some(via) => nodes
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(via))
                .map(|c| &**c),
        };
        let (Some(cidr), Some(carrier)) = (cidr, carrier) else {
            continue;
        };
        let Some(vtep) = internal_ip(carrier) else {
            continue;
        };
        wanted = true;
        if let Some(mac) = annotation(carrier, MAC_ANNOTATION).and_then(parse_mac) {
            out.push(Peer { cidr, vtep, mac });
        }
    }
    out.sort();
    (wanted, out)
}

/// The bytes VXLAN adds to each packet (outer Ethernet, IPv4, UDP and VXLAN headers).
pub const OVERHEAD: u32 = 50;

/// Keep the overlay equal to the nodes, until dropped; the device carries `mtu`.
pub async fn run(
    client: kube::Client,
    links: Arc<dyn Links>,
    me: String,
    cidr: Cidr,
    local: Ipv4Addr,
    mtu: u32,
) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let (nodes, watch) = super::cache::<Node>(&client, changed.clone());
    let program = async {
        if nodes.wait_until_ready().await.is_err() {
            return;
        }
        let device = device_name();
        let mut made: Option<[u8; 6]> = None;
        let mut programmed: Option<Vec<Peer>> = None;
        loop {
            let (wanted, peers) = peers(&nodes.state(), &me);
            let mut retry = false;
            if wanted && made.is_none() {
                match links.vxlan(&device, VNI, local, PORT, cidr.base, mtu).await {
                    Ok(mac) => {
                        if let Err(e) = publish(&client, &me, &mac).await {
                            tracing::warn!(error = %e, "publishing this node's VXLAN MAC failed; retrying");
                            retry = true;
                        } else {
                            tracing::info!(node = %me, mac = %format_mac(&mac), %local, "overlay device up");
                            made = Some(mac);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %berth_core::error::Chain(&e), "making the VXLAN device failed; retrying");
                        retry = true;
                    }
                }
            }
            if made.is_some() && programmed.as_ref() != Some(&peers) {
                match links.peers(&device, &peers).await {
                    Ok(()) => {
                        tracing::debug!(peers = peers.len(), "overlay programmed");
                        programmed = Some(peers);
                    }
                    Err(e) => {
                        tracing::warn!(error = %berth_core::error::Chain(&e), "programming the overlay failed; retrying");
                        retry = true;
                    }
                }
            }
            let wait = if retry {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(60)
            };
            let _ = tokio::time::timeout(wait, changed.notified()).await;
        }
    };
    futures::join!(watch, program);
}

/// Write this node's MAC into its annotation (a node may write its own Node).
async fn publish(client: &kube::Client, me: &str, mac: &[u8; 6]) -> Result<(), kube::Error> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {MAC_ANNOTATION: format_mac(mac)}}});
    api.patch(
        me,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>, mac: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: mac.map(|m| [(MAC_ANNOTATION.to_string(), m.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(String::from),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    }]
                }),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn peers_are_the_other_nodes_with_a_cidr_an_address_and_a_mac() {
        let nodes = [
            node(
                "me",
                Some("10.42.0.0/24"),
                Some("192.0.2.1"),
                Some("02:00:00:00:00:01"),
            ),
            node(
                "b",
                Some("10.42.1.0/24"),
                Some("192.0.2.2"),
                Some("02:00:00:00:00:02"),
            ),
            node("c", Some("10.42.2.0/24"), Some("192.0.2.3"), None),
            node("virtual", None, Some("192.0.2.4"), None),
        ];
        let (wanted, peers) = peers(&nodes, "me");
        assert!(wanted);
        assert_eq!(
            peers,
            [Peer {
                cidr: "10.42.1.0/24".parse().unwrap(),
                vtep: Ipv4Addr::new(192, 0, 2, 2),
                mac: [2, 0, 0, 0, 0, 2],
            }]
        );
        // A virtual node's groups on b's host are reached through b, and are local on b.
        let mut carried = (*node("vn", Some("10.42.9.0/24"), Some("127.0.0.1"), None)).clone();
        carried.metadata.annotations = Some([(VIA_ANNOTATION.to_string(), "b".to_string())].into());
        let mut with = nodes.to_vec();
        with.push(Arc::new(carried));
        let vn = Peer {
            cidr: "10.42.9.0/24".parse().unwrap(),
            vtep: Ipv4Addr::new(192, 0, 2, 2),
            mac: [2, 0, 0, 0, 0, 2],
        };
        assert_eq!(super::peers(&with, "me").1[1], vn);
        assert!(!super::peers(&with, "b").1.iter().any(|p| p.cidr == vn.cidr));
        // Alone, a node makes no device at all.
        assert_eq!(super::peers(&nodes[..1], "me"), (false, vec![]));
        assert_eq!(
            parse_mac(&format_mac(&[2, 0xab, 0, 0, 0, 9])),
            Some([2, 0xab, 0, 0, 0, 9])
        );
    }

    #[tokio::test]
    async fn the_recording_fake_sees_the_device_and_exactly_the_peers() {
        let links = crate::net::links::Recording::default();
        links
            .vxlan(
                &device_name(),
                VNI,
                Ipv4Addr::new(192, 0, 2, 1),
                PORT,
                Ipv4Addr::new(10, 42, 0, 0),
                1450,
            )
            .await
            .unwrap();
        let nodes = [node(
            "b",
            Some("10.42.1.0/24"),
            Some("192.0.2.2"),
            Some("02:00:00:00:00:02"),
        )];
        links
            .peers(&device_name(), &peers(&nodes, "me").1)
            .await
            .unwrap();
        let calls = links.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "vxlan berth.vxlan 1 192.0.2.1:4789 10.42.0.0",
                "peers berth.vxlan 10.42.1.0/24@192.0.2.2"
            ]
        );
    }
}
