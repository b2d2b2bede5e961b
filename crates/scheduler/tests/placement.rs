//! Placement semantics through the in-process harness: each constraint kube-scheduler knows,
//! compiled from real Pod and Node objects.

use std::time::{Duration, Instant};

use berth_scheduler::harness::Harness;
use berth_scheduler::{NodeInfo, PodInfo, Profile, Scoring};
use serde_json::{json, Value};

fn node(name: &str, cpu: &str, labels: Value, spec: Value) -> NodeInfo {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let n = json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110", "ephemeral-storage": "10Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    NodeInfo::from_node(&serde_json::from_value(n).unwrap())
}

fn pod(name: &str, labels: Value, spec: Value) -> PodInfo {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "spec": spec,
    });
    PodInfo::from_pod(&serde_json::from_value(p).unwrap()).unwrap()
}

fn cpu(req: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": req}}}]})
}

fn harness(nodes: Vec<NodeInfo>) -> Harness {
    let mut h = Harness::new(Profile::default());
    for n in nodes {
        h.add_node(n);
    }
    h
}

fn three() -> Vec<NodeInfo> {
    vec![
        node("n1", "2", json!({"zone": "a"}), json!({})),
        node("n2", "2", json!({"zone": "a"}), json!({})),
        node("n3", "2", json!({"zone": "b"}), json!({})),
    ]
}

#[test]
fn resource_fit_spreads_by_default_and_packs_when_asked() {
    let now = Instant::now();
    let mut h = harness(three());
    h.place(pod("busy", json!({}), cpu("1500m")), "n1");
    h.place(pod("half", json!({}), cpu("1")), "n2");
    h.submit(pod("p", json!({}), cpu("1")));
    h.submit(pod("big", json!({}), cpu("3")));
    h.run(now);
    assert_eq!(h.node_of("p"), Some("n3"));
    assert_eq!(
        h.why("big").unwrap(),
        "0/3 nodes are available: 3 Insufficient cpu."
    );

    let mut packed = Harness::new(Profile {
        scoring: Scoring::MostAllocated,
        ..Default::default()
    });
    for n in three() {
        packed.add_node(n);
    }
    packed.place(pod("half", json!({}), cpu("1")), "n2");
    packed.submit(pod("p", json!({}), cpu("500m")));
    packed.run(now);
    assert_eq!(packed.node_of("p"), Some("n2"));
}

#[test]
fn init_containers_count_as_kubernetes_counts_them() {
    let mut h = harness(vec![node("n1", "2", json!({}), json!({}))]);
    // max(sum(containers) = 1, largest init = 3) = 3 cpu: does not fit 2.
    h.submit(pod(
        "p",
        json!({}),
        json!({
            "initContainers": [{"name": "i", "image": "busybox", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}],
        }),
    ));
    h.run(Instant::now());
    assert_eq!(
        h.why("p").unwrap(),
        "0/1 nodes are available: 1 Insufficient cpu."
    );
}

#[test]
fn node_selector_and_every_affinity_operator() {
    let nodes = vec![
        node("small", "2", json!({"disk": "hdd", "gen": "3"}), json!({})),
        node("fast", "2", json!({"disk": "ssd", "gen": "5"}), json!({})),
        node("plain", "2", json!({"gen": "7"}), json!({})),
    ];
    let cases = [
        (json!({"nodeSelector": {"disk": "ssd"}}), Some("fast")),
        (affinity("disk", "In", &["hdd"]), Some("small")),
        (affinity("disk", "Exists", &[]), None), // two fit; checked below
        (affinity("disk", "DoesNotExist", &[]), Some("plain")),
        (affinity("gen", "Gt", &["6"]), Some("plain")),
        (affinity("gen", "Lt", &["4"]), Some("small")),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let mut h = harness(nodes.clone());
        h.submit(pod(&format!("p{i}"), json!({}), spec));
        h.run(Instant::now());
        let got = h.node_of(&format!("p{i}"));
        match want {
            Some(w) => assert_eq!(got, Some(w), "case {i}"),
            None => assert!(matches!(got, Some("small" | "fast")), "case {i}: {got:?}"),
        }
    }
    // NotIn hdd and ssd leaves plain; a selector nothing matches says so.
    let mut h = harness(nodes);
    h.submit(pod(
        "p",
        json!({}),
        affinity("disk", "NotIn", &["hdd", "ssd"]),
    ));
    h.submit(pod(
        "q",
        json!({}),
        json!({"nodeSelector": {"disk": "nvme"}}),
    ));
    h.run(Instant::now());
    assert_eq!(h.node_of("p"), Some("plain"));
    assert_eq!(
        h.why("q").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    );
}

fn affinity(key: &str, op: &str, values: &[&str]) -> Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]
    }}}})
}

