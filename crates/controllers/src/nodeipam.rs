//! Pod CIDRs: every node gets its own block of the cluster's pod network (by default a /24
//! of 10.42.0.0/16) in `spec.podCIDR(s)`, the lowest block no node holds, as Kubernetes'
//! node IPAM controller gives them. A block is free again once its node is gone: the nodes
//! themselves are the record of what is taken, and only the leader assigns, so no block is
//! handed out twice. Virtual nodes get none (their pods live elsewhere).
//!
//! A node that comes with a podCIDR of its own keeps it; if it overlaps another node's, or
//! lies outside the cluster's network, a Warning Event says so and nothing is changed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::{api_err, Context, Error};

pub use berth_core::net::{Cidr, CidrError};

/// How pod CIDRs are cut: the cluster's network and the prefix of each node's block.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub cluster: Cidr,
    pub node_bits: u8,
}

impl Settings {
    /// Check that the cluster network holds at least one node block.
    pub fn new(cluster: Cidr, node_bits: u8) -> Result<Settings, CidrError> {
        if node_bits < cluster.bits || node_bits > 30 {
            return Err(CidrError::TooSmall { cluster, node_bits });
        }
        Ok(Settings { cluster, node_bits })
    }
}

/// One decision of a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Assign {
        node: String,
        cidr: Cidr,
    },
    /// A node whose own podCIDR cannot be used, and why (a Warning Event, once).
    Refuse {
        node: String,
        message: String,
    },
    /// No block is left.
    Full {
        node: String,
    },
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .filter(|c| !c.is_empty())
}

/// A virtual node off the pod network (its pods' addresses are its provider's): it gets
/// no block. One whose groups join the pod network (`berth.dev/pod-network-via`) does.
fn is_virtual_off_network(node: &Node) -> bool {
    let m = &node.metadata;
    m.labels
        .as_ref()
        .and_then(|l| l.get("type"))
        .map(String::as_str)
        == Some("virtual-kubelet")
        && !m
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(berth_core::net::VIA_ANNOTATION))
}

