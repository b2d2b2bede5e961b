//! Deployments and ReplicaSets in a live `berth up`, driven by kubectl: pods from templates,
//! rolling updates, rollback, scaling, and placement of replicas by the scheduler.

mod common;

use common::{eventually, Berth};

fn node_yaml(name: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{kubernetes.io/hostname: {name}}}
status:
  allocatable: {{cpu: "4", memory: 8Gi, pods: "110"}}
  conditions: [{{type: Ready, status: "True"}}]
"#
    )
}

#[tokio::test]
async fn a_deployment_with_required_anti_affinity_spreads_over_hosts() {
    let b = Berth::up(&["--runtime", "none"]);
    let nodes = ["h1", "h2", "h3"].map(node_yaml).concat();
    b.kubectl_stdin(&["create", "-f", "-"], &nodes);
    let deploy = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 3
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: spread}}
            topologyKey: kubernetes.io/hostname
      containers: [{name: c, image: busybox}]
"#;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], deploy);
    let hosts = eventually(30, "3 replicas on 3 hosts", || async {
        let out = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=spread",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ]);
        let mut hosts: Vec<String> = out.split_whitespace().map(String::from).collect();
        hosts.sort();
        (hosts.len() == 3).then_some(hosts)
    })
    .await;
    assert_eq!(hosts, ["h1", "h2", "h3"]);
    // The pods belong to a ReplicaSet that belongs to the Deployment.
    let owner = b.kubectl_ok(&[
        "get",
        "rs",
        "-l",
        "app=spread",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, "spread");
}

#[tokio::test]
async fn rolling_update_rollback_and_scale_with_kubectl() {
    let node = common::unique("wl");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let first_rs = b.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"]);

    b.kubectl_ok(&["set", "image", "deploy/web", "busybox=busybox:2"]);
    let status = b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    eventually(30, "old pods to go", || async {
        let images = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        (images.split_whitespace().collect::<Vec<_>>() == ["busybox:2"; 3]).then_some(())
    })
    .await;
    let history = b.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Undo returns to the first template, on the first ReplicaSet, as revision 3.
    b.kubectl_ok(&["rollout", "undo", "deploy/web"]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let image = b.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox");
    let first = first_rs.trim().trim_start_matches("replicaset.apps/");
    let rev = b.kubectl_ok(&[
        "get",
        "rs",
        first,
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(rev, "3", "the first ReplicaSet is reused");
    assert_eq!(
        b.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"])
            .lines()
            .count(),
        2
    );

    b.kubectl_ok(&["scale", "deploy/web", "--replicas=5"]);
    eventually(30, "5 available replicas", || async {
        let n = b.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]);
        (n == "5").then_some(())
    })
    .await;
    let events = b.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=ScalingReplicaSet",
    ]);
    assert!(events.contains("Scaled up replica set"), "{events}");
}