#[test]
fn taints_cordons_and_readiness() {
    let tainted = |name: &str, effect: &str| {
        node(
            name,
            "2",
            json!({}),
            json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": effect}]}),
        )
    };
    let mut cordoned = node("cordoned", "2", json!({}), json!({"unschedulable": true}));
    cordoned.unschedulable = true;
    let mut h = harness(vec![tainted("gpu", "NoSchedule"), cordoned]);
    h.submit(pod("p", json!({}), json!({})));
    h.submit(pod(
        "tolerant",
        json!({}),
        json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    ));
    h.run(Instant::now());
    assert_eq!(
        h.why("p").unwrap(),
        "0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."
    );
    assert_eq!(h.node_of("tolerant"), Some("gpu"));

    // PreferNoSchedule only scores lower.
    let mut h = harness(vec![
        tainted("meh", "PreferNoSchedule"),
        node("ok", "2", json!({}), json!({})),
    ]);
    h.submit(pod("p", json!({}), json!({})));
    h.run(Instant::now());
    assert_eq!(h.node_of("p"), Some("ok"));

    // A node under memory pressure keeps new pods away.
    let n = json!({"metadata": {"name": "full"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"},
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "True"}]}});
    let mut h = harness(vec![NodeInfo::from_node(
        &serde_json::from_value(n).unwrap(),
    )]);
    h.submit(pod("p", json!({}), json!({})));
    h.run(Instant::now());
    assert_eq!(
        h.why("p").unwrap(),
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/memory-pressure: }."
    );

    // A node that is not Ready carries the not-ready taint.
    let n = json!({"metadata": {"name": "down"}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"},
        "conditions": [{"type": "Ready", "status": "Unknown"}]}});
    let mut h = harness(vec![NodeInfo::from_node(
        &serde_json::from_value(n).unwrap(),
    )]);
    h.submit(pod("p", json!({}), json!({})));
    h.run(Instant::now());
    assert_eq!(
        h.why("p").unwrap(),
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
    );
}

fn pod_term(kind: &str, app: &str, key: &str) -> Value {
    json!({"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}
    ]}}})
}

#[test]
fn pod_affinity_follows_and_the_first_of_a_group_goes_anywhere() {
    let mut h = harness(three());
    h.place(pod("db", json!({"app": "db"}), json!({})), "n3");
    h.submit(pod(
        "web",
        json!({"app": "web"}),
        pod_term("podAffinity", "db", "zone"),
    ));
    // Nothing matches app=cache yet, but the pod matches its own term.
    h.submit(pod(
        "cache",
        json!({"app": "cache"}),
        pod_term("podAffinity", "cache", "zone"),
    ));
    h.submit(pod(
        "lost",
        json!({"app": "x"}),
        pod_term("podAffinity", "nothing", "zone"),
    ));
    h.run(Instant::now());
    assert_eq!(h.node_of("web"), Some("n3"));
    assert!(h.node_of("cache").is_some());
    assert_eq!(
        h.why("lost").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
}

#[test]
fn anti_affinity_puts_replicas_on_different_hosts_both_ways() {
    let mut h = harness(three());
    for i in 0..4 {
        h.submit(pod(
            &format!("r{i}"),
            json!({"app": "web"}),
            pod_term("podAntiAffinity", "web", "kubernetes.io/hostname"),
        ));
    }
    h.run(Instant::now());
    let mut hosts: Vec<&str> = (0..3)
        .map(|i| h.node_of(&format!("r{i}")).unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"]);
    assert_eq!(
        h.why("r3").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // A pod without terms of its own is kept away by the existing pods' terms.
    h.submit(pod("plain", json!({"app": "web"}), json!({})));
    h.run(Instant::now());
    assert_eq!(
        h.why("plain").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
    );
}

#[test]
fn topology_spread_with_max_skew_and_min_domains() {
    let spread = |min_domains: Option<i32>| {
        json!({"topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}, "minDomains": min_domains,
        }]})
    };
    let mut h = harness(three());
    for i in 0..4 {
        h.submit(pod(&format!("w{i}"), json!({"app": "web"}), spread(None)));
    }
    h.run(Instant::now());
    let zone_b = (0..4)
        .filter(|i| h.node_of(&format!("w{i}")) == Some("n3"))
        .count();
    assert_eq!(zone_b, 2, "zones a and b hold 2 each");

    // minDomains 3 with only 2 zones: the global minimum counts as 0, so each zone takes one.
    let mut h = harness(three());
    for i in 0..3 {
        h.submit(pod(
            &format!("w{i}"),
            json!({"app": "web"}),
            spread(Some(3)),
        ));
    }
    h.run(Instant::now());
    assert!(h.node_of("w0").is_some() && h.node_of("w1").is_some());
    assert_eq!(
        h.why("w2").unwrap(),
        "0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints."
    );

    // A node without the key cannot take a pod with a hard constraint on it.
    let mut h = harness(vec![node("bare", "2", json!({}), json!({}))]);
    h.submit(pod("w", json!({"app": "web"}), spread(None)));
    h.run(Instant::now());
    assert_eq!(
        h.why("w").unwrap(),
        "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
    );
}

#[test]
fn host_ports_conflict() {
    let ported = json!({"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    let mut h = harness(vec![node("n1", "2", json!({}), json!({}))]);
    h.submit(pod("a", json!({}), ported.clone()));
    h.submit(pod("b", json!({}), ported));
    h.run(Instant::now());
    assert_eq!(h.node_of("a"), Some("n1"));
    assert_eq!(
        h.why("b").unwrap(),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn virtual_nodes_only_when_no_real_node_fits() {
    let virt = node(
        "vk",
        "1000",
        json!({"type": "virtual-kubelet"}),
        json!({"taints": [{"key": "virtual-kubelet.io/provider", "value": "berth", "effect": "NoSchedule"}]}),
    );
    let tolerate = |req: &str| {
        let mut spec = cpu(req);
        spec["tolerations"] = json!([{"key": "virtual-kubelet.io/provider", "operator": "Exists"}]);
        spec
    };
    let mut h = harness(vec![virt, node("real", "2", json!({}), json!({}))]);
    h.submit(pod("fits", json!({}), tolerate("1")));
    h.run(Instant::now());
    assert_eq!(h.node_of("fits"), Some("real"));
    h.submit(pod("bursts", json!({}), tolerate("2")));
    h.run(Instant::now());
    assert_eq!(h.node_of("bursts"), Some("vk"));
}

#[test]
fn preferences_steer_the_choice() {
    let mut h = harness(three());
    h.submit(pod(
        "p",
        json!({}),
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}
        ]}}}),
    ));
    h.place(pod("db", json!({"app": "db"}), json!({})), "n2");
    h.submit(pod(
        "q",
        json!({}),
        json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}}
        ]}}}),
    ));
    h.run(Instant::now());
    assert_eq!(h.node_of("p"), Some("n3"));
    assert_eq!(h.node_of("q"), Some("n2"));
}