/// Decide the sweep. `told` holds the nodes already warned about (a refusal is said once).
pub fn plan(nodes: &[Arc<Node>], settings: Settings, told: &HashSet<String>) -> Vec<Write> {
    let mut sorted: Vec<&Arc<Node>> = nodes.iter().collect();
    // Older nodes keep their claim when two clash.
    sorted.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut taken: Vec<Cidr> = Vec::new();
    let mut writes = Vec::new();
    for node in &sorted {
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(given) = pod_cidr(node) else {
            continue;
        };
        let problem = match given.parse::<Cidr>() {
            Err(e) => Some(e.to_string()),
            Ok(c) => match taken.iter().find(|t| t.overlaps(&c)) {
                Some(t) => Some(format!(
                    "its podCIDR {c} overlaps {t}, which another node holds"
                )),
                None => {
                    taken.push(c);
                    (!settings.cluster.overlaps(&c) || c.bits < settings.cluster.bits).then(|| {
                        format!(
                            "its podCIDR {c} is outside the cluster CIDR {}",
                            settings.cluster
                        )
                    })
                }
            },
        };
        if let Some(message) = problem {
            if !told.contains(&name) {
                writes.push(Write::Refuse {
                    node: name,
                    message,
                });
            }
        }
    }
    let mut next = 0u32;
    let used: BTreeSet<Cidr> = taken.iter().copied().collect();
    for node in sorted {
        if pod_cidr(node).is_some() || is_virtual_off_network(node) {
            continue;
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let free = loop {
            match settings.cluster.block(settings.node_bits, next) {
                None => break None,
                Some(b) if used.iter().any(|u| u.overlaps(&b)) => next += 1,
                Some(b) => {
                    next += 1;
                    break Some(b);
                }
            }
        };
        match free {
            Some(cidr) => writes.push(Write::Assign { node: name, cidr }),
            None if !told.contains(&name) => writes.push(Write::Full { node: name }),
            None => {}
        }
    }
    writes
}

/// Sweep whenever a node changes (and every 30 s) until dropped.
pub async fn run(ctx: Arc<Context>, settings: Settings, changed: Arc<tokio::sync::Notify>) {
    if let Err(e) = ctx.synced().await {
        tracing::error!(error = %e, "node IPAM");
        return;
    }
    let mut told = HashSet::new();
    loop {
        for w in plan(&ctx.nodes.state(), settings, &told) {
            if let Err(e) = execute(&ctx, &w, &mut told).await {
                tracing::warn!(error = %berth_core::error::Chain(&e), "node IPAM");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), changed.notified()).await;
    }
}

async fn execute(ctx: &Context, w: &Write, told: &mut HashSet<String>) -> Result<(), Error> {
    let (node, reason, message) = match w {
        Write::Assign { node, cidr } => {
            let api: Api<Node> = Api::all(ctx.client.clone());
            // Only the leader assigns, and agents never write the field.
            let patch =
                json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
            api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(api_err(format!("assigning {cidr} to node {node}")))?;
            tracing::info!(node = %node, cidr = %cidr, "pod CIDR assigned");
            return Ok(());
        }
        Write::Refuse { node, message } => (node, "CIDRAssignmentFailed", message.clone()),
        Write::Full { node } => (
            node,
            "CIDRNotAvailable",
            "no pod CIDR is left in the cluster CIDR: remove nodes or give a larger --cluster-cidr"
                .to_string(),
        ),
    };
    told.insert(node.clone());
    let uid = ctx
        .nodes
        .state()
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
        .and_then(|n| n.metadata.uid.clone())
        .unwrap_or_default();
    crate::events::record(
        &ctx.client,
        berth_core::events::Involved {
            api_version: "v1",
            kind: "Node",
            namespace: "default",
            name: node,
            uid: &uid,
        },
        "Warning",
        reason,
        &format!("Node {node}: {message}"),
        "node-ipam-controller",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn settings(cluster: &str) -> Settings {
        Settings::new(cluster.parse().unwrap(), 24).unwrap()
    }

    #[test]
    fn nodes_get_the_lowest_free_blocks() {
        let nodes = [
            node("a", Some("10.42.0.0/24")),
            node("b", None),
            node("c", Some("10.42.2.0/24")),
            node("d", None),
        ];
        let w = plan(&nodes, settings("10.42.0.0/16"), &HashSet::new());
        assert_eq!(
            w,
            [
                Write::Assign {
                    node: "b".into(),
                    cidr: "10.42.1.0/24".parse().unwrap()
                },
                Write::Assign {
                    node: "d".into(),
                    cidr: "10.42.3.0/24".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn virtual_nodes_get_a_block_only_on_the_pod_network() {
        let virtual_node = |name: &str, via: Option<&str>| {
            let mut n = (*node(name, None)).clone();
            n.metadata.labels = Some([("type".to_string(), "virtual-kubelet".to_string())].into());
            n.metadata.annotations =
                via.map(|v| [(berth_core::net::VIA_ANNOTATION.to_string(), v.to_string())].into());
            Arc::new(n)
        };
        let nodes = [virtual_node("off", None), virtual_node("on", Some("a"))];
        assert_eq!(
            plan(&nodes, settings("10.42.0.0/16"), &HashSet::new()),
            [Write::Assign {
                node: "on".into(),
                cidr: "10.42.0.0/24".parse().unwrap()
            }]
        );
    }

    #[test]
    fn a_full_network_clashes_and_strangers_are_told() {
        let nodes = [node("a", Some("10.42.0.0/24")), node("b", None)];
        let w = plan(&nodes, settings("10.42.0.0/24"), &HashSet::new());
        assert_eq!(w, [Write::Full { node: "b".into() }]);
        assert!(plan(
            &nodes,
            settings("10.42.0.0/24"),
            &HashSet::from(["b".to_string()])
        )
        .is_empty());

        let nodes = [
            node("a", Some("10.42.0.0/24")),
            node("b", Some("10.42.0.0/23")),
            node("c", Some("192.168.0.0/24")),
        ];
        let w = plan(&nodes, settings("10.42.0.0/16"), &HashSet::new());
        assert!(
            matches!(&w[..], [Write::Refuse { node: b, .. }, Write::Refuse { node: c, message }]
            if b == "b" && c == "c" && message.contains("outside")),
            "{w:?}"
        );
    }

    #[test]
    fn bad_settings_say_what_to_change() {
        assert!(matches!(
            "10.42.0.0/25".parse::<Cidr>().map(|c| Settings::new(c, 24)),
            Ok(Err(CidrError::TooSmall { .. }))
        ));
        assert!(matches!(
            "10.42.0.1/16".parse::<Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            "10.42.0.0".parse::<Cidr>(),
            Err(CidrError::Parse(_))
        ));
    }
}
