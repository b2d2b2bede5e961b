//! An operator as people write them with kube-rs, run unchanged against `berth up`: a kind
//! declared with `#[derive(CustomResource)]`, its definition installed from the generated
//! schema, and a `Controller` that reconciles each object into a ConfigMap it owns and
//! reports back through the status subresource.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Berth};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a greeting asks for.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "demo.berth.dev",
    version = "v1",
    kind = "Greeting",
    namespaced,
    status = "GreetingStatus",
    printcolumn = r#"{"name": "Message", "type": "string", "jsonPath": ".spec.message"}"#
)]
pub struct GreetingSpec {
    message: String,
    #[serde(default)]
    times: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct GreetingStatus {
    written: String,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Failed(#[from] kube::Error);

async fn reconcile(g: Arc<Greeting>, client: Arc<kube::Client>) -> Result<Action, Failed> {
    let client = (*client).clone();
    let ns = g.namespace().unwrap_or_default();
    let name = g.name_any();
    let text = vec![g.spec.message.as_str(); g.spec.times.max(1) as usize].join(" ");
    let owner = g
        .controller_owner_ref(&())
        .expect("a stored object has a uid");
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}-greeting")),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("text".to_string(), text.clone())])),
        ..Default::default()
    };
    let apply = PatchParams::apply("greeting-operator").force();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(&format!("{name}-greeting"), &apply, &Patch::Apply(&cm))
        .await?;
    let status = serde_json::json!({"status": {"written": text}});
    Api::<Greeting>::namespaced(client, &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The text the controller wrote for the `hello` greeting, if there is one.
async fn greeting_text(maps: &Api<ConfigMap>) -> Option<String> {
    maps.get("hello-greeting")
        .await
        .ok()?
        .data?
        .get("text")
        .cloned()
}

fn retry(_: Arc<Greeting>, _: &Failed, _: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn a_kube_rs_controller_reconciles_its_custom_kind() {
    let b = Berth::up(&["--runtime", "none"]);
    let client = b.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Greeting::crd())
        .await
        .expect("the generated definition is accepted");
    eventually(10, "the definition Established", || async {
        let crd = crds.get("greetings.demo.berth.dev").await.ok()?;
        let conditions = crd.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let greetings: Api<Greeting> = Api::namespaced(client.clone(), "default");
    let controller = Controller::new(greetings.clone(), watcher::Config::default())
        .owns(
            Api::<ConfigMap>::namespaced(client.clone(), "default"),
            watcher::Config::default(),
        )
        .run(reconcile, retry, Arc::new(client.clone()))
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    let hello = Greeting::new(
        "hello",
        GreetingSpec {
            message: "hello".into(),
            times: 2,
        },
    );
    greetings
        .create(&PostParams::default(), &hello)
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    eventually(20, "the greeting's ConfigMap and status", || async {
        let cm = maps.get("hello-greeting").await.ok()?;
        let g = greetings.get("hello").await.ok()?;
        let text = cm.data?.get("text").cloned()?;
        (text == "hello hello" && g.status?.written == text).then_some(())
    })
    .await;

    // A change is reconciled; a ConfigMap changed behind the controller's back is restored.
    greetings
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"message": "hi", "times": 3}})),
        )
        .await
        .unwrap();
    eventually(20, "the new text", || async {
        (greeting_text(&maps).await? == "hi hi hi").then_some(())
    })
    .await;
    maps.patch(
        "hello-greeting",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"text": "tampered"}})),
    )
    .await
    .unwrap();
    eventually(20, "the ConfigMap restored", || async {
        (greeting_text(&maps).await? == "hi hi hi").then_some(())
    })
    .await;

    // The kind's table column, as kubectl shows it.
    let table = b.kubectl_ok(&["get", "greetings"]);
    assert!(table.contains("MESSAGE") && table.contains("hi"), "{table}");

    // Deleting the greeting takes its ConfigMap with it (owner references).
    greetings
        .delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    eventually(20, "the owned ConfigMap collected", || async {
        maps.get_opt("hello-greeting")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    running.abort();
    // The generated kind is what the server serves.
    assert_eq!(Greeting::api_resource().plural, "greetings");
    assert_eq!(Greeting::kind(&()), "Greeting");
}
