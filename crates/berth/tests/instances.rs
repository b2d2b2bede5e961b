//! The container instances service, end to end against the built binary: Azure's own Python
//! SDK, `berth container`, the meter across a restart, and bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_aci_client::Client;
use common::{require_docker, BusyboxImage};

/// `berth instances` on a data dir, as a real process.
struct Instances {
    child: Child,
    dir: tempfile::TempDir,
    listen: String,
    /// Flags beyond the usual (`--host ...`).
    extra: Vec<String>,
}

fn spawn(dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "instances",
            "--runtime",
            "docker",
            "--instances-listen",
            listen,
        ])
        // One group per page, so that every list follows nextLink.
        .args([
            "--page-size",
            "1",
            "--warm-pool",
            "2",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn berth instances");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("berth instances exited before printing its URL")
            .unwrap();
        if let Some(u) = line.strip_prefix("Berth instances: container groups API at ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url.trim_start_matches("https://").to_string())
}

impl Instances {
    fn start() -> Instances {
        Self::start_with(&[])
    }

    fn start_with(extra: &[String]) -> Instances {
        require_docker();
        let dir = tempfile::tempdir().unwrap();
        let (child, listen) = spawn(dir.path(), "127.0.0.1:0", extra);
        Instances {
            child,
            dir,
            listen,
            extra: extra.to_vec(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("instances.json")
    }

    /// SIGKILL and start again on the same data dir and address.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, listen) = spawn(self.dir.path(), &self.listen, &self.extra);
        assert_eq!(listen, self.listen);
        self.child = child;
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("container")
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .expect("run berth container")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth container {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn client(&self) -> Client {
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.config()).unwrap()).unwrap();
        let ca = std::fs::read_to_string(cfg["caFile"].as_str().unwrap()).unwrap();
        Client::new(
            cfg["server"].as_str().unwrap(),
            cfg["token"].as_str().unwrap(),
            &ca,
        )
    }

    /// The docker containers this service made for groups (by its node label; the warm
    /// pool's spare sandboxes are not any group's).
    fn containers(&self) -> Vec<(String, String, String)> {
        let node = std::fs::read_to_string(self.dir.path().join("instances/node-name")).unwrap();
        common::node_containers(node.trim())
            .into_iter()
            .filter(|(_, name, _)| !name.contains("_warm_"))
            .collect()
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(node) = std::fs::read_to_string(self.dir.path().join("instances/node-name")) {
            common::remove_node_containers(node.trim());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_azure_sdk_drives_a_group_through_its_life() {
    let python = common::python_with(
        "azure.mgmt.containerinstance",
        "azure-mgmt-containerinstance",
    );
    let svc = Instances::start();
    let image = BusyboxImage::build();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/aci/lifecycle.py");
    let port = free_port().to_string();
    let out = Command::new(python)
        .arg(script)
        .arg(svc.config())
        .arg(&image.tag)
        .arg(&port)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "create Succeeded",
        "get Running",
        "public-port",
        "list",
        "logs",
        "provider",
        "restart Running",
        "stop Stopped",
        "start Running",
        "delete gone",
        "bad-input",
    ] {
        assert!(
            stdout.contains(&format!("ok {step}")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(
        svc.containers().is_empty(),
        "deleting left containers behind: {:?}",
        svc.containers()
    );
}

fn usage(svc: &Instances, name: &str) -> (f64, f64) {
    let out = svc.cli_ok(&["usage", "-g", "rg-cli", "-n", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &v["value"][0];
    (
        row["vcpuSeconds"].as_f64().unwrap(),
        row["memoryGbSeconds"].as_f64().unwrap(),
    )
}

#[test]
fn berth_container_runs_a_group_and_bills_only_running_seconds_across_a_restart() {
    let mut svc = Instances::start();
    let image = BusyboxImage::build();
    let began = Instant::now();
    let created = svc.cli_ok(&[
        "create",
        "-g",
        "rg-cli",
        "-n",
        "clock",
        "--image",
        &image.tag,
        "--cpu",
        "1",
        "--memory",
        "2",
        "--command-line",
        "sh -c 'while true; do echo tick; sleep 0.2; done'",
        "-e",
        "PLAIN=1",
        "--secure-environment-variables",
        "HIDDEN=s3cret",
    ]);
    assert!(
        !created.contains("s3cret"),
        "a secure value came back: {created}"
    );
    let list = svc.cli_ok(&["list", "-g", "rg-cli"]);
    assert!(list.contains("clock") && list.contains("Running"), "{list}");
    let shown = svc.cli_ok(&["show", "-g", "rg-cli", "-n", "clock", "-o", "yaml"]);
    assert!(shown.contains("provisioningState: Succeeded"), "{shown}");

    std::thread::sleep(Duration::from_millis(1500));
    let logs = svc.cli_ok(&["logs", "-g", "rg-cli", "-n", "clock", "--tail", "2"]);
    assert!(logs.contains("tick"), "logs: {logs:?}");
    let mut exec = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "container",
            "exec",
            "-g",
            "rg-cli",
            "-n",
            "clock",
            "--exec-command",
            "sh",
        ])
        .arg("--config")
        .arg(svc.config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = exec.stdin.take().unwrap();
        stdin.write_all(b"echo from-exec-$PLAIN; exit\n").unwrap();
    }
    let out = exec.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-exec-1"),
        "exec output: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    svc.cli_ok(&["restart", "-g", "rg-cli", "-n", "clock"]);

    // Billing runs from the create request to the stop request.
    let asked = began.elapsed().as_secs_f64();
    svc.cli_ok(&["stop", "-g", "rg-cli", "-n", "clock"]);
    let stopped = began.elapsed().as_secs_f64();
    let (cpu_s, gb_s) = usage(&svc, "clock");
    assert!(
        cpu_s >= asked - 1.0 && cpu_s <= stopped,
        "stop asked at {asked:.2} s (done at {stopped:.2} s) at 1 vCPU, billed {cpu_s:.2} vCPU-s"
    );
    assert!(
        (gb_s - 2.0 * cpu_s).abs() < 1e-6,
        "2 GB for {cpu_s} s, billed {gb_s} GB-s"
    );
    assert!(svc.containers().is_empty(), "stop left containers running");

    // Stopped time accrues nothing, and the meter survives a restart of the service.
    std::thread::sleep(Duration::from_millis(1500));
    svc.restart();
    let (after, _) = usage(&svc, "clock");
    assert!(
        (after - cpu_s).abs() < 1e-6,
        "stopped and restarted: {cpu_s} became {after}"
    );
    let list = svc.cli_ok(&["list"]);
    assert!(list.contains("clock") && list.contains("Stopped"), "{list}");

    svc.cli_ok(&["start", "-g", "rg-cli", "-n", "clock"]);
    let list = svc.cli_ok(&["list"]);
    assert!(list.contains("Running"), "{list}");
    let refused = svc.cli(&["delete", "-g", "rg-cli", "-n", "clock"]);
    assert!(!refused.status.success(), "delete without --yes must ask");
    svc.cli_ok(&["delete", "-g", "rg-cli", "-n", "clock", "--yes"]);
    assert!(!svc.cli_ok(&["list"]).contains("clock"));
    let (total, _) = usage(&svc, "clock");
    assert!(
        total > after,
        "the second run was billed too: {after} -> {total}"
    );
    assert!(svc.containers().is_empty(), "delete left containers");
}

#[tokio::test]
async fn bad_input_gets_an_arm_error_naming_the_field_and_stores_nothing() {
    let svc = Instances::start();
    let image = BusyboxImage::build();
    let c = svc.client();
    let group = |cpu: f64, ports: &[i64], image: &str| {
        let mut exposed = ports.to_vec();
        exposed.dedup();
        serde_json::json!({"location": "eastus", "properties": {"osType": "Linux",
            "containers": [{"name": "web", "properties": {"image": image,
                "ports": exposed.iter().map(|p| serde_json::json!({"port": p})).collect::<Vec<_>>(),
                "resources": {"requests": {"cpu": cpu, "memoryInGB": 1.0}}}}],
            "ipAddress": {"type": "Public", "ports": ports.iter().map(|p| serde_json::json!({"port": p})).collect::<Vec<_>>()}}})
    };
    let base =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups";
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "Bad_Name",
            group(1.0, &[], &image.tag),
            "InvalidContainerGroupName",
            "containerGroupName",
        ),
        (
            "zero-cpu",
            group(0.0, &[], &image.tag),
            "InvalidContainerResourceRequests",
            "properties.containers[0].properties.resources.requests.cpu",
        ),
        (
            "huge-cpu",
            group(100.0, &[], &image.tag),
            "InvalidContainerResourceRequests",
            "properties.containers[0].properties.resources.requests.cpu",
        ),
        (
            "port-twice",
            group(1.0, &[80, 80], &image.tag),
            "DuplicatePorts",
            "properties.ipAddress.ports[1].port",
        ),
        (
            "no-image",
            group(1.0, &[], "berth-test/not-here:1"),
            "InaccessibleImage",
            "properties.containers[0].properties.image",
        ),
        (
            "bad-type",
            serde_json::json!({"location": "eastus", "properties": {"osType": "Linux", "containers": [{"name": "web", "properties": {"image": 7}}]}}),
            "InvalidRequestContent",
            "properties.containers[0].properties.image",
        ),
    ];
    for (name, body, code, target) in cases {
        let err = c
            .call("PUT", &format!("{base}/{name}"), Some(&body))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        let berth_aci_client::ClientError::Arm(e) = err else {
            panic!("{name}: not an ARM error: {err}")
        };
        assert_eq!(
            (e.status, e.code.as_ref(), e.target.as_deref()),
            (400, code, Some(target)),
            "{name}: {}",
            e.message
        );
        assert!(!e.message.is_empty());
    }
    let err = c
        .call("GET", &format!("{base}?api-version=1999-01-01"), None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, berth_aci_client::ClientError::Arm(e) if e.code == "NoRegisteredProviderFound" && e.target.as_deref() == Some("api-version")),
        "{err}"
    );
    let listed = c.list("s", None).await.unwrap();
    assert!(listed.is_empty(), "refused groups were stored: {listed:?}");
    assert!(svc.containers().is_empty());
}

/// Wait for a group's operation; panics with the ARM error if it fails.
async fn deploy(c: &Client, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let a = c.call("PUT", path, Some(body)).await.expect("PUT accepted");
    let op = a.operation.expect("an Azure-AsyncOperation header");
    c.wait(&op, || {}).await.expect("the deployment succeeds");
    c.call("GET", path, None).await.unwrap().body
}

#[tokio::test]
async fn volumes_probes_and_in_place_updates_behave_as_aci_documents() {
    let svc = Instances::start();
    let image = BusyboxImage::build();
    let c = svc.client();
    // A local git repository for the gitRepo volume.
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git is needed for gitRepo volumes: apt-get install git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("README"), "from-the-repo\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "one"]);

    let path = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/vols";
    let body = |image_cmd: &str, cpu: f64| {
        serde_json::json!({"location": "eastus", "properties": {"osType": "Linux", "restartPolicy": "Always",
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "creds", "secret": {"key": "c2VjcmV0LXZhbHVl"}},
                {"name": "src", "gitRepo": {"repository": repo.path().to_string_lossy(), "directory": "."}}],
            "containers": [
                {"name": "main", "properties": {"image": image.tag, "ports": [{"port": 8080}],
                 "command": ["sh", "-c", image_cmd],
                 "resources": {"requests": {"cpu": cpu, "memoryInGB": 0.5}},
                 "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "creds", "mountPath": "/creds", "readOnly": true},
                    {"name": "src", "mountPath": "/src"}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                 "livenessProbe": {"exec": {"command": ["cat", "/scratch/alive"]}, "periodSeconds": 1, "failureThreshold": 2}}},
                {"name": "peer", "properties": {"image": image.tag,
                 "command": ["sh", "-c", "sleep 1; cat /scratch/shared; sleep 3600"],
                 "resources": {"requests": {"cpu": 0.5, "memoryInGB": 0.5}},
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}}]}})
    };
    let first = "cat /creds/key; echo; cat /src/README; echo shared-by-main > /scratch/shared; touch /scratch/alive; mkdir -p /w; echo ok > /w/index.html; exec httpd -f -p 8080 -h /w";
    let node = std::fs::read_to_string(svc.dir.path().join("instances/node-name")).unwrap();
    let spares = || {
        common::node_containers(node.trim())
            .into_iter()
            .filter(|(_, name, _)| name.contains("_warm_"))
            .count()
    };
    common::eventually(30, "the warm pool to fill", || async {
        (spares() == 2).then_some(())
    })
    .await;
    let g = deploy(&c, path, &body(first, 0.5)).await;
    assert_eq!(g["properties"]["provisioningState"], "Succeeded", "{g}");
    // The group started in a warm sandbox (renamed when claimed).
    assert!(
        common::node_containers(node.trim())
            .iter()
            .any(|(_, name, _)| name.starts_with("claimed_")),
        "the group took no warm sandbox: {:?}",
        common::node_containers(node.trim())
    );
    assert_eq!(
        g["properties"]["volumes"][1]["secret"]["key"], "",
        "secret volume contents must not come back"
    );

    let logs = |container: &'static str| {
        let c = &c;
        async move {
            let p = format!("{path}/containers/{container}/logs");
            c.call("GET", &p, None).await.unwrap().body["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    common::eventually(
        15,
        "the secret, the repo and the shared emptyDir to be read",
        || async {
            let (m, p) = (logs("main").await, logs("peer").await);
            (m.contains("secret-value")
                && m.contains("from-the-repo")
                && p.contains("shared-by-main"))
            .then_some(())
        },
    )
    .await;

    // The liveness probe restarts the container once its file is gone.
    let exec_restart = |g: &serde_json::Value| {
        g["properties"]["containers"][0]["properties"]["instanceView"]["restartCount"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = exec_restart(&c.call("GET", path, None).await.unwrap().body);
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=berth.container.name=main",
            "--filter",
        ])
        .arg(format!(
            "label=berth.node={}",
            std::fs::read_to_string(svc.dir.path().join("instances/node-name"))
                .unwrap()
                .trim()
        ))
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!id.is_empty(), "main is running");
    let rm = Command::new("docker")
        .args(["exec", &id, "sh", "-c", "rm /scratch/alive"])
        .output()
        .unwrap();
    assert!(rm.status.success());
    common::eventually(20, "the liveness probe to restart main", || async {
        let g = c.call("GET", path, None).await.unwrap().body;
        (exec_restart(&g) > before).then_some(())
    })
    .await;

    // A changed command redeploys in place; a changed cpu is refused as ACI refuses it.
    let g = deploy(&c, path, &body("echo second-version; touch /scratch/alive; mkdir -p /w; echo ok > /w/index.html; exec httpd -f -p 8080 -h /w", 0.5)).await;
    assert_eq!(g["properties"]["provisioningState"], "Succeeded");
    common::eventually(15, "the new command to run", || async {
        logs("main").await.contains("second-version").then_some(())
    })
    .await;
    let refused = c
        .call("PUT", path, Some(&body(first, 1.0)))
        .await
        .err()
        .expect("a cpu change is refused");
    let berth_aci_client::ClientError::Arm(e) = refused else {
        panic!("{refused}")
    };
    assert_eq!(
        (e.code.as_ref(), e.target.as_deref()),
        ("InvalidContainerGroupUpdate", Some("properties.containers"))
    );
    let g = c.call("GET", path, None).await.unwrap().body;
    assert_eq!(
        g["properties"]["containers"][0]["properties"]["resources"]["requests"]["cpu"], 0.5,
        "the stored group is unchanged"
    );

    assert!(c
        .delete(&berth_aci_client::GroupRef {
            sub: "s".into(),
            rg: "rg".into(),
            name: "vols".into()
        })
        .await
        .unwrap());
    assert!(svc.containers().is_empty());
}

/// Ask the service's DNS for `name` (A); the response code and the addresses.
fn dns_query(
    server: &str,
    name: &str,
) -> (hickory_proto::op::ResponseCode, Vec<std::net::Ipv4Addr>) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;
    let mut m = Message::new();
    m.set_id(42)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).expect("the DNS server answers");
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.id(), 42);
    let ips = r
        .answers()
        .iter()
        .filter_map(|a| match a.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    (r.response_code(), ips)
}

#[tokio::test]
async fn a_dns_name_label_resolves_while_its_group_runs() {
    use hickory_proto::op::ResponseCode;
    let svc = Instances::start();
    let image = BusyboxImage::build();
    let c = svc.client();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(svc.config()).unwrap()).unwrap();
    let dns = cfg["dns"]
        .as_str()
        .expect("the client config names the DNS address")
        .to_string();
    let port = free_port();
    let label = format!("web-{}", std::process::id());
    let path = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/named";
    let body = serde_json::json!({"location": "westeurope", "properties": {"osType": "Linux",
        "containers": [{"name": "web", "properties": {"image": image.tag, "ports": [{"port": port}],
            "command": ["sh", "-c", format!("mkdir -p /w; echo named > /w/index.html; exec httpd -f -p {port} -h /w")],
            "resources": {"requests": {"cpu": 0.5, "memoryInGB": 0.5}}}}],
        "ipAddress": {"type": "Public", "ports": [{"port": port}], "dnsNameLabel": label}}});
    let g = deploy(&c, path, &body).await;
    let fqdn = format!("{label}.westeurope.instances.berth.local");
    assert_eq!(g["properties"]["ipAddress"]["fqdn"], fqdn.as_str());
    let (code, ips) = dns_query(&dns, &format!("{fqdn}."));
    assert_eq!(
        (code, ips.clone()),
        (ResponseCode::NoError, vec![std::net::Ipv4Addr::LOCALHOST])
    );
    // The name leads to the group: fetch through the resolved address.
    let body = common::eventually(10, "the group's port to answer", || async {
        let mut s = std::net::TcpStream::connect((ips[0], port)).ok()?;
        use std::io::{Read, Write};
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {fqdn}\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("named").then_some(out)
    })
    .await;
    assert!(body.contains("200"), "{body}");
    assert_eq!(
        dns_query(&dns, "other.westeurope.instances.berth.local.").0,
        ResponseCode::NXDomain
    );
    assert_eq!(dns_query(&dns, "example.com.").0, ResponseCode::Refused);
    c.call("POST", &format!("{path}/stop"), None).await.unwrap();
    assert_eq!(
        dns_query(&dns, &format!("{fqdn}.")).0,
        ResponseCode::NXDomain,
        "a stopped group's name is gone"
    );
    c.call("DELETE", path, None).await.unwrap();
}

