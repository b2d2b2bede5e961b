//! The conformance suite every driver passes: the behaviour the agent relies on, checked
//! through the trait alone. Drivers call [`check`] from their tests with two container
//! configs: one that runs until stopped and one that exits with code 3 on its own.

use std::time::{Duration, Instant};

use super::{ContainerConfig, PodRef, PullPolicy, Runtime, RuntimeError, State};

pub async fn wait_exit(rt: &dyn Runtime, id: &str) -> State {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let obs = rt.list().await.expect("list");
        let c = obs
            .containers
            .iter()
            .find(|c| c.id == id)
            .expect("the container is listed");
        if matches!(c.state, State::Exited { .. }) {
            return c.state.clone();
        }
        assert!(
            Instant::now() < deadline,
            "container {id} never exited: {:?}",
            c.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the suite; panics on the first behaviour that differs.
pub async fn check(
    rt: &dyn Runtime,
    pod_uid: &str,
    runs: ContainerConfig,
    exits_3: ContainerConfig,
) {
    let pod = PodRef {
        uid: pod_uid.into(),
        host_ports: vec![],
        host_network: false,
        hostname: None,
        namespace: "conformance".into(),
        name: "pod".into(),
    };

    // Images: present ones pass; a missing one with Never is ErrImageNeverPull.
    rt.ensure_image(&runs.image, runs.pull_policy)
        .await
        .expect("the test image is present");
    let missing = rt
        .ensure_image("missing/berth-conformance-absent:1", PullPolicy::Never)
        .await;
    assert!(
        matches!(missing, Err(RuntimeError::ImageNeverPull { .. })),
        "{missing:?}"
    );

    // A sandbox, and containers in it, labelled so that list finds them.
    let sandbox = rt.create_sandbox(&pod).await.expect("create sandbox");
    assert_eq!(sandbox.pod_uid, pod.uid);
    let long = rt
        .start_container(&pod, &sandbox.id, &runs)
        .await
        .expect("start");
    let short = rt
        .start_container(&pod, &sandbox.id, &exits_3)
        .await
        .expect("start");
    let obs = rt.list().await.expect("list");
    assert!(obs
        .sandboxes
        .iter()
        .any(|s| s.id == sandbox.id && s.running));
    let c = obs
        .containers
        .iter()
        .find(|c| c.id == long)
        .expect("listed");
    assert_eq!(
        (c.pod_uid.as_str(), c.name.as_str(), c.attempt),
        (pod_uid, runs.name.as_str(), runs.attempt)
    );
    assert!(matches!(c.state, State::Running { .. }), "{:?}", c.state);

    // Exit codes are reported.
    match wait_exit(rt, &short).await {
        State::Exited {
            exit_code,
            finished_at,
            ..
        } => {
            assert_eq!(exit_code, 3);
            assert!(finished_at.as_second() > 0);
        }
        other => panic!("{other:?}"),
    }

    // Exec, attached: output on stdout, then the exit code.
    use futures::StreamExt;
    // `echo` as the running container has it: through busybox if that is how it runs.
    let mut echo: Vec<String> = runs
        .command
        .iter()
        .flatten()
        .take(1)
        .filter(|c| c.ends_with("busybox"))
        .cloned()
        .collect();
    echo.extend(["echo".to_string(), "conformance".to_string()]);
    let session = rt.exec(&long, &echo, false, false).await.expect("exec");
    let printed: Vec<u8> = session
        .output
        .filter_map(|c| async move { c.ok().map(|(_, b)| b.to_vec()) })
        .concat()
        .await;
    assert_eq!(String::from_utf8_lossy(&printed), "conformance\n");
    assert_eq!(session.exit.await.expect("exit code"), 0);

    // Logs: an exited container's output can be read to its end; a tail of 0 is empty.
    let short_id = short.as_str();
    let read = |opts: super::LogOptions| async move {
        let mut stream = rt.logs(short_id, &opts).await.expect("logs");
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("a log chunk"));
        }
        out
    };
    let _all = read(super::LogOptions::default()).await;
    let none = read(super::LogOptions {
        tail: Some(0),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty(), "tail 0 gave {none:?}");

    // Stop ends a running container within its grace; remove forgets it.
    let t = Instant::now();
    rt.stop(&long, Duration::from_secs(2)).await.expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(matches!(wait_exit(rt, &long).await, State::Exited { .. }));
    for id in [&long, &short, &sandbox.id] {
        rt.stop(id, Duration::from_secs(1))
            .await
            .expect("stop is idempotent");
        rt.remove(id).await.expect("remove");
        rt.remove(id).await.expect("remove is idempotent");
    }
    let obs = rt.list().await.expect("list");
    assert!(
        obs.containers.iter().all(|c| c.pod_uid != pod_uid),
        "containers left"
    );
    assert!(
        obs.sandboxes.iter().all(|s| s.pod_uid != pod_uid),
        "sandbox left"
    );

    // A start that cannot work is a Start error, not a panic or a hang.
    let mut broken = runs.clone();
    broken.name = "broken".into();
    broken.image = "missing/berth-conformance-absent:1".into();
    let sandbox = rt.create_sandbox(&pod).await.expect("create sandbox");
    let err = rt.start_container(&pod, &sandbox.id, &broken).await;
    assert!(err.is_err(), "starting a missing image must fail");
    rt.stop(&sandbox.id, Duration::from_secs(1))
        .await
        .expect("stop");
    rt.remove(&sandbox.id).await.expect("remove");
}
