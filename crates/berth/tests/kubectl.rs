//! kubectl v1.32, unchanged, against `berth up`.

mod common;

use common::Berth;

const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {app: app}
spec:
  replicas: 2
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  selector: {app: app}
  ports:
  - port: 80
    targetPort: 80
"#;

fn jsonpath(b: &Berth, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let arg = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &arg]);
    b.kubectl_ok(&args)
}

#[test]
fn version_and_api_resources() {
    let b = Berth::up(&[]);
    let out = b.kubectl_ok(&["version"]);
    assert!(out.contains("Server Version: v1.32"), "{out}");
    let out = b.kubectl_ok(&["api-resources"]);
    for needle in [
        "pods",
        "po",
        "deployments",
        "deploy",
        "apps/v1",
        "leases",
        "coordination.k8s.io/v1",
        "horizontalpodautoscalers",
        "autoscaling/v2",
        "endpointslices",
        "discovery.k8s.io/v1",
        "events",
        "secrets",
        "namespaces",
    ] {
        assert!(out.contains(needle), "api-resources lacks {needle}:\n{out}");
    }
    let ns = b.kubectl_ok(&["get", "namespaces"]);
    assert!(ns.starts_with("NAME"), "{ns}");
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(ns.contains("Active"), "{ns}");
}

#[test]
fn client_side_apply_patches_and_bumps_generation_then_server_side_apply() {
    let b = Berth::up(&[]);
    b.kubectl_ok(&["create", "namespace", "shop"]);
    let out = b.kubectl_stdin(&["apply", "-n", "shop", "-f", "-"], APP);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("deployment.apps/app created"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "apply warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "app", "-n", "shop"],
            "{.metadata.generation}"
        ),
        "1"
    );

    // The same file again changes nothing.
    let out = b.kubectl_stdin(&["apply", "-n", "shop", "-f", "-"], APP);
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/app unchanged"));
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "app", "-n", "shop"],
            "{.metadata.generation}"
        ),
        "1"
    );

    // A changed image is a strategic-merge PATCH that bumps generation.
    let changed = APP.replace("busybox:1.36", "busybox:1.37");
    let out = b.kubectl_stdin(&["apply", "-n", "shop", "-f", "-"], &changed);
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/app configured"));
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "app", "-n", "shop"],
            "{.metadata.generation} {.spec.template.spec.containers[0].image}"
        ),
        "2 busybox:1.37"
    );
    // Defaults were applied as Kubernetes does.
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "app", "-n", "shop"],
            "{.spec.strategy.type} {.spec.template.spec.containers[0].imagePullPolicy}"
        ),
        "RollingUpdate IfNotPresent"
    );

    let ssa = APP.replace("replicas: 2", "replicas: 4");
    let out = b.kubectl_stdin(&["apply", "--server-side", "-n", "shop", "-f", "-"], &ssa);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("serverside-applied"));
    assert_eq!(
        jsonpath(&b, &["deploy", "app", "-n", "shop"], "{.spec.replicas}"),
        "4"
    );

    // Server-side apply also creates.
    let new_cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fresh\ndata:\n  k: v\n";
    b.kubectl_stdin(&["apply", "--server-side", "-n", "shop", "-f", "-"], new_cm);
    assert_eq!(
        jsonpath(&b, &["cm", "fresh", "-n", "shop"], "{.data.k}"),
        "v"
    );
}

#[test]
fn generators_create_from_protobuf() {
    let b = Berth::up(&[]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=3",
    ]);
    b.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    b.kubectl_ok(&["create", "configmap", "cfg", "--from-literal=a=b"]);
    b.kubectl_ok(&["create", "secret", "generic", "s", "--from-literal=x=y"]);
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "web"],
            "{.spec.replicas} {.spec.template.spec.containers[0].image}"
        ),
        "3 nginx:1.25"
    );
    assert_eq!(
        jsonpath(&b, &["svc", "web"], "{.spec.ports[0].targetPort}"),
        "8080"
    );
    assert_eq!(
        jsonpath(&b, &["secret", "s"], "{.type} {.data.x}"),
        "Opaque eQ=="
    );
}

