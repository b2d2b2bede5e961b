//! The narrow view of pods and nodes that placement needs, compiled once from the Kubernetes
//! objects: quantities parsed, selectors parsed, defaults applied.

use std::collections::BTreeMap;

use berth_core::quantity;
use berth_core::selector::{Op, Requirement, Selector, SelectorError};
use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorTerm, Pod, PodAffinityTerm, ResourceRequirements,
};

/// Amounts of the resources a node offers and pods request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: u64,
    /// Bytes.
    pub memory: u64,
    /// Bytes.
    pub ephemeral: u64,
    /// Pod slots.
    pub pods: u64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu = self.cpu.saturating_sub(o.cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral = self.ephemeral.saturating_sub(o.ephemeral);
        self.pods = self.pods.saturating_sub(o.pods);
    }

    fn max(&mut self, o: &Resources) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral = self.ephemeral.max(o.ephemeral);
    }
}

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    fn parse(s: &str) -> Option<Effect> {
        match s {
            "NoSchedule" => Some(Effect::NoSchedule),
            "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
            "NoExecute" => Some(Effect::NoExecute),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Empty with `exists`: tolerates every taint.
    pub key: String,
    /// Operator `Exists` (any value) rather than `Equal`.
    pub exists: bool,
    pub value: String,
    /// `None`: every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != t.effect) {
            return false;
        }
        if self.key.is_empty() {
            return self.exists;
        }
        self.key == t.key && (self.exists || self.value == t.value)
    }
}

/// A host port a container binds; two conflict when protocol and port match and the
/// addresses overlap (`0.0.0.0` overlaps everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// One node selector term: label requirements and `metadata.name` requirements, all of which
/// must hold. A term with neither matches no node, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeTerm {
    pub labels: Vec<Requirement>,
    pub names: Vec<Requirement>,
}

impl NodeTerm {
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.labels.is_empty() && self.names.is_empty() {
            return false;
        }
        self.labels
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self.names.iter().all(|r| r.matches(Some(name)))
    }
}

/// The namespaces a pod affinity term looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespaces {
    pub listed: Vec<String>,
    /// `namespaceSelector`; an empty selector means every namespace.
    pub selector: Option<Selector>,
}

impl Namespaces {
    pub fn covers(&self, ns: &str, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.listed.iter().any(|n| n == ns) {
            return true;
        }
        match &self.selector {
            Some(s) if s.is_empty() => true,
            Some(s) => ns_labels.is_some_and(|l| s.matches(l)),
            None => false,
        }
    }
}

/// A pod (anti-)affinity term: pods matching `selector` in `namespaces`, counted per value of
/// the nodes' `topology_key` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodTerm {
    pub selector: Selector,
    pub namespaces: Namespaces,
    pub topology_key: String,
}

impl PodTerm {
    pub fn matches(&self, pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        self.namespaces.covers(&pod.namespace, ns_labels) && self.selector.matches(&pod.labels)
    }
}

/// A topology spread constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    pub max_skew: u32,
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    pub selector: Selector,
    pub min_domains: u32,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes the pod may go to count.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default `Ignore`): only nodes whose taints it tolerates count.
    pub honor_taints: bool,
}

/// What placement needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// Requests as resource fit counts them (pods: 1).
    pub requests: Resources,
    /// Requests with Kubernetes' non-zero defaults (100m, 200Mi) for scoring.
    pub score_requests: Resources,
    pub node_name: Option<String>,
    /// `nodeSelector` as requirements.
    pub node_selector: Vec<Requirement>,
    /// Required node affinity: any one term must match. `None`: no constraint.
    pub node_affinity: Option<Vec<NodeTerm>>,
    pub preferred_nodes: Vec<(i64, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<PodTerm>,
    pub anti_affinity: Vec<PodTerm>,
    pub preferred_affinity: Vec<(i64, PodTerm)>,
    pub preferred_anti_affinity: Vec<(i64, PodTerm)>,
    pub spread: Vec<Spread>,
    pub host_ports: Vec<HostPort>,
    /// The PersistentVolumeClaims (in its namespace) the pod mounts: it goes where their
    /// volumes are (see [`PodInfo::restrict_to`]).
    pub claims: Vec<String>,
}