#[tokio::test]
async fn deleting_a_deployment_cascades_unless_told_to_orphan() {
    let node = common::unique("gc");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    let count = |what: &str, label: &str| {
        b.kubectl_ok(&["get", what, "-l", label, "-o", "name"])
            .lines()
            .count()
    };
    for name in ["bg", "fg", "keep"] {
        b.kubectl_ok(&[
            "create",
            "deployment",
            name,
            "--image=busybox",
            "--replicas=2",
        ]);
        b.kubectl_ok(&[
            "rollout",
            "status",
            &format!("deploy/{name}"),
            "--timeout=60s",
        ]);
    }

    b.kubectl_ok(&["delete", "deploy", "bg"]);
    b.kubectl_ok(&[
        "delete",
        "deploy",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    b.kubectl_ok(&["delete", "deploy", "keep", "--cascade=orphan"]);
    for gone in ["app=bg", "app=fg"] {
        eventually(
            30,
            &format!("the pods and replica sets of {gone} to go"),
            || async { (count("rs", gone) == 0 && count("pods", gone) == 0).then_some(()) },
        )
        .await;
    }
    eventually(30, "the foreground-deleted deployment to go", || async {
        let out = b.kubectl(&["get", "deploy", "fg"]);
        (!out.status.success()).then_some(())
    })
    .await;
    // Orphaned: the replica set and its pods stay, without an owner.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(count("rs", "app=keep"), 1);
    assert_eq!(count("pods", "app=keep"), 2);
    let owners = b.kubectl_ok(&[
        "get",
        "rs",
        "-l",
        "app=keep",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences}",
    ]);
    assert_eq!(owners, "");

    // Adoption: the same Deployment created again takes the orphaned set back, pods and all,
    // and a bare pod its selector matches is adopted and counted (so one pod goes).
    let pods_before = b.kubectl_ok(&["get", "pods", "-l", "app=keep", "-o", "name"]);
    let hash = b.kubectl_ok(&[
        "get",
        "rs",
        "-l",
        "app=keep",
        "-o",
        "jsonpath={.items[0].metadata.labels.pod-template-hash}",
    ]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "keep",
        "--image=busybox",
        "--replicas=2",
    ]);
    let deploy_uid = b.kubectl_ok(&["get", "deploy", "keep", "-o", "jsonpath={.metadata.uid}"]);
    eventually(
        30,
        "the new deployment to adopt the orphaned set",
        || async {
            let owner = b.kubectl_ok(&[
                "get",
                "rs",
                "-l",
                "app=keep",
                "-o",
                "jsonpath={.items[*].metadata.ownerReferences[0].uid}",
            ]);
            (owner == deploy_uid).then_some(())
        },
    )
    .await;
    assert_eq!(count("rs", "app=keep"), 1, "adopted, not replaced");
    assert_eq!(
        b.kubectl_ok(&["get", "pods", "-l", "app=keep", "-o", "name"]),
        pods_before,
        "the orphaned pods are kept as they were"
    );
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  labels: {{app: keep, pod-template-hash: \"{hash}\"}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n"
        ),
    );
    eventually(
        30,
        "the stray pod to be adopted and the set back at 2",
        || async {
            let owners = b.kubectl_ok(&[
                "get",
                "pods",
                "-l",
                "app=keep",
                "-o",
                "jsonpath={range .items[*]}{.metadata.ownerReferences[0].kind}{\" \"}{end}",
            ]);
            (owners.split_whitespace().collect::<Vec<_>>() == ["ReplicaSet", "ReplicaSet"])
                .then_some(())
        },
    )
    .await;
}

/// An object owned by `owners` (kind, name, uid), as YAML.
fn owned(kind: &str, name: &str, owners: &[(&str, &str, &str)], block: bool) -> String {
    let refs: Vec<String> = owners
        .iter()
        .map(|(k, n, uid)| {
            let api = if *k == "Widget" { "example.com/v1" } else { "v1" };
            format!(
                "{{apiVersion: {api}, kind: {k}, name: {n}, uid: \"{uid}\", blockOwnerDeletion: {block}}}"
            )
        })
        .collect();
    format!(
        "---\napiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  ownerReferences: [{}]\n",
        refs.join(", ")
    )
}

