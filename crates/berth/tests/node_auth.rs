//! Node authorization: the join token buys a node token, and a node token writes only its
//! own Node and Lease and the pods bound to it, and reads only the Secrets its pods use (403
//! otherwise).

mod common;

use common::{eventually, Berth};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

async fn client_with_token(b: &Berth, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(b.kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(cfg).unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn node_tokens_are_scoped_to_their_node() {
    let b = Berth::up(&["--runtime", "none"]);
    let join = b.node_token();

    // The join token reads nothing; it buys a node token.
    let bootstrap = client_with_token(&b, &join).await;
    let pods: Api<Pod> = Api::namespaced(bootstrap.clone(), "default");
    assert_eq!(code(pods.list(&Default::default()).await.unwrap_err()), 403);
    let req = http::Request::post("/berth/v1/nodetoken")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"nodeName": "na"})).unwrap())
        .unwrap();
    let answer: serde_json::Value = bootstrap.request(req).await.unwrap();
    let token = answer["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("node:na:"));

    let na = client_with_token(&b, &token).await;
    let nodes: Api<Node> = Api::all(na.clone());
    let node =
        |name: &str| serde_json::from_value::<Node>(json!({"metadata": {"name": name}})).unwrap();
    nodes
        .create(&PostParams::default(), &node("na"))
        .await
        .expect("its own Node");
    assert_eq!(
        code(
            nodes
                .create(&PostParams::default(), &node("nb"))
                .await
                .unwrap_err()
        ),
        403
    );
    let cms: Api<ConfigMap> = Api::namespaced(na.clone(), "default");
    let cm = serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        code(cms.create(&PostParams::default(), &cm).await.unwrap_err()),
        403
    );

    // Pods: only the status of pods bound to this node.
    let admin: Api<Pod> = Api::namespaced(b.client().await, "default");
    for (name, on) in [("mine", "na"), ("theirs", "nb")] {
        let pod = serde_json::from_value::<Pod>(json!({"metadata": {"name": name},
            "spec": {"nodeName": on, "containers": [{"name": "c", "image": "x:1"}]}}))
        .unwrap();
        admin.create(&PostParams::default(), &pod).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(na, "default");
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    pods.patch_status("mine", &PatchParams::default(), &status)
        .await
        .expect("its own pod");
    assert_eq!(
        code(
            pods.patch_status("theirs", &PatchParams::default(), &status)
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        code(
            pods.delete("theirs", &Default::default())
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        admin
            .get("theirs")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending"),
        "nothing changed on the other node's pod"
    );

    // Secrets: only those its pods use, read by name; never listed.
    let admin_secrets: Api<Secret> = Api::namespaced(b.client().await, "default");
    for name in ["used", "unused"] {
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": name},
            "stringData": {"k": "v"}}))
        .unwrap();
        admin_secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
    let pod = serde_json::from_value::<Pod>(json!({"metadata": {"name": "with-secret"},
        "spec": {"nodeName": "na", "containers": [{"name": "c", "image": "x:1",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "used", "key": "k"}}}]}]}}))
    .unwrap();
    admin.create(&PostParams::default(), &pod).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client_with_token(&b, &token).await, "default");
    secrets.get("used").await.expect("a secret its pod uses");
    let refused = secrets.get("unused").await.unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("expected an API error")
    };
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains("no pod bound to it uses it"),
        "{}",
        status.message
    );
    assert_eq!(
        code(secrets.list(&Default::default()).await.unwrap_err()),
        403
    );
    let everywhere: Api<Secret> = Api::all(client_with_token(&b, &token).await);
    assert_eq!(
        code(everywhere.list(&Default::default()).await.unwrap_err()),
        403
    );

    // ServiceAccounts: only its pods' accounts, by name; RBAC objects not at all.
    let node_client = client_with_token(&b, &token).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(node_client.clone(), "default");
    eventually(10, "the default account", || async {
        accounts.get("default").await.ok()
    })
    .await;
    assert_eq!(
        code(accounts.list(&Default::default()).await.unwrap_err()),
        403
    );
    let roles: Api<ClusterRole> = Api::all(node_client);
    assert_eq!(
        code(roles.list(&Default::default()).await.unwrap_err()),
        403
    );
    assert_eq!(code(roles.get("view").await.unwrap_err()), 403);
}
