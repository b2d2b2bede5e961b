//! RBAC through kubectl, as a cluster's admin and its users would use it: signed user tokens
//! (`berth token --user`), `kubectl auth can-i`, bindings that grant and, deleted, revoke at
//! once, Kubernetes' 403 wording, escalation prevention, and the aggregated default roles.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Berth};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, PostParams};
use serde_json::json;

/// kubectl as the holder of `token`: (success, stdout, stderr).
fn as_user(b: &Berth, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    let out = b.kubectl(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn can_i(b: &Berth, token: &str, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    as_user(b, token, &all).1
}

#[tokio::test]
async fn bindings_grant_and_revoke_what_kubectl_auth_can_i_reports() {
    let b = Berth::up(&["--runtime", "none"]);
    let alice = b.token(&["--user", "alice", "--group", "dev"]);
    b.kubectl_ok(&["create", "namespace", "team"]);

    let whoami = as_user(&b, &alice, &["auth", "whoami"]).1;
    assert!(
        whoami.contains("alice") && whoami.contains("dev"),
        "{whoami}"
    );
    assert_eq!(can_i(&b, &alice, &["list", "pods", "-n", "team"]), "no");
    let (ok, _, err) = as_user(&b, &alice, &["get", "pods", "-n", "team"]);
    assert!(!ok);
    assert!(
        err.contains(
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "team""#
        ),
        "{err}"
    );

    // `edit` in one namespace.
    b.wait_for_aggregated_roles().await;
    b.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
        "-n",
        "team",
    ]);
    let t0 = Instant::now();
    while can_i(&b, &alice, &["list", "pods", "-n", "team"]) != "yes" {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the binding did not grant within 1 s"
        );
    }
    for (args, want) in [
        (&["create", "deployments.apps", "-n", "team"][..], "yes"),
        (&["get", "secrets", "-n", "team"], "yes"),
        (&["create", "pods/exec", "-n", "team"], "yes"),
        (&["create", "rolebindings", "-n", "team"], "no"),
        (&["create", "deployments.apps", "-n", "default"], "no"),
        (&["list", "pods", "--all-namespaces"], "no"),
        (&["create", "namespaces"], "no"),
        (&["create", "clusterrolebindings"], "no"),
    ] {
        assert_eq!(can_i(&b, &alice, args), want, "can-i {args:?}");
    }
    let list = as_user(&b, &alice, &["auth", "can-i", "--list", "-n", "team"]).1;
    assert!(list.lines().any(|l| l.starts_with("pods ")), "{list}");
    // What can-i says is what the API does.
    let (ok, _, err) = as_user(&b, &alice, &["create", "configmap", "c1", "-n", "team"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_user(&b, &alice, &["create", "configmap", "c1", "-n", "default"]);
    assert!(
        !ok && err.contains("cannot create resource \"configmaps\""),
        "{err}"
    );
    let (ok, _, err) = as_user(&b, &alice, &["create", "namespace", "mine"]);
    assert!(!ok && err.contains("at the cluster scope"), "{err}");

    // Escalation: an admin of the namespace grants what it holds, never more.
    b.kubectl_ok(&[
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
        "-n",
        "team",
    ]);
    eventually(5, "admin to take effect", || async {
        (can_i(&b, &alice, &["create", "rolebindings", "-n", "team"]) == "yes").then_some(())
    })
    .await;
    let (ok, _, err) = as_user(
        &b,
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "team",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = as_user(
        &b,
        &alice,
        &[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "team",
        ],
    );
    assert!(
        !ok && err.contains("is attempting to bind RBAC permissions not currently held"),
        "{err}"
    );
    let (ok, _, err) = as_user(
        &b,
        &alice,
        &[
            "create",
            "role",
            "nodes",
            "--verb=get",
            "--resource=nodes",
            "-n",
            "team",
        ],
    );
    assert!(
        !ok && err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );

    // However the role is written, what would be stored is what is checked: a role of hers,
    // bound to her, cannot be grown past what she holds by apply (directives and all) or by
    // a list written null.
    let (ok, _, err) = as_user(
        &b,
        &alice,
        &[
            "create",
            "role",
            "mine",
            "--verb=get",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = as_user(
        &b,
        &alice,
        &[
            "create",
            "rolebinding",
            "mine",
            "--role=mine",
            "--user=alice",
            "-n",
            "team",
        ],
    );
    assert!(ok, "{err}");
    let star = r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "mine", "namespace": "team"}, "$patch": "delete",
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": null}]}"#;
    for args in [
        // Not strict, so that the directive reaches the server's apply.
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--validate=false",
            "-f",
            "-",
        ][..],
        &["replace", "--validate=false", "-f", "-"],
    ] {
        let mut all = vec!["--token", alice.as_str()];
        all.extend_from_slice(args);
        let out = b.kubectl_stdin(&all, star);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("not currently held"),
            "{args:?}: {err}"
        );
    }
    let rules = b.kubectl_ok(&[
        "get",
        "role",
        "mine",
        "-n",
        "team",
        "-o",
        "jsonpath={.rules[*].verbs}",
    ]);
    assert_eq!(rules, r#"["get"]"#);

    // Deleting the bindings revokes within a second.
    b.kubectl_ok(&[
        "delete",
        "rolebinding",
        "alice-edit",
        "alice-admin",
        "-n",
        "team",
    ]);
    let t0 = Instant::now();
    loop {
        let (ok, _, err) = as_user(&b, &alice, &["get", "configmaps", "-n", "team"]);
        if !ok {
            assert!(err.contains("forbidden"), "{err}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "still allowed after 1 s"
        );
    }
    // A token signed elsewhere is no one.
    let (ok, _, err) = as_user(
        &b,
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.AAAA",
        &["get", "pods"],
    );
    assert!(!ok && err.contains("Unauthorized"), "{err}");
}

#[tokio::test]
async fn a_labelled_cluster_role_adds_to_the_default_roles() {
    let b = Berth::up(&["--runtime", "none"]);
    let roles: Api<ClusterRole> = Api::all(b.client().await);
    let extra: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "widgets-view",
            "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}],
    }))
    .unwrap();
    roles.create(&PostParams::default(), &extra).await.unwrap();
    for aggregated in ["view", "edit", "admin"] {
        eventually(
            10,
            &format!("{aggregated} to hold the widgets rule"),
            || async {
                let r = roles.get(aggregated).await.ok()?;
                r.rules?
                    .iter()
                    .any(|r| r.resources.as_deref() == Some(&["widgets".to_string()][..]))
                    .then_some(())
            },
        )
        .await;
    }
    // A user bound to view may now read widgets.
    let carol = b.token(&["--user", "carol"]);
    b.kubectl_ok(&[
        "create",
        "rolebinding",
        "carol",
        "--clusterrole=view",
        "--user=carol",
        "-n",
        "default",
    ]);
    // kubectl cannot name a resource discovery does not list, so ask with the review itself.
    let review = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"group": "example.com", "resource": "widgets",
        "verb": "get", "namespace": "default"}}}"#;
    eventually(5, "carol's binding", || async {
        let out = b.kubectl_stdin(
            &[
                "--token",
                &carol,
                "create",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.allowed}",
            ],
            review,
        );
        (String::from_utf8_lossy(&out.stdout) == "true").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_service_account_token_does_what_its_bindings_allow_while_the_account_lives() {
    let b = Berth::up(&["--runtime", "none"]);
    b.kubectl_ok(&["create", "namespace", "apps"]);
    // Every namespace gets its default account and the cluster CA.
    eventually(
        10,
        "the default ServiceAccount and kube-root-ca.crt",
        || async {
            let sa = b.kubectl(&["get", "serviceaccount", "default", "-n", "apps"]);
            let ca = b.kubectl(&[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                "apps",
                "-o",
                r"jsonpath={.data.ca\.crt}",
            ]);
            (sa.status.success()
                && String::from_utf8_lossy(&ca.stdout).contains("BEGIN CERTIFICATE"))
            .then_some(())
        },
    )
    .await;

    b.kubectl_ok(&["create", "serviceaccount", "robot", "-n", "apps"]);
    let token = b.kubectl_ok(&["create", "token", "robot", "-n", "apps"]);
    let token = token.trim();
    let whoami = as_user(&b, token, &["auth", "whoami"]).1;
    assert!(
        whoami.contains("system:serviceaccount:apps:robot"),
        "{whoami}"
    );
    assert!(whoami.contains("system:serviceaccounts:apps"), "{whoami}");
    let (ok, _, err) = as_user(&b, token, &["get", "pods", "-n", "apps"]);
    assert!(
        !ok && err.contains(r#"User "system:serviceaccount:apps:robot" cannot list"#),
        "{err}"
    );

    b.wait_for_aggregated_roles().await;
    b.kubectl_ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=apps:robot",
        "-n",
        "apps",
    ]);
    eventually(5, "the binding to reach the account", || async {
        as_user(&b, token, &["get", "pods", "-n", "apps"])
            .0
            .then_some(())
    })
    .await;
    assert!(!as_user(&b, token, &["get", "secrets", "-n", "apps"]).0);
    assert!(!as_user(&b, token, &["get", "pods", "-n", "default"]).0);

    // A token made for another audience is not accepted here.
    let other = b.kubectl_ok(&["create", "token", "robot", "-n", "apps", "--audience=vault"]);
    let (ok, _, err) = as_user(&b, other.trim(), &["get", "pods", "-n", "apps"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    let out = b.kubectl(&["create", "token", "robot", "-n", "apps", "--duration=5m"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("less than 10 minutes"),
        "{err}"
    );

    // The token dies with its account.
    b.kubectl_ok(&["delete", "serviceaccount", "robot", "-n", "apps"]);
    eventually(15, "the token to stop working", || async {
        let (ok, _, err) = as_user(&b, token, &["get", "pods", "-n", "apps"]);
        (!ok && err.contains("Unauthorized")).then_some(())
    })
    .await;
}