#[tokio::test]
async fn the_garbage_collector_follows_owner_references_of_any_kind() {
    let node = common::unique("gcany");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    let uid = |what: &str| b.kubectl_ok(&["get", what, "-o", "jsonpath={.metadata.uid}"]);
    let exists = |what: &str| b.kubectl(&["get", what]).status.success();
    for cm in ["owner", "owner2", "fg-owner", "orphan-owner"] {
        b.kubectl_ok(&["create", "configmap", cm]);
    }
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &node_yaml("gc-host"));
    let (owner, owner2, fg, orphan, host) = (
        uid("cm/owner"),
        uid("cm/owner2"),
        uid("cm/fg-owner"),
        uid("cm/orphan-owner"),
        uid("node/gc-host"),
    );
    let objects = [
        owned(
            "Secret",
            "dep-secret",
            &[("ConfigMap", "owner", &owner)],
            false,
        ),
        owned(
            "ConfigMap",
            "dep-cm",
            &[("ConfigMap", "owner", &owner)],
            false,
        ),
        owned(
            "ConfigMap",
            "shared",
            &[
                ("ConfigMap", "owner", &owner),
                ("ConfigMap", "owner2", &owner2),
            ],
            false,
        ),
        owned("Secret", "fg-dep", &[("ConfigMap", "fg-owner", &fg)], true),
        owned(
            "Secret",
            "orphan-dep",
            &[("ConfigMap", "orphan-owner", &orphan)],
            true,
        ),
        // A cluster-scoped owner of a namespaced dependent.
        owned(
            "ConfigMap",
            "node-dep",
            &[("Node", "gc-host", &host)],
            false,
        ),
        // An owner of a kind nobody serves: never collected on a guess.
        owned("ConfigMap", "widget-dep", &[("Widget", "w", "0000")], false),
    ];
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &objects.concat());

    b.kubectl_ok(&["delete", "cm", "owner"]);
    b.kubectl_ok(&["delete", "node", "gc-host"]);
    b.kubectl_ok(&[
        "delete",
        "cm",
        "fg-owner",
        "--cascade=foreground",
        "--wait=false",
    ]);
    b.kubectl_ok(&["delete", "cm", "orphan-owner", "--cascade=orphan"]);
    eventually(30, "the dependents of deleted owners to go", || async {
        let gone = [
            "secret/dep-secret",
            "cm/dep-cm",
            "secret/fg-dep",
            "cm/fg-owner",
            "cm/node-dep",
        ];
        gone.iter().all(|w| !exists(w)).then_some(())
    })
    .await;
    eventually(
        30,
        "the dangling reference to go from the shared dependent",
        || async {
            let refs = b.kubectl_ok(&[
                "get",
                "cm/shared",
                "-o",
                "jsonpath={.metadata.ownerReferences[*].name}",
            ]);
            (refs == "owner2").then_some(())
        },
    )
    .await;
    // Sweeps run every second: give them time to do what they must not.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!exists("cm/orphan-owner"), "the orphaning delete finished");
    assert!(exists("secret/orphan-dep"), "an orphaned dependent stays");
    assert_eq!(
        b.kubectl_ok(&[
            "get",
            "secret/orphan-dep",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
    assert!(
        exists("cm/widget-dep"),
        "an unresolvable owner is not taken as gone"
    );
    assert!(exists("cm/shared") && exists("cm/owner2"));
}

#[tokio::test]
async fn the_controllers_run_only_while_this_server_holds_the_leader_lease() {
    let node = common::unique("lead");
    let b = Berth::up(&[
        "--runtime",
        "mock",
        "--node-name",
        &node,
        "--leader-lease-seconds",
        "3",
    ]);
    // The Lease's holder; empty while there is no Lease yet.
    let holder = || {
        let out = b.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            "berth-control-plane",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ours = eventually(30, "berth up to take the leader Lease", || async {
        Some(holder()).filter(|h| !h.is_empty())
    })
    .await;
    // Another candidate takes the Lease and keeps renewing it.
    let steal = || {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ");
        b.kubectl_ok(&[
            "-n",
            "kube-system",
            "patch",
            "lease",
            "berth-control-plane",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"spec":{{"holderIdentity":"thief","leaseDurationSeconds":3,"renewTime":"{now}"}}}}"#
            ),
        ])
    };
    steal();
    let stolen = std::time::Instant::now();
    // Past berth up's own renew round (3/7 s): it must have stepped down by now.
    while stolen.elapsed() < std::time::Duration::from_secs(2) {
        steal();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    b.kubectl_ok(&["create", "deployment", "led", "--image=busybox"]);
    let created = std::time::Instant::now();
    while created.elapsed() < std::time::Duration::from_secs(4) {
        steal();
        assert_eq!(
            holder(),
            "thief",
            "berth up took the Lease back while it was renewed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        b.kubectl_ok(&["get", "rs", "-l", "app=led", "-o", "name"]),
        "",
        "a server that does not lead ran the deployment controller"
    );
    // The thief stops renewing: once its Lease runs out, berth up leads again and catches up.
    eventually(30, "berth up to lead again", || async {
        (holder() == ours).then_some(())
    })
    .await;
    b.kubectl_ok(&["rollout", "status", "deploy/led", "--timeout=60s"]);
    let transitions = b.kubectl_ok(&[
        "-n",
        "kube-system",
        "get",
        "lease",
        "berth-control-plane",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert!(
        transitions.parse::<i32>().unwrap_or(0) >= 1,
        "{transitions}"
    );
}

#[tokio::test]
async fn rollout_pause_resume_and_restart_with_kubectl() {
    let node = common::unique("pr");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    let sets = || {
        b.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"])
            .lines()
            .count()
    };
    b.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    b.kubectl_ok(&["rollout", "pause", "deploy/web"]);
    b.kubectl_ok(&["set", "image", "deploy/web", "busybox=busybox:9"]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(sets(), 1, "a paused deployment does not roll out");
    b.kubectl_ok(&["rollout", "resume", "deploy/web"]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(sets(), 2);
    b.kubectl_ok(&["rollout", "restart", "deploy/web"]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(
        sets(),
        3,
        "a restart is a new template, so a new ReplicaSet"
    );
    let history = b.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains("3 "), "{history}");
}

/// The image of each pod of app `app`, sorted.
fn images(b: &Berth, app: &str) -> Vec<String> {
    let out = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    let mut v: Vec<String> = out.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

fn condition(b: &Berth, deploy: &str, type_: &str) -> String {
    b.kubectl_ok(&[
        "get",
        "deploy",
        deploy,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    ])
}

#[tokio::test]
async fn a_broken_rollout_with_auto_rollback_comes_back_by_itself() {
    let node = common::unique("ar");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ]);
    b.kubectl_ok(&["annotate", "deploy/web", "berth.dev/auto-rollback=true"]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);

    // An image that is not on the node: the new pods wait in ErrImageNeverPull/ErrImagePull.
    b.kubectl_ok(&["set", "image", "deploy/web", "busybox=missing/broken:1"]);
    eventually(30, "the template to come back", || async {
        let image = b.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        (image == "busybox").then_some(())
    })
    .await;
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    eventually(30, "only the good pods", || async {
        (images(&b, "web") == ["busybox"; 3]).then_some(())
    })
    .await;
    let reason = condition(&b, "web", "RolledBack");
    assert!(
        reason.starts_with("ErrImage"),
        "RolledBack reason: {reason:?}"
    );
    let describe = b.kubectl_ok(&["describe", "deploy", "web"]);
    assert!(
        describe.contains("AutoRollback")
            && describe.contains("Rolled back from revision 2 to revision 1"),
        "{describe}"
    );
    // The history shows the failed revision and the restored one as the newest.
    let history = b.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(
        history.contains("2 ") && history.contains("3 "),
        "{history}"
    );

    // A later good rollout clears the condition.
    b.kubectl_ok(&["set", "image", "deploy/web", "busybox=busybox:2"]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert_eq!(condition(&b, "web", "RolledBack"), "");
}

#[tokio::test]
async fn a_stalled_rollout_exceeds_its_progress_deadline_then_rolls_back_when_asked() {
    let node = common::unique("pd");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "slow",
        "--image=busybox",
        "--replicas=2",
    ]);
    b.kubectl_ok(&[
        "patch",
        "deploy/slow",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":3}}"#,
    ]);
    b.kubectl_ok(&["rollout", "status", "deploy/slow", "--timeout=60s"]);

    // A new template no node can take: its pod stays Pending and the rollout stalls.
    b.kubectl_ok(&[
        "patch",
        "deploy/slow",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"zone":"nowhere"}}}}}"#,
    ]);
    let out = b.kubectl(&["rollout", "status", "deploy/slow", "--timeout=60s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    assert_eq!(
        condition(&b, "slow", "Progressing"),
        "ProgressDeadlineExceeded"
    );
    // The old pods kept serving all along.
    assert_eq!(
        b.kubectl_ok(&[
            "get",
            "deploy",
            "slow",
            "-o",
            "jsonpath={.status.availableReplicas}"
        ]),
        "2"
    );

    // Turning auto-rollback on undoes the stalled rollout.
    b.kubectl_ok(&["annotate", "deploy/slow", "berth.dev/auto-rollback=true"]);
    b.kubectl_ok(&["rollout", "status", "deploy/slow", "--timeout=60s"]);
    let selector = b.kubectl_ok(&[
        "get",
        "deploy",
        "slow",
        "-o",
        "jsonpath={.spec.template.spec.nodeSelector}",
    ]);
    assert_eq!(
        selector, "",
        "the template is the one before the stalled rollout"
    );
    assert_eq!(
        condition(&b, "slow", "RolledBack"),
        "ProgressDeadlineExceeded"
    );
    let events = b.kubectl_ok(&["get", "events", "--field-selector", "reason=AutoRollback"]);
    assert!(
        events.contains("did not become available within 3s"),
        "{events}"
    );
}

