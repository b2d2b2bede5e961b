//! `/metrics` of the API server, the agent and the instances service, read with the official
//! Prometheus Python client's OpenMetrics parser (a parser others wrote), and seen to move
//! when requests are made and pods start.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::Berth;

/// Every sample of `text` (or of what `fetch` = (url, token, ca) answers), as
/// `name{labels}` → value; panics if the parser refuses it.
fn parse(text: Option<&str>, fetch: Option<(&str, &str, &str)>) -> HashMap<String, f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/metrics/parse.py");
    let mut cmd = Command::new(common::python_with(
        "prometheus_client",
        "prometheus-client",
    ));
    cmd.arg(script);
    if let Some((url, token, ca)) = fetch {
        cmd.args([url, token, ca]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.unwrap_or("").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text.unwrap_or("")
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_move_with_requests_and_pods() {
    let b = Berth::up(&["--runtime", "process"]);
    let node = b.flag("--node-name").unwrap().to_string();
    let lists = r#"apiserver_request_total{code="200",resource="pods",subresource="",verb="LIST"}"#;

    let before = parse(Some(&b.kubectl_ok(&["get", "--raw", "/metrics"])), None);
    for _ in 0..3 {
        b.kubectl_ok(&["get", "pods"]);
    }
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{
        "terminationGracePeriodSeconds":1,
        "containers":[{"name":"c","image":"host","command":["sleep","300"]}]}}"#;
    b.kubectl_stdin_ok(&["create", "-f", "-"], pod);
    b.kubectl_ok(&["wait", "pod/p", "--for=condition=Ready", "--timeout=60s"]);
    let after = parse(Some(&b.kubectl_ok(&["get", "--raw", "/metrics"])), None);
    assert!(
        value(&after, lists) >= value(&before, lists) + 3.0,
        "LIST pods moved by 3: {} -> {}",
        value(&before, lists),
        value(&after, lists)
    );
    let creates =
        r#"apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"}"#;
    assert!(value(&after, creates) >= 1.0, "a pod create was counted");
    for key in [
        r#"apiserver_request_duration_seconds_count{resource="pods",subresource="",verb="LIST"}"#,
        r#"berth_store_write_duration_seconds_count{operation="create"}"#,
        r#"scheduler_schedule_attempts_total{result="scheduled"}"#,
        r#"scheduler_scheduling_algorithm_duration_seconds_count{}"#,
    ] {
        assert!(value(&after, key) >= 1.0, "{key} in {after:?}");
    }
    // Watches are open now (the agent's, the controllers').
    let watching: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("apiserver_registered_watchers{"))
        .map(|(_, v)| v)
        .sum();
    assert!(watching >= 1.0, "open watches: {after:?}");

    // The agent's, through the node proxy.
    let agent = parse(
        Some(&b.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/metrics"),
        ])),
        None,
    );
    assert!(value(&agent, "kubelet_running_pods{}") >= 1.0, "{agent:?}");
    assert!(
        value(&agent, "kubelet_running_containers{}") >= 1.0,
        "{agent:?}"
    );
    assert!(
        value(&agent, "kubelet_pod_start_duration_seconds_count{}") >= 1.0,
        "{agent:?}"
    );

    // The instances service's, with its token.
    let inst: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.dir.path().join("instances.json")).unwrap(),
    )
    .unwrap();
    let url = format!("{}/metrics", inst["server"].as_str().unwrap());
    let (token, ca) = (
        inst["token"].as_str().unwrap(),
        inst["caFile"].as_str().unwrap(),
    );
    let samples = parse(None, Some((&url, token, ca)));
    assert!(
        samples.contains_key("berth_instances_metered_vcpu_seconds_total{}"),
        "{samples:?}"
    );
}