/// A pod spec the scheduler cannot read (the API server should have refused it).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field} is not a valid label selector")]
    Selector {
        field: String,
        #[source]
        source: SelectorError,
    },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
}

const DEFAULT_CPU: u64 = 100;
const DEFAULT_MEMORY: u64 = 200 * 1024 * 1024;

fn container_requests(r: Option<&ResourceRequirements>) -> (Resources, Resources) {
    let get = |name: &str| {
        let r = r?;
        r.requests
            .as_ref()
            .and_then(|m| m.get(name))
            .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
            .map(|q| q.0.clone())
    };
    let cpu = get("cpu")
        .and_then(|q| quantity::cpu_millis(&q))
        .unwrap_or(0);
    let memory = get("memory").and_then(|q| quantity::bytes(&q)).unwrap_or(0);
    let ephemeral = get("ephemeral-storage")
        .and_then(|q| quantity::bytes(&q))
        .unwrap_or(0);
    let fit = Resources {
        cpu,
        memory,
        ephemeral,
        pods: 0,
    };
    let score = Resources {
        cpu: if cpu == 0 { DEFAULT_CPU } else { cpu },
        memory: if memory == 0 { DEFAULT_MEMORY } else { memory },
        ephemeral,
        pods: 0,
    };
    (fit, score)
}

