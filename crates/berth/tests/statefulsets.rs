//! StatefulSets on `berth up` with the Docker runtime: stable names, a volume each from the
//! built-in local-path class, found again by the same pod after the set is deleted and made
//! again.

mod common;

use common::{eventually, Berth, BusyboxImage, Node};

fn statefulset(image: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 3
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: {image}
        command: ["/bin/sh", "-c", "[ -f /data/id ] || hostname > /data/id; exec sleep 3600"]
        volumeMounts: [{{name: data, mountPath: /data}}]
        readinessProbe: {{exec: {{command: ["cat", "/data/id"]}}, periodSeconds: 1}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

/// Each pod's name, its node, and the id its volume holds.
fn ids(b: &Berth) -> Vec<(String, String)> {
    let names = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut out: Vec<(String, String)> = names
        .split_whitespace()
        .map(|p| {
            let id = b.kubectl_ok(&["exec", p, "--", "cat", "/data/id"]);
            (p.to_string(), id.trim().to_string())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn each_pod_of_a_statefulset_finds_its_own_data_again() {
    let image = BusyboxImage::build();
    let node = Node::new("sts");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node.name]);
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &statefulset(&image.tag));
    b.kubectl_ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    let first = ids(&b);
    let want: Vec<(String, String)> = (0..3)
        .map(|i| (format!("db-{i}"), format!("db-{i}")))
        .collect();
    assert_eq!(first, want, "each pod wrote its own name");
    // Made in order: db-0 was created before db-1, db-1 before db-2.
    let created = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=db",
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(created, "db-0 db-1 db-2");
    let claims = b.kubectl_ok(&[
        "get",
        "pvc",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
    ]);
    assert_eq!(
        claims.trim(),
        "data-db-0=Bound data-db-1=Bound data-db-2=Bound"
    );

    // The set goes (its claims stay), comes back, and each pod reads what it wrote.
    b.kubectl_ok(&["delete", "sts", "db", "--wait=true"]);
    eventually(60, "the pods to be gone", || async {
        let left = b.kubectl_ok(&["get", "pods", "-l", "app=db", "-o", "name"]);
        left.is_empty().then_some(())
    })
    .await;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &statefulset(&image.tag));
    b.kubectl_ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    assert_eq!(ids(&b), want, "each pod found its own volume again");

    // Scale down goes from the top; the claim stays for when it comes back.
    b.kubectl_ok(&["scale", "sts", "db", "--replicas=2"]);
    eventually(60, "db-2 to go", || async {
        let names = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        (names == "db-0 db-1").then_some(())
    })
    .await;
    b.kubectl_ok(&["get", "pvc", "data-db-2"]);
    let history = b.kubectl_ok(&["rollout", "history", "sts/db"]);
    assert!(
        history.lines().any(|l| l.trim_start().starts_with('1')),
        "{history}"
    );

    // A selector that does not match the template names the field.
    let bad = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"bad"},
        "spec":{"selector":{"matchLabels":{"app":"other"}},"serviceName":"db",
        "template":{"metadata":{"labels":{"app":"db"}},
        "spec":{"containers":[{"name":"c","image":"x"}]}}}}"#;
    let out = b.kubectl_stdin(&["apply", "-f", "-"], bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mismatched selector was accepted");
    assert!(
        err.contains("spec.template.metadata.labels: Invalid value")
            && err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    // The claims go, their volumes go (reclaim policy Delete), and the agent removes the
    // volumes' directories.
    let paths = b.kubectl_ok(&[
        "get",
        "pv",
        "-o",
        "jsonpath={range .items[*]}{.spec.hostPath.path} {end}",
    ]);
    let paths: Vec<String> = paths.split_whitespace().map(String::from).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(
        paths.iter().all(|p| std::path::Path::new(p).is_dir()),
        "{paths:?}"
    );
    b.kubectl_ok(&["delete", "sts", "db", "--wait=true"]);
    b.kubectl_ok(&["delete", "pvc", "-l", "app=db"]);
    eventually(60, "the volumes and their directories to go", || async {
        let left = b.kubectl_ok(&["get", "pv", "-o", "name"]);
        let gone = paths.iter().all(|p| !std::path::Path::new(p).exists());
        (left.is_empty() && gone).then_some(())
    })
    .await;
}
