//! The cost of authorization, part of `berth-bench apiserver`: creates/s through the API
//! with 50 clients as a user whom RBAC must check (bound to `edit`, among 200 other bindings
//! and roles), next to the same as the admin (which RBAC does not consult), alternating runs
//! so the disk's drift falls on both; and one RBAC decision alone, timed in a loop.

use std::time::{Duration, Instant};

use berth_apiserver::authz::{rbac, Attributes, User};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{api_creates, percentile, report, Run};

/// A client for `server` that presents `token`.
async fn client_with(
    server: &berth_apiserver::Server,
    dir: &std::path::Path,
    token: &str,
) -> anyhow::Result<kube::Client> {
    let path = dir.join("kubeconfig-authz");
    std::fs::write(
        &path,
        berth_apiserver::kubeconfig(&server.url(), &server.ca_pem, token),
    )?;
    let kc = kube::config::Kubeconfig::read_from(&path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The RBAC objects of a cluster with some history: 100 namespaces each with a Role and a
/// RoleBinding for someone else, and the bench user's binding to `edit` in `default`.
fn objects() -> Vec<(&'static str, serde_json::Value)> {
    let mut out = Vec::new();
    for i in 0..100 {
        let ns = format!("team-{i}");
        out.push((
            "Role",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "reader", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["configmaps", "pods"],
                    "verbs": ["get", "list"]}]}),
        ));
        out.push((
            "RoleBinding",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "reader", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("user-{i}")}]}),
        ));
    }
    out.push((
        "RoleBinding",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "bench-edit", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-user"}]}),
    ));
    out
}

/// The rules `edit` holds once aggregated.
fn edit_rules() -> Vec<serde_json::Value> {
    berth_apiserver::authz::policy::defaults()
        .into_iter()
        .filter(|(_, o)| {
            o["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
        })
        .flat_map(|(_, o)| o["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

pub async fn run(
    server: &berth_apiserver::Server,
    dir: &std::path::Path,
    admin: Api<ConfigMap>,
    creates: usize,
) -> anyhow::Result<()> {
    let client = admin.clone().into_client();
    for (kind, obj) in objects() {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        if ns != "default" {
            let nsobj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
            let _ = nss
                .create(&PostParams::default(), &serde_json::from_value(nsobj)?)
                .await;
        }
        let body = serde_json::to_vec(&obj)?;
        let plural = if kind == "Role" {
            "roles"
        } else {
            "rolebindings"
        };
        let req = http::Request::post(format!(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}"
        ))
        .header("content-type", "application/json")
        .body(body)?;
        client.request_text(req).await?;
    }
    // No controllers run here: fill `edit` as the aggregation controller would.
    let req = http::Request::patch("/apis/rbac.authorization.k8s.io/v1/clusterroles/edit")
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(&json!({"rules": edit_rules()}))?)?;
    client.request_text(req).await?;
    let token = server
        .tokens
        .user_token("bench-user", &["bench".into()], None);
    let user: Api<ConfigMap> = Api::namespaced(client_with(server, dir, &token).await?, "default");
    // The binding reaches the authorizer through its watch.
    let deadline = Instant::now() + Duration::from_secs(5);
    while user.list(&Default::default()).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bench user's binding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut as_admin, mut as_user): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    for round in 0..3 {
        as_admin.push(api_creates(admin.clone(), &format!("adm{round}"), 50, creates).await?);
        as_user.push(api_creates(user.clone(), &format!("usr{round}"), 50, creates).await?);
    }
    let median = |runs: &mut Vec<Run>| {
        runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
        runs.remove(runs.len() / 2)
    };
    let (a, u) = (median(&mut as_admin), median(&mut as_user));
    println!();
    println!("authorization, 50 clients, median of 3 alternating runs each:");
    report("as the admin (no RBAC check)", &a);
    report("as a user bound to edit (RBAC)", &u);
    println!(
        "RBAC's cost: {:+.1}% creates/s (goal: under 5%)",
        (u.per_sec / a.per_sec - 1.0) * 100.0
    );

    // One decision, alone: the index built from the same objects plus the default roles.
    let mut index = rbac::Index::default();
    for (kind, obj) in objects() {
        index.add(kind, &obj);
    }
    for (kind, obj) in berth_apiserver::authz::policy::defaults() {
        let kind = if kind == berth_core::Kind::ClusterRole {
            "ClusterRole"
        } else {
            "ClusterRoleBinding"
        };
        index.add(kind, &obj);
    }
    index.add(
        "ClusterRole",
        &json!({"metadata": {"name": "edit"}, "rules": edit_rules()}),
    );
    let who = User {
        name: "bench-user".into(),
        groups: vec!["bench".into(), "system:authenticated".into()],
        bound: None,
    };
    let ask = Attributes {
        verb: "create".into(),
        resource: Some("configmaps".into()),
        namespace: Some("default".into()),
        ..Attributes::default()
    };
    anyhow::ensure!(
        index.allowed_by(&who, &ask).is_some(),
        "the decision is not allow"
    );
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..10_000 {
            std::hint::black_box(index.allowed_by(&who, std::hint::black_box(&ask)));
        }
        samples.push(t.elapsed() / 10_000);
    }
    samples.sort();
    println!(
        "one RBAC decision (203 bindings): p50 {:.2} µs, p99 {:.2} µs; at the user run's rate that is {:.2}% of a core",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        percentile(&samples, 0.5).as_secs_f64() * u.per_sec * 100.0
    );
    Ok(())
}