#[test]
fn a_refused_bind_is_planned_again_on_the_changed_cluster() {
    let mut h = harness(vec![
        node("n1", "1", json!({}), json!({})),
        node("n2", "1", json!({}), json!({})),
    ]);
    h.submit(pod("p", json!({}), cpu("1")));
    // Whatever node is chosen first, another writer fills it before the bind lands.
    h.reject_next_bind(|snap| {
        let full = PodInfo::from_pod(
            &serde_json::from_value(json!({"metadata": {"name": "other", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}}))
            .unwrap(),
        )
        .unwrap();
        let first = snap.nodes()[0].info.name.clone();
        snap.place(std::sync::Arc::new(full), &first);
    });
    h.run(Instant::now());
    assert_eq!(h.plans.len(), 2);
    assert!(h.plans[0].rejected);
    assert_eq!(h.node_of("p"), Some("n2"));
}

#[test]
fn an_unschedulable_pod_is_tried_again_when_room_appears() {
    let t0 = Instant::now();
    let mut h = harness(vec![node("n1", "1", json!({}), json!({}))]);
    h.submit(pod("p", json!({}), cpu("2")));
    h.run(t0);
    assert!(h.why("p").is_some());
    // No change: no retry, however often the loop runs.
    h.run(t0 + Duration::from_secs(5));
    assert_eq!(h.plans.len(), 1);
    h.add_node(node("n2", "4", json!({}), json!({})));
    h.run(t0 + Duration::from_secs(5));
    assert_eq!(h.node_of("p"), Some("n2"));
}

#[test]
fn a_pod_goes_where_its_local_volume_is() {
    let pv: k8s_openapi::api::core::v1::PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pvc-1"},
        "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n3"]}]}]}}}}))
    .unwrap();
    let terms = berth_scheduler::model::volume_terms(&pv).unwrap().unwrap();
    let volumes = json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
        "containers": [{"name": "c", "image": "busybox"}]});
    let mut p = pod("db-0", json!({}), volumes);
    assert_eq!(p.claims, ["data"]);
    p.restrict_to(&terms);
    let mut h = harness(three());
    h.submit(p);
    h.run(Instant::now());
    assert_eq!(h.node_of("db-0"), Some("n3"));
    // Its own affinity and the volume's must both hold: zone a and n3 cannot.
    let mut q = pod("db-1", json!({}), affinity("zone", "In", &["a"]));
    q.restrict_to(&terms);
    let mut h = harness(three());
    h.submit(q);
    h.run(Instant::now());
    assert_eq!(h.node_of("db-1"), None);
}