/// A watcher follows every pod of a 10-replica Deployment through a rolling upgrade and
/// counts the Ready, not terminating ones after each event: never below
/// `replicas - maxUnavailable`.
#[tokio::test]
async fn a_rolling_upgrade_keeps_replicas_minus_max_unavailable_ready_throughout() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher;

    let node = common::unique("ru");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    let deploy = |image: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: roll}}
spec:
  replicas: 10
  minReadySeconds: 1
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 3, maxUnavailable: 2}}}}
  selector: {{matchLabels: {{app: roll}}}}
  template:
    metadata: {{labels: {{app: roll}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: c, image: "{image}"}}]
"#
        )
    };
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &deploy("busybox:1"));
    b.kubectl_ok(&["rollout", "status", "deploy/roll", "--timeout=60s"]);

    let pods: kube::Api<Pod> = kube::Api::namespaced(b.client().await, "default");
    let cfg = watcher::Config::default().labels("app=roll");
    let mut events = watcher(pods, cfg).boxed();
    // Pod name -> (Ready and not terminating, image), as of the latest event.
    type State = std::collections::HashMap<String, (bool, String)>;
    fn apply(state: &mut State, ev: watcher::Event<Pod>) {
        let (p, gone) = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            _ => return,
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        if gone {
            state.remove(&name);
            return;
        }
        let ready = p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let image = p.spec.as_ref().and_then(|s| s.containers[0].image.clone());
        state.insert(name, (ready, image.unwrap_or_default()));
    }
    let ready = |state: &State| state.values().filter(|s| s.0).count();
    let mut state = State::new();
    // Take in the steady state first.
    let steady = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut listed = false;
        while let Some(ev) = events.next().await {
            listed |= matches!(ev, Ok(watcher::Event::InitDone));
            if let Ok(ev) = ev {
                apply(&mut state, ev);
            }
            if listed && ready(&state) == 10 {
                return;
            }
        }
    })
    .await;
    assert!(
        steady.is_ok(),
        "the watcher never saw 10 ready pods: {state:?}"
    );

    b.kubectl_stdin_ok(&["apply", "-f", "-"], &deploy("busybox:2"));
    let mut lowest = 10;
    let mut seen = 0;
    let done = tokio::time::timeout(std::time::Duration::from_secs(90), async {
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { continue };
            seen += 1;
            apply(&mut state, ev);
            lowest = lowest.min(ready(&state));
            let new_ready = state.values().filter(|s| s.0 && s.1 == "busybox:2").count();
            if new_ready == 10 && state.len() == 10 {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "the rollout did not finish: {state:?}");
    assert!(seen > 20, "the watcher saw the rollout ({seen} events)");
    assert!(
        lowest >= 8,
        "only {lowest} pods were Ready at one point (replicas 10, maxUnavailable 2)"
    );
    b.kubectl_ok(&["rollout", "status", "deploy/roll", "--timeout=60s"]);
}

#[tokio::test]
async fn a_replication_controller_keeps_its_replicas_and_scales() {
    let node = common::unique("rc");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    // The selector and the controller's labels default to the template's.
    let rc = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: frontend}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: frontend}}
    spec:
      containers: [{name: web, image: busybox}]
