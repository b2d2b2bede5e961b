//! CustomResourceDefinitions through kubectl, as an operator's installer and its users
//! would use them: a definition applied and Established, its kind served with its printer
//! columns, its schema enforced (field paths), pruned and defaulted, scaled through `scale`,
//! and gone with every object when the definition is deleted.

mod common;

use common::{eventually, Berth};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas,
              labelSelectorPath: .status.selector}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            x-kubernetes-validations:
            - {rule: "!has(self.image) || self.image != 'banned'", message: that image is not allowed}
            - {rule: "self.cronSpec == oldSelf.cronSpec || self.replicas == 0", message: stop it before changing its schedule, fieldPath: .cronSpec}
            properties:
              cronSpec: {type: string, pattern: '^(\S+ ){4}\S+$'}
              image: {type: string}
              replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn crontab(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {{name: {name}}}\nspec:\n  cronSpec: '* * * * */5'\n  image: my-cron\n{extra}"
    )
}

/// Apply the definition and wait until it is Established.
fn establish(b: &Berth) {
    b.kubectl_stdin_ok(&["apply", "-f", "-"], CRD);
    b.kubectl_ok(&[
        "wait",
        "crd/crontabs.stable.example.com",
        "--for=condition=Established",
        "--timeout=20s",
    ]);
}

#[tokio::test]
async fn a_custom_kind_is_served_validated_scaled_and_removed_with_its_definition() {
    let b = Berth::up(&["--runtime", "none"]);
    establish(&b);
    // kubectl finds the kind through discovery, by every name.
    eventually(10, "the kind in discovery", || async {
        b.kubectl(&["get", "ct"]).status.success().then_some(())
    })
    .await;
    let resources = b.kubectl_ok(&["api-resources", "--api-group=stable.example.com"]);
    assert!(
        resources.contains("crontabs") && resources.contains("ct") && resources.contains("CronTab"),
        "{resources}"
    );

    // Created, pruned and defaulted.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &crontab("nightly", "  extra: {anything: [1, 2]}\n"),
    );
    let stored = b.kubectl_ok(&["get", "crontab", "nightly", "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"]["replicas"], 1, "defaulted: {stored}");
    assert_eq!(stored["spec"]["extra"]["anything"][1], 2, "kept: {stored}");
    let pruned = b.kubectl_stdin(
        &["create", "--validate=false", "-f", "-"],
        &crontab("pruned", "  bogus: yes\n"),
    );
    assert!(pruned.status.success(), "{pruned:?}");
    let out = b.kubectl_ok(&["get", "crontab", "pruned", "-o", "jsonpath={.spec}"]);
    assert!(!out.contains("bogus"), "pruned: {out}");
    // With strict field validation (kubectl's default) the same field is refused by name.
    let strict = b.kubectl_stdin(&["create", "-f", "-"], &crontab("strict", "  bogus: yes\n"));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        !strict.status.success() && err.contains(r#"unknown field "spec.bogus""#),
        "{err}"
    );

    // Broken against the schema: refused with the field path, nothing stored.
    let bad = b.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: bad}\nspec: {cronSpec: nope, replicas: 11}\n",
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{err}");
    assert!(
        err.contains("spec.cronSpec: Invalid value: \"nope\"")
            && err.contains("spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"),
        "{err}"
    );
    let missing = b.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: bad}\nspec: {image: x}\n",
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("spec.cronSpec: Required value"), "{err}");
    // The definition's CEL rules: one on every write, one comparing with the stored object.
    let banned = b.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: bad}\nspec: {cronSpec: '* * * * *', image: banned}\n",
    );
    let err = String::from_utf8_lossy(&banned.stderr);
    assert!(
        err.contains(r#"spec: Invalid value: "object": that image is not allowed"#),
        "{err}"
    );
    let moved = b.kubectl(&[
        "patch",
        "crontab",
        "nightly",
        "--type=merge",
        "-p",
        r#"{"spec": {"cronSpec": "0 * * * *"}}"#,
    ]);
    let err = String::from_utf8_lossy(&moved.stderr);
    assert!(
        err.contains(
            "spec.cronSpec: Invalid value: \"object\": stop it before changing its schedule"
        ),
        "{err}"
    );
    assert!(!b.kubectl(&["get", "crontab", "bad"]).status.success());

    // The table has the definition's columns.
    let table = b.kubectl_ok(&["get", "crontabs"]);
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "SPEC", "REPLICAS", "AGE"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("nightly") && l.contains("* * * * */5")),
        "{table}"
    );

    // Another served version shows the same object.
    let beta = b.kubectl_ok(&[
        "get",
        "crontabs.v1beta1.stable.example.com",
        "nightly",
        "-o",
        "jsonpath={.apiVersion} {.spec.image}",
    ]);
    assert_eq!(beta, "stable.example.com/v1beta1 my-cron");

    // `scale` reads and writes the definition's paths; status is its own subresource.
    b.kubectl_ok(&["scale", "crontab/nightly", "--replicas=4"]);
    let replicas = b.kubectl_ok(&[
        "get",
        "crontab",
        "nightly",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "4");
    b.kubectl_ok(&[
        "patch",
        "crontab",
        "nightly",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"replicas": 4, "selector": "app=cron"}}"#,
    ]);
    let scale = b.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v1/namespaces/default/crontabs/nightly/scale",
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=cron");
    let over = b.kubectl(&["scale", "crontab/nightly", "--replicas=12"]);
    assert!(!over.status.success(), "the schema bounds scale too");
    // The autoscaler drives a custom kind through `scale` like any workload: below its
    // minimum, it raises the replicas.
    b.kubectl_ok(&["autoscale", "crontab", "nightly", "--min=6", "--max=8"]);
    eventually(
        20,
        "the autoscaler to raise the replicas to its minimum",
        || async {
            let r = b.kubectl_ok(&[
                "get",
                "crontab",
                "nightly",
                "-o",
                "jsonpath={.spec.replicas}",
            ]);
            (r == "6").then_some(())
        },
    )
    .await;

    // Deleting the definition deletes its objects, and the kind is gone.
    b.kubectl_ok(&[
        "delete",
        "crd",
        "crontabs.stable.example.com",
        "--timeout=30s",
    ]);
    eventually(10, "the kind to leave discovery", || async {
        let out = b.kubectl(&["get", "--raw", "/apis/stable.example.com/v1/crontabs"]);
        (!out.status.success()).then_some(())
    })
    .await;
    establish(&b);
    eventually(10, "the kind back, empty", || async {
        let out = b.kubectl(&["get", "crontabs", "-A", "-o", "name"]);
        (out.status.success() && out.stdout.is_empty()).then_some(())
    })
    .await;
}