#[test]
fn get_output_formats_look_like_kubernetes() {
    let b = Berth::up(&[]);
    b.kubectl_stdin(&["apply", "-f", "-"], APP);
    let table = b.kubectl_ok(&["get", "deploy"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.contains("0/2"), "{table}");
    let wide = b.kubectl_ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .contains("CONTAINERS   IMAGES         SELECTOR"),
        "{wide}"
    );
    assert!(
        wide.contains("busybox:1.36") && wide.contains("app=app"),
        "{wide}"
    );
    let svc = b.kubectl_ok(&["get", "svc", "app"]);
    let header: Vec<&str> = svc.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(
        svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("10."),
        "{svc}"
    );
    let yaml = b.kubectl_ok(&["get", "cm", "app-config", "-o", "yaml"]);
    assert!(
        yaml.contains("greeting: hello") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let json = b.kubectl_ok(&["get", "deploy", "app", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "Deployment");
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let names = b.kubectl_ok(&["get", "deploy,svc,cm", "-o", "name"]);
    for n in ["deployment.apps/app", "service/app", "configmap/app-config"] {
        assert!(names.contains(n), "{names}");
    }
    let all_ns = b.kubectl_ok(&["get", "cm", "-A"]);
    assert!(
        all_ns.lines().next().unwrap().starts_with("NAMESPACE"),
        "{all_ns}"
    );
    let labels = b.kubectl_ok(&["get", "deploy", "--show-labels"]);
    assert!(labels.contains("app=app"), "{labels}");
    let selected = b.kubectl_ok(&["get", "deploy", "-l", "app=app", "-o", "name"]);
    assert_eq!(selected.trim(), "deployment.apps/app");
    let none = b.kubectl(&["get", "deploy", "-l", "app=other"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("No resources found"));
}

#[test]
fn watch_sees_a_change_made_by_another_client() {
    let b = Berth::up(&[]);
    b.kubectl_ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    let mut watch = std::process::Command::new("kubectl")
        .env("KUBECONFIG", b.kubeconfig())
        .args([
            "--cache-dir",
            &b.dir.path().join("kube-cache-w").display().to_string(),
        ])
        .args([
            "get",
            "cm",
            "watched",
            "-w",
            "-o",
            "jsonpath={.data.a}{\"\\n\"}",
            "--request-timeout=8s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    b.kubectl_ok(&["patch", "cm", "watched", "-p", r#"{"data":{"a":"2"}}"#]);
    b.kubectl_ok(&["label", "cm", "watched", "seen=yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(lines.len() >= 2, "watch printed {lines:?}");
    assert_eq!(lines[0], "1");
    assert!(
        lines[1..].iter().any(|l| l == "2"),
        "the watch missed the patch: {lines:?}"
    );
}

#[test]
fn describe_label_annotate_scale_delete_and_events() {
    let b = Berth::up(&[]);
    b.kubectl_stdin(&["apply", "-f", "-"], APP);
    let d = b.kubectl_ok(&["describe", "deploy", "app"]);
    assert!(
        d.contains("Name:")
            && d.contains("app")
            && d.contains("Replicas:")
            && d.contains("busybox:1.36"),
        "{d}"
    );
    b.kubectl_ok(&["label", "deploy", "app", "tier=web"]);
    b.kubectl_ok(&["annotate", "deploy", "app", "owner=team-a"]);
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "app"],
            "{.metadata.labels.tier} {.metadata.annotations.owner}"
        ),
        "web team-a"
    );
    let bad = b.kubectl(&["label", "deploy", "app", "tier=also"]);
    assert!(
        !bad.status.success(),
        "relabelling without --overwrite must fail"
    );
    b.kubectl_ok(&["scale", "deploy", "app", "--replicas=5"]);
    assert_eq!(jsonpath(&b, &["deploy", "app"], "{.spec.replicas}"), "5");

    let uid = jsonpath(&b, &["deploy", "app"], "{.metadata.uid}");
    let event = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"app.1"},
        "involvedObject":{"kind":"Deployment","name":"app","namespace":"default","apiVersion":"apps/v1","uid":"UID"},
        "reason":"ScalingReplicaSet","message":"Scaled up replica set app-1 to 5","type":"Normal",
        "source":{"component":"deployment-controller"},"count":1,
        "firstTimestamp":"2026-01-01T00:00:00Z","lastTimestamp":"2026-01-01T00:00:00Z"}"#;
    b.kubectl_stdin(&["create", "-f", "-"], &event.replace("UID", &uid));
    let ev = b.kubectl_ok(&["get", "events"]);
    let header: Vec<&str> = ev.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        ev.contains("deployment/app") && ev.contains("ScalingReplicaSet"),
        "{ev}"
    );
    let d = b.kubectl_ok(&["describe", "deploy", "app"]);
    assert!(
        d.contains("Scaled up replica set app-1 to 5"),
        "describe shows the event:\n{d}"
    );

    let out = b.kubectl_ok(&["delete", "deploy", "app"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = b.kubectl(&["get", "deploy", "app"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    b.kubectl_ok(&["create", "namespace", "tmp"]);
    b.kubectl_ok(&["create", "configmap", "x", "-n", "tmp"]);
    b.kubectl_ok(&["delete", "namespace", "tmp", "--timeout=20s"]);
    let ns = b.kubectl_ok(&["get", "ns", "-o", "name"]);
    assert!(!ns.contains("namespace/tmp"), "{ns}");
    // Gone: creates in it are NotFound, even straight after (the lifecycle check's cache).
    let late = b.kubectl(&["create", "configmap", "y", "-n", "tmp"]);
    assert!(
        String::from_utf8_lossy(&late.stderr).contains(r#"namespaces "tmp" not found"#),
        "{}",
        String::from_utf8_lossy(&late.stderr)
    );
    // Terminating (held by a finalizer on something inside): creates are refused.
    b.kubectl_ok(&["create", "namespace", "closing"]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: closing, finalizers: [example.com/hold]}\n",
    );
    b.kubectl_ok(&["delete", "namespace", "closing", "--wait=false"]);
    let refused = b.kubectl(&["create", "configmap", "z", "-n", "closing"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("because it is being terminated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    b.kubectl_ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "closing",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    b.kubectl_ok(&["wait", "--for=delete", "namespace/closing", "--timeout=20s"]);
}

/// Apply `yaml` and expect kubectl to fail with stderr naming each of `needles`.
fn refused(b: &Berth, yaml: &str, needles: &[&str]) {
    let out = b.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(!out.status.success(), "kubectl accepted:\n{yaml}");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "{err}");
    }
}

#[test]
fn bad_input_gets_a_status_and_stores_nothing() {
    let b = Berth::up(&[]);
    refused(
        &b,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
        &["Invalid", "metadata.name"],
    );
    refused(
        &b,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\nbogus: 1\n",
        &["unknown field", "bogus"],
    );
    refused(
        &b,
        "apiVersion: widgets.example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        &[],
    );
    // Every namespace holds the cluster CA's ConfigMap; nothing else was stored.
    let names = b.kubectl_ok(&[
        "get",
        "cm",
        "-o",
        "name",
        "--field-selector=metadata.name!=kube-root-ca.crt",
    ]);
    assert!(names.trim().is_empty(), "nothing was stored: {names}");
}

#[tokio::test]
async fn kubectl_autoscale_speaks_autoscaling_v1_over_the_v2_object() {
    let b = Berth::up(&["--runtime", "mock"]);
    b.kubectl_ok(&["create", "deployment", "web", "--image=busybox"]);
    // kubectl 1.32 creates autoscaling/v1 HPAs, as protobuf.
    b.kubectl_ok(&[
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    let v2 = b.kubectl_ok(&[
        "get",
        "hpa",
        "web",
        "-o",
        "jsonpath={.apiVersion} {.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}",
    ]);
    assert_eq!(v2, "autoscaling/v2 cpu 50");
    let v1 = b.kubectl_ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "-o",
        "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage} {.spec.maxReplicas}",
    ]);
    assert_eq!(v1, "autoscaling/v1 50 3");
    // A v1 patch lands on the v2 object; v2-only fields survive a v1 read-modify-write.
    b.kubectl_ok(&[
        "patch",
        "hpa",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":7}}}}"#,
    ]);
    b.kubectl_ok(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#,
    ]);
    // A read-modify-write, retried as clients do when the autoscaler wrote its status in
    // between (the replace carries the resourceVersion read).
    let mut json = String::new();
    for attempt in 0.. {
        json = b.kubectl_ok(&[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "web",
            "-o",
            "json",
        ]);
        let out = b.kubectl_stdin(&["replace", "-f", "-"], &json);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Conflict") && attempt < 10,
            "kubectl replace failed: {err}"
        );
    }
    let after = b.kubectl_ok(&[
        "get",
        "hpa",
        "web",
        "-o",
        "jsonpath={.spec.metrics[0].resource.target.averageUtilization} {.spec.behavior.scaleDown.stabilizationWindowSeconds} {.metadata.annotations}",
    ]);
    assert_eq!(after, "70 7 ", "the v1 carrier annotations are not stored");
    // A carrier annotation that is not JSON is refused with its field path.
    let bad = json.replace(
        r#""autoscaling.alpha.kubernetes.io/behavior": ""#,
        r#""autoscaling.alpha.kubernetes.io/behavior": "not json, "#,
    );
    assert_ne!(bad, json, "the v1 object carries the behavior annotation");
    let out = b.kubectl_stdin(&["replace", "-f", "-"], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("metadata.annotations[autoscaling.alpha.kubernetes.io/behavior]"),
        "{err}"
    );
    // Discovery names both versions, v2 preferred.
    let versions = b.kubectl_ok(&["api-versions"]);
    assert!(
        versions.contains("autoscaling/v1") && versions.contains("autoscaling/v2"),
        "{versions}"
    );
    let resources = b.kubectl_ok(&["api-resources", "--api-group=autoscaling", "-o", "wide"]);
    assert!(resources.contains("autoscaling/v2"), "{resources}");
}

const OWNED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: owned
  labels: {app: owned, tier: web}
spec:
  replicas: 1
  selector:
    matchLabels: {app: owned}
  template:
    metadata:
      labels: {app: owned}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        env:
        - {name: KEEP, value: "1"}
        - {name: DROP, value: "2"}
"#;

#[test]
fn server_side_apply_owns_fields_removes_dropped_ones_and_names_conflicts() {
    let b = Berth::up(&[]);
    let apply = |yaml: &str, extra: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend_from_slice(extra);
        b.kubectl_stdin(&args, yaml)
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(apply(OWNED, &[]));
    // Applied again without a label and an env var: both go.
    let fewer = OWNED
        .replace(", tier: web", "")
        .replace("        - {name: DROP, value: \"2\"}\n", "");
    ok(apply(&fewer, &[]));
    assert_eq!(
        jsonpath(
            &b,
            &["deploy", "owned"],
            "{.metadata.labels} {.spec.template.spec.containers[0].env[*].name}"
        ),
        r#"{"app":"owned"} KEEP"#
    );
    let managers = || {
        jsonpath(
            &b,
            &["deploy", "owned", "--show-managed-fields"],
            r#"{range .metadata.managedFields[*]}{.manager}/{.operation};{end}"#,
        )
    };
    assert!(managers().contains("kubectl/Apply;"), "{}", managers());

    // Another manager changing replicas conflicts, naming the field and the owner.
    let more = fewer.replace("replicas: 1", "replicas: 3");
    let out = apply(&more, &["--field-manager=ci"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"conflict with "kubectl": .spec.replicas"#),
        "{err}"
    );
    // diff shows what a forced apply would change; the apply then takes the field over.
    let diff = b.kubectl_stdin(
        &[
            "diff",
            "--server-side",
            "--field-manager=ci",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &more,
    );
    assert_eq!(diff.status.code(), Some(1), "diff found a difference");
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("+  replicas: 3"),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(jsonpath(&b, &["deploy", "owned"], "{.spec.replicas}"), "1");
    ok(apply(&more, &["--field-manager=ci", "--force-conflicts"]));
    assert_eq!(jsonpath(&b, &["deploy", "owned"], "{.spec.replicas}"), "3");
    assert!(managers().contains("ci/Apply;"), "{}", managers());

    // A dry run answers with managedFields and stores nothing.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\ndata:\n  k: v\n";
    let out = b.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[0].manager}",
            "-f",
            "-",
        ],
        cm,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kubectl");
    assert!(!b.kubectl(&["get", "cm", "dry"]).status.success());
}
