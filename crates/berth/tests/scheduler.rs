//! The scheduler in a live `berth up`, against fake nodes registered through the API (a node
//! needs no agent to be scheduled onto), observed through kubectl.

mod common;

use common::{eventually, Berth};

fn node_yaml(name: &str, zone: &str, cpu: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    kubernetes.io/hostname: {name}
    topology.kubernetes.io/zone: {zone}
status:
  capacity: {{cpu: "{cpu}", memory: 8Gi, pods: "110"}}
  allocatable: {{cpu: "{cpu}", memory: 8Gi, pods: "110"}}
  conditions:
  - {{type: Ready, status: "True"}}
"#
    )
}

fn pod_yaml(name: &str, labels: &str, cpu: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  containers:
  - name: c
    image: busybox
    resources: {{requests: {{cpu: "{cpu}"}}}}
{extra}"#
    )
}

async fn node_of(b: &Berth, pod: &str) -> String {
    eventually(20, &format!("{pod} to be scheduled"), || async {
        let out = b.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
        (!out.is_empty()).then_some(out)
    })
    .await
}

#[tokio::test]
async fn pods_land_where_kubernetes_would_put_them() {
    let b = Berth::up(&["--runtime", "none"]);
    let nodes = [
        node_yaml("na1", "a", "2"),
        node_yaml("na2", "a", "2"),
        node_yaml("nb1", "b", "2"),
    ]
    .concat();
    b.kubectl_stdin(&["create", "-f", "-"], &nodes);
    b.kubectl_ok(&["taint", "node", "na2", "dedicated=db:NoSchedule"]);

    let anti = r#"  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: web}}
        topologyKey: kubernetes.io/hostname
  tolerations: [{key: dedicated, operator: Exists}]
"#;
    let pods = [
        pod_yaml(
            "zoned",
            "app: z",
            "100m",
            "  nodeSelector: {topology.kubernetes.io/zone: b}\n",
        ),
        pod_yaml("web-0", "app: web", "100m", anti),
        pod_yaml("web-1", "app: web", "100m", anti),
        pod_yaml("web-2", "app: web", "100m", anti),
        pod_yaml("avoids-taint", "app: t", "100m", ""),
    ]
    .concat();
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pods);

    assert_eq!(node_of(&b, "zoned").await, "nb1");
    let mut hosts = Vec::new();
    for p in ["web-0", "web-1", "web-2"] {
        hosts.push(node_of(&b, p).await);
    }
    hosts.sort();
    assert_eq!(hosts, ["na1", "na2", "nb1"], "one web pod per host");
    assert_ne!(node_of(&b, "avoids-taint").await, "na2");

    // PodScheduled is set by the binding.
    let cond = b.kubectl_ok(&[
        "get",
        "pod",
        "zoned",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(cond, "True");
    let events = b.kubectl_ok(&["get", "events", "--field-selector", "reason=Scheduled"]);
    assert!(
        events.contains("Successfully assigned default/zoned to nb1"),
        "{events}"
    );
}

#[tokio::test]
async fn an_unschedulable_pod_says_why_and_schedules_when_room_appears() {
    let b = Berth::up(&["--runtime", "none"]);
    let nodes = [
        node_yaml("small-1", "a", "1"),
        node_yaml("small-2", "a", "1"),
    ]
    .concat();
    b.kubectl_stdin(&["create", "-f", "-"], &nodes);
    b.kubectl_ok(&["taint", "node", "small-2", "gpu=yes:NoSchedule"]);
    b.kubectl_stdin_ok(
        &["create", "-f", "-"],
        &pod_yaml("big", "app: big", "4", ""),
    );

    let want =
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {gpu: yes}.";
    let described = eventually(20, "the FailedScheduling reason in describe", || async {
        let d = b.kubectl_ok(&["describe", "pod", "big"]);
        (d.contains("FailedScheduling") && d.contains(want)).then_some(d)
    })
    .await;
    assert!(described.contains("PodScheduled"), "{described}");
    let reason = b.kubectl_ok(&[
        "get",
        "pod",
        "big",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(reason, "Unschedulable");

    b.kubectl_stdin(&["create", "-f", "-"], &node_yaml("roomy", "b", "8"));
    assert_eq!(node_of(&b, "big").await, "roomy");
}
