//! Port-forward to pods, as kubectl 1.32 does it (a WebSocket carrying SPDY, and the plain
//! SPDY upgrade it falls back to) and as kube-rs does it (`v4.channel.k8s.io`), to Docker and
//! process-runtime pods, through `berth up`'s API server and agent.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{unique, Berth, BusyboxImage, Node};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// A running `kubectl port-forward`, killed on drop.
struct Forward {
    child: Child,
    port: u16,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl port-forward <target> :<remote>` (a local port of kubectl's choosing), once it
/// says it is forwarding.
fn kubectl_forward(b: &Berth, target: &str, remote: u16, websockets: bool) -> Forward {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", b.kubeconfig())
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .args(["port-forward", target, &format!(":{remote}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is needed for this test: install kubectl v1.32 and put it on PATH");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let mut err = child.stderr.take().unwrap();
        let keep = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                keep.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // "Forwarding from 127.0.0.1:41234 -> 8080"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok()) {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(p) => p,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "kubectl port-forward {target} did not start forwarding: {}",
                stderr.lock().unwrap()
            );
        }
    };
    Forward {
        child,
        port,
        stderr,
    }
}

/// `GET /` over a fresh connection to 127.0.0.1:`port`; the whole answer.
fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to kubectl");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn wait_ready(b: &Berth, pod: &str) {
    b.kubectl_ok(&[
        "wait",
        &format!("pod/{pod}"),
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
}

#[tokio::test]
async fn kubectl_and_kube_rs_forward_to_a_docker_pod_and_a_service() {
    let image = BusyboxImage::build();
    let node = Node::new("pf");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node.name]);
    // httpd on the pod's loopback too: a forward reaches what only the pod itself can.
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web","labels":{{"app":"web"}}}},
        "spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"web","image":"{img}",
          "command":["/bin/sh","-c","httpd -p 127.0.0.1:9090 -h /www; exec httpd -f -p 8080 -h /www"],
          "ports":[{{"containerPort":8080}}]}}]}}}}"#,
        img = image.tag
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pod);
    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},
        "spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":8080}]}}"#;
    b.kubectl_stdin_ok(&["create", "-f", "-"], svc);
    wait_ready(&b, "web");

    for websockets in [true, false] {
        let f = kubectl_forward(&b, "pod/web", 8080, websockets);
        // Two connections in turn over one session.
        for _ in 0..2 {
            let answer = http_get(f.port);
            assert!(
                answer.starts_with("HTTP/1.") && answer.contains("hello-berth"),
                "websockets={websockets}: {answer:?}; kubectl: {}",
                f.stderr.lock().unwrap()
            );
        }
    }
    let f = kubectl_forward(&b, "svc/web", 80, true);
    assert!(http_get(f.port).contains("hello-berth"), "through svc/web");
    let f = kubectl_forward(&b, "pod/web", 9090, true);
    assert!(
        http_get(f.port).contains("hello-berth"),
        "a port on the pod's loopback: {}",
        f.stderr.lock().unwrap()
    );

    // A port nothing listens on: kubectl says which, and why.
    let f = kubectl_forward(&b, "pod/web", 8081, false);
    let answer = http_get(f.port);
    assert!(!answer.contains("hello-berth"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.stderr.lock().unwrap().contains("8081") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = f.stderr.lock().unwrap().clone();
    assert!(
        said.contains("error forwarding port 8081") && said.contains("refused"),
        "{said}"
    );

    // kube-rs: v4.channel.k8s.io.
    let pods: Api<Pod> = Api::namespaced(b.client().await, "default");
    let mut pf = pods.portforward("web", &[8080, 9090]).await.unwrap();
    for port in [8080, 9090] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = pf.take_stream(port).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        // v4 closes nothing per port (the session ends when all have): read the answer.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("hello-berth") {
            let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
                .await
                .expect("kube-rs answer in time")
                .unwrap();
            assert!(
                n > 0,
                "kube-rs, {port}: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let mut pf = pods.portforward("web", &[8081]).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(15), pf.take_error(8081).unwrap())
        .await
        .expect("kube-rs error in time");
    let error = error.expect("an error for a closed port");
    assert!(error.contains("8081"), "{error}");
    drop(b);
    drop(image);
}

#[tokio::test]
async fn kubectl_forwards_to_a_process_pod() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "hello-process\n").unwrap();
    let busybox = std::env::var("BERTH_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    assert!(
        std::path::Path::new(&busybox).exists(),
        "this test needs a static busybox at {busybox}: `apt-get install busybox-static`"
    );
    let b = Berth::up(&["--runtime", "process", "--node-name", &unique("pfproc")]);
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web"}},
        "spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"web","image":"host",
          "command":["{busybox}","httpd","-f","-p","8080","-h","{dir}"]}}]}}}}"#,
        dir = root.path().display()
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pod);
    wait_ready(&b, "web");
    for websockets in [true, false] {
        let f = kubectl_forward(&b, "pod/web", 8080, websockets);
        let answer = http_get(f.port);
        assert!(
            answer.contains("hello-process"),
            "websockets={websockets}: {answer:?}; kubectl: {}",
            f.stderr.lock().unwrap()
        );
    }
}