/// A pod's effective request as Kubernetes computes it: the larger of the sum of its
/// containers (plus restartable init "sidecars") and each init container in turn (plus the
/// sidecars started before it), plus the pod overhead.
fn pod_requests(pod: &Pod, score: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let pick = |c: &Container| {
        let (fit, sc) = container_requests(c.resources.as_ref());
        if score {
            sc
        } else {
            fit
        }
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&pick(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = pick(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sum.add(&r);
        } else {
            let mut at = sidecars;
            at.add(&r);
            init_max.max(&at);
        }
    }
    sum.max(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        let q = |n: &str| overhead.get(n).map(|q| q.0.as_str());
        sum.cpu += q("cpu").and_then(quantity::cpu_millis).unwrap_or(0);
        sum.memory += q("memory").and_then(quantity::bytes).unwrap_or(0);
    }
    sum.pods = 1;
    sum
}

fn selector(
    field: &str,
    s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Selector, SpecError> {
    match s {
        // A missing label selector in a pod affinity term or spread constraint matches nothing.
        None => Ok(Selector {
            requirements: vec![Requirement {
                key: "berth.dev/matches-nothing".into(),
                op: Op::In(vec![]),
            }],
        }),
        Some(s) => Selector::from_label_selector(s).map_err(|source| SpecError::Selector {
            field: field.to_string(),
            source,
        }),
    }
}

/// The nodes a PersistentVolume can be reached from: its required node affinity's terms
/// (`None`: any node).
pub fn volume_terms(
    pv: &k8s_openapi::api::core::v1::PersistentVolume,
) -> Result<Option<Vec<NodeTerm>>, SpecError> {
    let Some(req) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return Ok(None);
    };
    req.node_selector_terms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            node_term(
                &format!("spec.nodeAffinity.required.nodeSelectorTerms[{i}]"),
                t,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn node_term(field: &str, t: &NodeSelectorTerm) -> Result<NodeTerm, SpecError> {
    let req = |f: String, e: &k8s_openapi::api::core::v1::NodeSelectorRequirement| {
        let values = e.values.clone().unwrap_or_default();
        let int = |f: &str| -> Result<i64, SpecError> {
            match values.as_slice() {
                [v] => v.parse().map_err(|_| SpecError::Invalid {
                    field: f.to_string(),
                    why: format!("{v:?} is not an integer, as {} needs", e.operator),
                }),
                _ => Err(SpecError::Invalid {
                    field: f.to_string(),
                    why: format!("{} needs exactly one value", e.operator),
                }),
            }
        };
        let op = match e.operator.as_str() {
            "In" => Op::In(values.clone()),
            "NotIn" => Op::NotIn(values.clone()),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" => Op::Gt(int(&f)?),
            "Lt" => Op::Lt(int(&f)?),
            other => {
                return Err(SpecError::Invalid {
                    field: f,
                    why: format!(
                        "unknown operator {other:?} (use In, NotIn, Exists, DoesNotExist, Gt or Lt)"
                    ),
                })
            }
        };
        Ok(Requirement {
            key: e.key.clone(),
            op,
        })
    };
    let mut out = NodeTerm::default();
    for (i, e) in t.match_expressions.iter().flatten().enumerate() {
        out.labels
            .push(req(format!("{field}.matchExpressions[{i}]"), e)?);
    }
    for (i, e) in t.match_fields.iter().flatten().enumerate() {
        let f = format!("{field}.matchFields[{i}]");
        if e.key != "metadata.name" {
            return Err(SpecError::Invalid {
                field: f,
                why: format!("unsupported field {:?} (only metadata.name)", e.key),
            });
        }
        out.names.push(req(f, e)?);
    }
    Ok(out)
}

fn pod_term(field: &str, own_ns: &str, t: &PodAffinityTerm) -> Result<PodTerm, SpecError> {
    let mut listed = t.namespaces.clone().unwrap_or_default();
    let ns_selector = match &t.namespace_selector {
        Some(s) => {
            Some(
                Selector::from_label_selector(s).map_err(|source| SpecError::Selector {
                    field: format!("{field}.namespaceSelector"),
                    source,
                })?,
            )
        }
        None => None,
    };
    if listed.is_empty() && ns_selector.is_none() {
        listed.push(own_ns.to_string());
    }
    if t.topology_key.is_empty() {
        return Err(SpecError::Invalid {
            field: format!("{field}.topologyKey"),
            why: "must not be empty".into(),
        });
    }
    Ok(PodTerm {
        selector: selector(&format!("{field}.labelSelector"), t.label_selector.as_ref())?,
        namespaces: Namespaces {
            listed,
            selector: ns_selector,
        },
        topology_key: t.topology_key.clone(),
    })
}

impl PodInfo {
    /// Compile a pod for placement.
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, SpecError> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let mut info = PodInfo {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            requests: pod_requests(pod, false),
            score_requests: pod_requests(pod, true),
            namespace: namespace.clone(),
            ..Default::default()
        };
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(info);
        };
        info.node_name = spec.node_name.clone().filter(|n| !n.is_empty());
        info.claims = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        info.node_selector = spec
            .node_selector
            .iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Eq(v.clone()),
            })
            .collect();
        for t in spec.tolerations.iter().flatten() {
            let effect = match t.effect.as_deref() {
                None | Some("") => None,
                Some(e) => Some(Effect::parse(e).ok_or_else(|| SpecError::Invalid {
                    field: "spec.tolerations.effect".into(),
                    why: format!("unknown effect {e:?}"),
                })?),
            };
            info.tolerations.push(Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect,
            });
        }
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(port) = p.host_port.filter(|p| *p > 0) {
                    info.host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        port,
                    });
                }
            }
        }
        let aff = spec.affinity.as_ref();
        if let Some(na) = aff.and_then(|a| a.node_affinity.as_ref()) {
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let mut terms = Vec::new();
                for (i, t) in req.node_selector_terms.iter().enumerate() {
                    terms.push(node_term(
                        &format!("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]"),
                        t,
                    )?);
                }
                info.node_affinity = Some(terms);
            }
            for (i, p) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
            {
                let f = format!("spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference");
                info.preferred_nodes
                    .push((p.weight as i64, node_term(&f, &p.preference)?));
            }
        }
        for (anti, group) in [
            (
                false,
                aff.and_then(|a| a.pod_affinity.as_ref()).map(|p| {
                    (
                        &p.required_during_scheduling_ignored_during_execution,
                        &p.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
            (
                true,
                aff.and_then(|a| a.pod_anti_affinity.as_ref()).map(|p| {
                    (
                        &p.required_during_scheduling_ignored_during_execution,
                        &p.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
        ] {
            let Some((required, preferred)) = group else {
                continue;
            };
            let base = if anti {
                "spec.affinity.podAntiAffinity"
            } else {
                "spec.affinity.podAffinity"
            };
            for (i, t) in required.iter().flatten().enumerate() {
                let f = format!("{base}.requiredDuringSchedulingIgnoredDuringExecution[{i}]");
                let term = pod_term(&f, &namespace, t)?;
                if anti {
                    info.anti_affinity.push(term)
                } else {
                    info.affinity.push(term)
                }
            }
            for (i, w) in preferred.iter().flatten().enumerate() {
                let f = format!(
                    "{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}].podAffinityTerm"
                );
                let term = (
                    w.weight as i64,
                    pod_term(&f, &namespace, &w.pod_affinity_term)?,
                );
                if anti {
                    info.preferred_anti_affinity.push(term)
                } else {
                    info.preferred_affinity.push(term)
                }
            }
        }
        for (i, c) in spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .enumerate()
        {
            let f = format!("spec.topologySpreadConstraints[{i}]");
            let mut sel = selector(&format!("{f}.labelSelector"), c.label_selector.as_ref())?;
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = info.labels.get(key) {
                    sel.requirements.push(Requirement {
                        key: key.clone(),
                        op: Op::Eq(v.clone()),
                    });
                }
            }
            if c.max_skew < 1 {
                return Err(SpecError::Invalid {
                    field: format!("{f}.maxSkew"),
                    why: "must be at least 1".into(),
                });
            }
            info.spread.push(Spread {
                max_skew: c.max_skew as u32,
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                selector: sel,
                min_domains: c.min_domains.unwrap_or(1).max(1) as u32,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            });
        }
        Ok(info)
    }

    /// Does this pod's `nodeSelector` and required node affinity admit the node?
    pub fn admits_node(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self
                .node_affinity
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(name, labels)))
    }

    /// Narrow the required node affinity to the nodes a volume is reachable from (a
    /// PersistentVolume's node affinity): each node must also satisfy one of `volume`'s terms.
    pub fn restrict_to(&mut self, volume: &[NodeTerm]) {
        self.node_affinity = Some(match self.node_affinity.take() {
            None => volume.to_vec(),
            Some(mine) => mine
                .iter()
                .flat_map(|a| {
                    volume.iter().map(move |v| NodeTerm {
                        labels: [a.labels.clone(), v.labels.clone()].concat(),
                        names: [a.names.clone(), v.names.clone()].concat(),
                    })
                })
                .collect(),
        });
    }

    /// The first of `taints` with a scheduling effect (`NoSchedule`, `NoExecute`) that the
    /// pod does not tolerate.
    pub fn untolerated<'a>(&self, taints: &'a [Taint]) -> Option<&'a Taint> {
        taints.iter().find(|t| {
            t.effect != Effect::PreferNoSchedule
                && !self.tolerations.iter().any(|tol| tol.tolerates(t))
        })
    }
}

/// The label that marks a virtual node, one the burst rule keeps for last.
pub const VIRTUAL_LABEL: (&str, &str) = ("type", "virtual-kubelet");

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The node's taints, plus `node.kubernetes.io/not-ready` and the pressure taints where
    /// its conditions imply them (`unschedulable` is its own filter).
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub unschedulable: bool,
    pub is_virtual: bool,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let mut taints: Vec<Taint> = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some(Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: Effect::parse(&t.effect)?,
                })
            })
            .collect();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        // Pressure keeps new pods away, as the taints Kubernetes' node controller adds do.
        for (cond, key) in [
            ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
            ("DiskPressure", "node.kubernetes.io/disk-pressure"),
            ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        ] {
            let under = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == cond && c.status == "True");
            if under && !taints.iter().any(|t| t.key == key) {
                taints.push(Taint {
                    key: key.into(),
                    value: String::new(),
                    effect: Effect::NoSchedule,
                });
            }
        }
        if !ready
            && !taints
                .iter()
                .any(|t| t.key.starts_with("node.kubernetes.io/not-ready"))
        {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                value: String::new(),
                effect: Effect::NoSchedule,
            });
        }
        let res = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .cloned()
            .unwrap_or_default();
        let q = |n: &str| res.get(n).map(|q| q.0.as_str());
        let allocatable = Resources {
            cpu: q("cpu").and_then(quantity::cpu_millis).unwrap_or(0),
            memory: q("memory").and_then(quantity::bytes).unwrap_or(0),
            ephemeral: q("ephemeral-storage")
                .and_then(quantity::bytes)
                .unwrap_or(0),
            pods: q("pods").and_then(|p| p.parse().ok()).unwrap_or(0),
        };
        let is_virtual = labels.get(VIRTUAL_LABEL.0).map(String::as_str) == Some(VIRTUAL_LABEL.1);
        NodeInfo {
            name,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            labels,
            taints,
            allocatable,
            is_virtual,
        }
    }
}
