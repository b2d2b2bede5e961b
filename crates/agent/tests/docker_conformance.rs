//! The conformance suite against a real Docker engine. Needs dockerd and Debian's
//! busybox-static (the pause image, which also serves as the test image, is made from it).

use berth_agent::runtime::docker::{DockerRuntime, PAUSE_IMAGE};
use berth_agent::runtime::{conformance, ContainerConfig, PullPolicy, Runtime};

fn config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: PAUSE_IMAGE.into(),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        args: None,
        env: vec![],
        mounts: vec![],
        working_dir: None,
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
        pull_policy: PullPolicy::IfNotPresent,
        attempt: 0,
        stdio: Default::default(),
    }
}

#[tokio::test]
async fn docker_passes_the_conformance_suite() {
    let node = format!("conformance-{}", std::process::id());
    let rt = DockerRuntime::connect(&node).await.unwrap_or_else(|e| {
        panic!(
            "this test needs a running Docker engine (apt-get install docker.io; dockerd &): {e:#}"
        )
    });
    // The pause image is made on the first sandbox; make one so the test image exists.
    let warm = berth_agent::runtime::PodRef {
        uid: format!("warm-{node}"),
        host_ports: vec![],
        host_network: false,
        hostname: None,
        namespace: "c".into(),
        name: "warm".into(),
    };
    let sb = rt
        .create_sandbox(&warm)
        .await
        .expect("the pause image can be made (is busybox-static installed?)");
    rt.remove(&sb.id).await.unwrap();
    let runs = config("runs", &["/busybox", "sleep", "300"]);
    let exits = config("exits", &["/busybox", "sh", "-c", "exit 3"]);
    conformance::check(&rt, &format!("uid-{node}"), runs, exits).await;
}