/// A second Docker engine on this machine in its own network namespace, reached over TCP on
/// its own address through a veth pair: a pool host as another machine would be (it shares
/// this machine's filesystem, but the service treats an engine over TCP as remote and copies
/// volumes to it). Everything is removed on drop.
struct SecondEngine {
    ns: String,
    veth: String,
    daemon: Child,
    dir: tempfile::TempDir,
    url: String,
    address: String,
}

fn run_ok(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("this test needs {cmd} ({e}): it runs as root with iproute2, util-linux (nsenter) and docker.io's dockerd")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (this test needs root, iproute2 and dockerd): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SecondEngine {
    fn start() -> SecondEngine {
        require_docker();
        let n = std::process::id() % 250 + 1;
        let ns = format!("berth-pool-{n}");
        let veth = format!("bpool{n}h");
        let peer = format!("bpool{n}n");
        let (host_ip, address) = (format!("10.231.{n}.1"), format!("10.231.{n}.2"));
        // A netns left by a killed run of this test with the same number goes first.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        run_ok("ip", &["netns", "add", &ns]);
        run_ok(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        run_ok("ip", &["link", "set", &peer, "netns", &ns]);
        run_ok(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &veth],
        );
        run_ok("ip", &["link", "set", &veth, "up"]);
        let with_mask = format!("{address}/30");
        for args in [
            ["addr", "add", with_mask.as_str(), "dev", peer.as_str()].as_slice(),
            &["link", "set", peer.as_str(), "up"],
            &["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend_from_slice(args);
            run_ok("ip", &full);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let url = format!("tcp://{address}:2375");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        // nsenter, not `ip netns exec`: the latter remounts /sys, and dockerd loses the cgroups.
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(dir.path().join("daemon.json"))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .args(["-H", &url, "--tls=false", "--storage-driver", "vfs"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("this test needs nsenter (util-linux) and dockerd (docker.io)");
        let engine = SecondEngine {
            ns,
            veth,
            daemon,
            dir,
            url,
            address,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not answer within 60 s: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["-H", &self.url])
            .args(args)
            .output()
            .expect("the docker CLI")
    }

    /// Copy an image from the main engine (there is no registry to pull from).
    fn load(&self, tag: &str) {
        let saved = Command::new("docker")
            .args(["save", tag])
            .output()
            .expect("docker save");
        assert!(saved.status.success(), "docker save {tag}");
        let mut load = Command::new("docker")
            .args(["-H", &self.url, "load"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("docker load");
        {
            use std::io::Write;
            load.stdin.take().unwrap().write_all(&saved.stdout).unwrap();
        }
        assert!(
            load.wait().unwrap().success(),
            "docker load into the second engine"
        );
    }

    /// Lines of `docker ps -a -q` / `volume ls -q` with a label.
    fn ids(&self, what: &[&str], label: &str) -> Vec<String> {
        let mut args = what.to_vec();
        args.extend(["-q", "--filter", label]);
        String::from_utf8_lossy(&self.docker(&args).stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        let all = self.ids(&["ps", "-a"], "label=berth.node");
        if !all.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(all.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        // SIGTERM, so that dockerd stops its containerd too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.daemon.id().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().ok()?,
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_two_engines_places_groups_apart_and_moves_them_off_a_host_cut_off() {
    let image = BusyboxImage::build();
    let edge = SecondEngine::start();
    edge.load(&image.tag);
    let mut svc = Instances::start_with(&[
        "--host".into(),
        "local=unix:///var/run/docker.sock".into(),
        "--host".into(),
        format!("edge={}", edge.url),
        "--host-grace".into(),
        "3".into(),
    ]);
    let c = svc.client();
    let port = free_port();
    let path = |name: &str| {
        format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/{name}")
    };
    // Each group serves its own secret volume on the same public port.
    let body = |name: &str| {
        use base64::Engine;
        let page = base64::engine::general_purpose::STANDARD.encode(format!("page-of-{name}\n"));
        serde_json::json!({"location": "eastus", "properties": {"osType": "Linux",
            "ipAddress": {"type": "Public", "ports": [{"port": port, "protocol": "TCP"}]},
            "volumes": [{"name": "site", "secret": {"index.html": page}}],
            "containers": [{"name": "web", "properties": {"image": image.tag, "ports": [{"port": port}],
                "command": ["sh", "-c", format!("echo serving-{name}; exec httpd -f -p {port} -h /site")],
                "resources": {"requests": {"cpu": 0.5, "memoryInGB": 0.5}},
                "volumeMounts": [{"name": "site", "mountPath": "/site", "readOnly": true}]}}]}})
    };
    let mut at = std::collections::BTreeMap::new();
    for name in ["one", "two"] {
        let g = deploy(&c, &path(name), &body(name)).await;
        assert_eq!(g["properties"]["provisioningState"], "Succeeded", "{g}");
        let ip = g["properties"]["ipAddress"]["ip"]
            .as_str()
            .unwrap()
            .to_string();
        at.insert(name, ip);
    }
    let mut got: Vec<&str> = at.values().map(String::as_str).collect();
    let mut want = vec!["127.0.0.1", edge.address.as_str()];
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "the two groups want one port, so they go to different hosts: {at:?}"
    );
    for (name, ip) in &at {
        let page = common::eventually(20, "each group to answer on its host's address", || async {
            http_get(ip, port, "/index.html").filter(|p| p.contains("page-of-"))
        })
        .await;
        assert!(page.contains(&format!("page-of-{name}")), "{ip}: {page}");
    }
    let on_edge = at
        .iter()
        .find(|(_, ip)| **ip == edge.address)
        .unwrap()
        .0
        .to_string();
    // The edge group's secret reached the other engine as a volume of its own.
    assert!(
        !edge
            .ids(&["volume", "ls"], "label=berth.pod.uid")
            .is_empty(),
        "no volume on the second engine"
    );
    let logs = c
        .call(
            "GET",
            &format!("{}/containers/web/logs", path(&on_edge)),
            None,
        )
        .await
        .unwrap()
        .body;
    assert!(
        logs["content"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("serving-{on_edge}")),
        "{logs}"
    );

    // A third group on the same port fits nowhere: an ARM error, and nothing stored.
    let Err(err) = c.call("PUT", &path("three"), Some(&body("three"))).await else {
        panic!("a third group on port {port} was accepted");
    };
    assert!(
        err.to_string().contains("ServiceUnavailable")
            && err.to_string().contains(&port.to_string()),
        "{err}"
    );
    assert!(
        c.call("GET", &path("three"), None).await.is_err(),
        "a refused group was stored"
    );

    // Across a restart every group stays on its host, still served.
    svc.restart();
    let c = svc.client();
    for (name, ip) in &at {
        let g = c.call("GET", &path(name), None).await.unwrap().body;
        assert_eq!(g["properties"]["ipAddress"]["ip"], ip.as_str(), "{g}");
        common::eventually(20, "the group to answer after the restart", || async {
            http_get(ip, port, "/index.html").filter(|p| p.contains(&format!("page-of-{name}")))
        })
        .await;
    }

    // The edge host cut off by the network: past the grace its group moves to the local
    // host (whose group on that port is deleted first) and is served there; once the edge
    // answers again, the copy it still runs is removed.
    let on_local = if on_edge == "one" { "two" } else { "one" };
    c.call("DELETE", &path(on_local), None).await.unwrap();
    run_ok("ip", &["link", "set", &edge.veth, "down"]);
    let moved = common::eventually(60, "the edge group to move to the local host", || async {
        let g = c.call("GET", &path(&on_edge), None).await.ok()?.body;
        (g["properties"]["ipAddress"]["ip"] == "127.0.0.1").then_some(g)
    })
    .await;
    assert!(
        moved.to_string().contains("Rescheduled"),
        "no event says why the group moved: {moved}"
    );
    common::eventually(
        30,
        "the moved group to answer on the local host",
        || async {
            http_get("127.0.0.1", port, "/index.html")
                .filter(|p| p.contains(&format!("page-of-{on_edge}")))
        },
    )
    .await;
    run_ok("ip", &["link", "set", &edge.veth, "up"]);
    common::eventually(
        60,
        "the edge engine to remove its copy of the moved group",
        || async {
            edge.ids(&["ps", "-a"], "label=berth.pod.uid")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let g = c.call("GET", &path(&on_edge), None).await.unwrap().body;
    assert_eq!(g["properties"]["ipAddress"]["ip"], "127.0.0.1", "{g}");
    assert!(
        http_get("127.0.0.1", port, "/index.html")
            .is_some_and(|p| p.contains(&format!("page-of-{on_edge}"))),
        "the moved group stopped answering when its old host came back"
    );

    c.call("DELETE", &path(&on_edge), None).await.unwrap();
    common::eventually(
        20,
        "the second engine to hold none of the groups' containers or volumes",
        || async {
            (edge.ids(&["ps", "-a"], "label=berth.pod.uid").is_empty()
                && edge
                    .ids(&["volume", "ls"], "label=berth.pod.uid")
                    .is_empty())
            .then_some(())
        },
    )
    .await;
}