"#;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], rc);
    let selector = b.kubectl_ok(&[
        "get",
        "rc",
        "frontend",
        "-o",
        "jsonpath={.spec.selector.app}",
    ]);
    assert_eq!(selector, "frontend");
    let ready = |n: &'static str| {
        let b = &b;
        move || async move {
            let out = b.kubectl_ok(&[
                "get",
                "rc",
                "frontend",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]);
            (out == n).then_some(())
        }
    };
    eventually(60, "2 ready replicas", ready("2")).await;
    let owners = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=frontend",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owners, "ReplicationController ReplicationController");
    b.kubectl_ok(&["scale", "rc", "frontend", "--replicas=3"]);
    eventually(60, "3 ready replicas", ready("3")).await;
    let table = b.kubectl_ok(&["get", "rc", "frontend"]);
    assert!(
        table.contains("DESIRED") && table.contains("frontend   3         3         3"),
        "{table}"
    );
    // A pod deleted by hand comes back.
    let pod = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=frontend",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    b.kubectl_ok(&["delete", "pod", &pod, "--wait=false"]);
    eventually(60, "the replacement", || async {
        let names = b.kubectl_ok(&["get", "pods", "-l", "app=frontend", "-o", "name"]);
        (names.lines().count() == 3 && !names.contains(&pod)).then_some(())
    })
    .await;
}
