//! The data plane in a live `berth up`, driven by kubectl: Endpoints and EndpointSlices
//! follow the pods a Service selects.

mod common;

use common::{eventually, Berth};

fn words(s: String) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

#[tokio::test]
async fn endpoints_and_slices_follow_the_pods_a_service_selects() {
    let node = common::unique("ep");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
    );
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let pod_ips = words(b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]));
    assert_eq!(pod_ips.len(), 3);
    eventually(10, "the Endpoints to list the three pods", || async {
        let ips = words(b.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]));
        (ips == pod_ips).then_some(())
    })
    .await;
    let port = b.kubectl_ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    assert_eq!(
        port, "8080",
        "the named targetPort resolves to the container's port"
    );
    let slice = b.kubectl_ok(&[
        "get", "endpointslices", "-l", "kubernetes.io/service-name=web",
        "-o", "jsonpath={.items[*].endpoints[*].addresses[0]} {.items[0].ports[0].port} {.items[0].metadata.ownerReferences[0].kind}",
    ]);
    let mut got = words(slice);
    got.sort();
    let mut want = pod_ips.clone();
    want.extend(["8080".to_string(), "Service".to_string()]);
    want.sort();
    assert_eq!(got, want);

    // Scaled down, the Endpoints shrink; the remaining pod is still listed ready.
    b.kubectl_ok(&["scale", "deploy/web", "--replicas=1"]);
    eventually(30, "one address left", || async {
        let ips = words(b.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]));
        let slice = words(b.kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ]));
        (ips.len() == 1 && slice == ips).then_some(())
    })
    .await;

    // A Service without a selector keeps the Endpoints its owner writes.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: outside}
subsets: [{addresses: [{ip: 192.0.2.7}], ports: [{port: 5432}]}]
"#,
    );
    // Deleting the Service takes its slices and Endpoints.
    b.kubectl_ok(&["delete", "service", "web"]);
    eventually(
        10,
        "the slices and Endpoints of a deleted Service to go",
        || async {
            let left = b.kubectl_ok(&[
                "get",
                "endpointslices,endpoints",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ]);
            let ep = b.kubectl(&["get", "endpoints", "web"]);
            (left.trim().is_empty() && !ep.status.success()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let kept = b.kubectl_ok(&[
        "get",
        "endpoints",
        "outside",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    assert_eq!(kept, "192.0.2.7");
}
