//! Test harness: run the built `berth` binary as a real process on a temp data dir, and
//! talk to it with kubectl and kube-rs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Berth {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: String,
    pub url: String,
    pub extra: Vec<String>,
    /// Holds this test's share of the host's networks (see [`NetworkShare`]).
    _share: NetworkShare,
}

/// Tests run side by side on one host, and every Docker node makes a bridge for its pod
/// CIDR and sends its cluster DNS address to its own server: each cluster gets a cluster
/// CIDR (`10.<128+n>.0.0/16`) and DNS address (`10.96.0.<11+n>`) of its own. Slot `n` is
/// held by listening on a loopback port, which the kernel frees when the test process ends,
/// however it ends.
pub struct NetworkShare {
    pub slot: u16,
    _lock: std::net::TcpListener,
}

impl NetworkShare {
    pub fn take() -> NetworkShare {
        for _ in 0..600 {
            for slot in 0..96u16 {
                if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", 47_300 + slot)) {
                    return NetworkShare { slot, _lock: l };
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no network slot free in 60 s (ports 127.0.0.1:47300-47395 all taken)")
    }

    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 128 + self.slot)
    }

    pub fn cluster_dns(&self) -> String {
        format!("10.96.0.{}", 11 + self.slot)
    }

    /// The `kubernetes` Service's address: pods' API traffic must reach their own server.
    pub fn kubernetes_ip(&self) -> String {
        format!("10.96.0.{}", 140 + self.slot)
    }
}

fn start(dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen)
        .args([
            "--instances-listen",
            "127.0.0.1:0",
            "--warm-pool",
            "0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .args(extra);
    spawn_until_url(cmd, "Berth is up: Kubernetes API at ")
}

/// Spawn a `berth` command (logging at `BERTH_TEST_LOG`, `warn` by default) and wait, for
/// up to 30 s, for the stdout line starting with `prefix`; returns the child and the rest of
/// that line (its URL). Its stdout keeps being drained.
pub fn spawn_until_url(mut cmd: Command, prefix: &str) -> (Child, String) {
    let mut child = cmd
        // BERTH_TEST_LOG=debug (any BERTH_LOG filter) makes the servers under test chatty.
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the berth binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        assert!(
            Instant::now() < deadline,
            "berth did not print {prefix:?} within 30 s"
        );
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("berth exited before printing {prefix:?}"))
            .expect("read berth's stdout");
        if let Some(url) = line.strip_prefix(prefix) {
            break url.trim().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

impl Berth {
    /// `berth up` on a fresh data dir and a free port, with extra flags.
    pub fn up(extra: &[&str]) -> Berth {
        Berth::up_at("127.0.0.1:0", extra)
    }

    /// `berth up` listening on `listen` (an address of this machine, port 0 for a free one).
    pub fn up_at(listen: &str, extra: &[&str]) -> Berth {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A node name of its own (not the host's), so that its containers can be told apart
        // from every other test's and removed when it ends.
        if !extra.iter().any(|a| a == "--node-name") {
            extra.extend(["--node-name".to_string(), unique("node")]);
        }
        let share = NetworkShare::take();
        if !extra.iter().any(|a| a == "--cluster-cidr") {
            extra.extend(["--cluster-cidr".to_string(), share.cluster_cidr()]);
        }
        if !extra.iter().any(|a| a == "--cluster-dns") {
            extra.extend(["--cluster-dns".to_string(), share.cluster_dns()]);
        }
        if !extra.iter().any(|a| a == "--kubernetes-service-ip") {
            extra.extend(["--kubernetes-service-ip".to_string(), share.kubernetes_ip()]);
        }
        let (child, url) = start(dir.path(), listen, &extra);
        let listen = url.trim_start_matches("https://").to_string();
        Berth {
            child: Some(child),
            dir,
            listen,
            url,
            extra,
            _share: share,
        }
    }

    /// The value `berth up` was given for `--name` (or the one this helper added).
    pub fn flag(&self, name: &str) -> Option<&str> {
        let i = self.extra.iter().position(|a| a == name)?;
        self.extra.get(i + 1).map(String::as_str)
    }

    /// The node-join token of this cluster (`berth token --node`).
    pub fn node_token(&self) -> String {
        self.token(&["--node"])
    }

    /// `berth token` on this cluster's data dir with `args` (`--user alice --group dev`).
    pub fn token(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .expect("berth token runs");
        assert!(
            out.status.success(),
            "berth token {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// SIGKILL the server: no shutdown, no final fsync.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, url) = start(self.dir.path(), &self.listen, &self.extra);
        assert_eq!(url, self.url, "the restarted server must keep its address");
        self.child = Some(child);
    }

    /// Stop the server, run it on another port (same data dir) while `f` works against it
    /// (its kubeconfig path is passed), then bring it back on its own port. Clients of the
    /// first address see one outage, and everything written through the other.
    pub fn with_other_port<T>(&mut self, f: impl FnOnce(&Path) -> T) -> T {
        self.kill9();
        let (mut child, _) = start(self.dir.path(), "127.0.0.1:0", &self.extra);
        let out = f(&self.kubeconfig());
        let _ = child.kill();
        let _ = child.wait();
        let (child, url) = start(self.dir.path(), &self.listen, &self.extra);
        assert_eq!(url, self.url, "the restarted server must keep its address");
        self.child = Some(child);
        out
    }

    /// Wait until the aggregated default roles (`view`, `edit`, `admin`) have their rules:
    /// the aggregation controller fills them once the control loops run (later on a loaded
    /// machine), and a binding to one grants nothing before.
    pub async fn wait_for_aggregated_roles(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let filled = ["view", "edit", "admin"].iter().all(|role| {
                let rules =
                    self.kubectl_ok(&["get", "clusterrole", role, "-o", "jsonpath={.rules}"]);
                rules.contains("pods")
            });
            if filled {
                return;
            }
            if Instant::now() > deadline {
                // What the control plane was doing, for whoever reads the failure.
                let state = [
                    self.kubectl(&["get", "clusterrole", "view", "-o", "yaml"]),
                    self.kubectl(&["get", "lease", "-n", "kube-system", "-o", "yaml"]),
                    self.kubectl(&["get", "events", "-A"]),
                ]
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                panic!(
                    "the aggregated default roles were not filled within 30 s:\n{}",
                    state.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A kube-rs client for the admin.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig()).await
    }

    /// Run kubectl against this server; panics with a how-to if kubectl is missing.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(
            &self.kubeconfig(),
            &self.dir.path().join("kube-cache"),
            args,
            None,
        )
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        kubectl_with(
            &self.kubeconfig(),
            &self.dir.path().join("kube-cache"),
            args,
            Some(stdin),
        )
    }

    /// Run kubectl with `stdin` and return stdout, failing the test (with stderr) if it fails.
    pub fn kubectl_stdin_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run kubectl and return stdout, failing the test (with stderr) if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill9();
        let flag = |name: &str| self.flag(name);
        // Only a Docker node leaves containers, and only where the docker CLI runs.
        let docker_node = matches!(flag("--runtime"), None | Some("docker" | "auto"));
        let cli = Command::new("docker").arg("--version").output().is_ok();
        if let (true, true, Some(node)) = (docker_node, cli, flag("--node-name")) {
            remove_node_containers(node);
            // And the instances service's (container groups, the virtual node's pods).
            let service = std::fs::read_to_string(self.dir.path().join("instances/node-name"));
            if let Ok(service) = service {
                remove_node_containers(service.trim());
            }
        } else if let (Some("process"), Some(node)) = (flag("--runtime"), flag("--node-name")) {
            remove_node_network(node);
            // The instances service's bridge for the virtual node's pods.
            let service = std::fs::read_to_string(self.dir.path().join("instances/node-name"));
            if let Ok(service) = service {
                remove_node_network(service.trim());
            }
            unmount_under(self.dir.path());
        }
        // The agent let its cluster CIDR through Docker's firewall.
        if let Some(cidr) = flag("--cluster-cidr") {
            for dir in ["-s", "-d"] {
                while Command::new("iptables")
                    .args(["-w", "-D", "DOCKER-USER", dir, cidr, "-j", "ACCEPT"])
                    .args(["-m", "comment", "--comment", "berth pod network"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                {}
            }
        }
    }
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    kube::Client::try_from(cfg).expect("build client")
}

pub fn kubectl_with(kubeconfig: &Path, cache: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "kubectl is needed for this test and could not be run ({e}): install kubectl v1.32 \
             (https://kubernetes.io/docs/tasks/tools/) and put it on PATH"
        ),
    };
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("kubectl ran")
}

/// Poll `f` until it returns Some, or fail after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique suffix for Docker object names in this test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the docker CLI is needed for this test ({e}): install docker.io and start dockerd"
            )
        })
}

/// Fail with a how-to unless a Docker engine answers.
pub fn require_docker() {
    let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        out.status.success(),
        "this test needs a running Docker engine: `apt-get install docker.io && dockerd &` ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A local image with Debian's static busybox (httpd, sh, wget, cat, ...) and a web root
/// `/www/index.html` saying `hello-berth`. Removed on drop.
pub struct BusyboxImage {
    pub tag: String,
}

impl BusyboxImage {
    pub fn build() -> BusyboxImage {
        require_docker();
        let busybox = std::env::var("BERTH_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
        assert!(
            Path::new(&busybox).exists(),
            "this test needs a static busybox at {busybox}: `apt-get install busybox-static`"
        );
        let root = tempfile::tempdir().expect("temp dir");
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(&busybox, bin.join("busybox")).unwrap();
        for applet in [
            "sh", "httpd", "cat", "echo", "sleep", "wget", "ls", "kill", "date", "true", "false",
            "mkdir", "hostname", "nslookup", "nc", "rm", "tar",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        std::fs::create_dir_all(root.path().join("www")).unwrap();
        std::fs::write(root.path().join("www/index.html"), "hello-berth\n").unwrap();
        let tag = format!("berth-test/{}:1", unique("busybox"));
        let tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .output()
            .expect("tar");
        let mut import = Command::new("docker")
            .args([
                "import",
                "--change",
                "ENV PATH=/bin",
                "--change",
                r#"CMD ["/bin/sh"]"#,
                "-",
                &tag,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("docker import");
        {
            use std::io::Write;
            import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        }
        assert!(
            import.wait().unwrap().success(),
            "docker import of the test image failed"
        );
        BusyboxImage { tag }
    }
}

impl Drop for BusyboxImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}

/// Containers Berth made for node `node`: (id, name, state).
pub fn node_containers(node: &str) -> Vec<(String, String, String)> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.node={node}"),
        "--format",
        "{{.ID}} {{.Names}} {{.State}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect()
}

/// A node name for a test's agent; what Berth made for it on the host goes when it drops.
pub struct Node {
    pub name: String,
}

impl Node {
    pub fn new(prefix: &str) -> Node {
        Node {
            name: unique(prefix),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        remove_node_containers(&self.name);
    }
}

/// Remove every container Berth made for `node`, and its pod bridge and nftables table
/// (test cleanup).
pub fn remove_node_containers(node: &str) {
    remove_node_network(node);
    let ids: Vec<String> = node_containers(node).into_iter().map(|c| c.0).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

/// Remove the pod bridge and nftables table of `node`'s agent (test cleanup).
/// A node's network on this host, removed when this is dropped (however the test ends), with
/// whatever its pods left mounted under `dir` (process pods' namespaces).
pub struct NodeNetwork {
    pub node: String,
    pub dir: PathBuf,
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        remove_node_network(&self.node);
        unmount_under(&self.dir);
    }
}

/// Detach every mount under `dir` (a killed agent's pod namespaces), so it can be removed.
pub fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        if Path::new(point).starts_with(dir) {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
    }
}

pub fn remove_node_network(node: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", &berth_agent::net::podnet::bridge_name(node)])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("nft")
        .args([
            "delete",
            "table",
            "ip",
            &berth_agent::net::nft::table_for(node),
        ])
        .stderr(Stdio::null())
        .status();
}

/// The Python that `scripts/test.sh` prepares (`target/aci-venv`, or `BERTH_ACI_PYTHON`),
/// checked to import `module` (the package `pip` installs it from).
#[allow(dead_code)] // not every test binary runs Python
pub fn python_with(module: &str, pip: &str) -> PathBuf {
    let python = std::env::var_os("BERTH_ACI_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/aci-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs Python with {module} at {}: run ./scripts/test.sh (it makes the venv), \
         or `python3 -m venv target/aci-venv && target/aci-venv/bin/pip install {pip}`, or set \
         BERTH_ACI_PYTHON",
        python.display()
    );
    python
}

/// One `berth server` process (API, scheduler and controllers, no node), killed when
/// dropped: the servers of an HA control plane on a shared store.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
}

impl Server {
    /// Start `berth server` on `dir` with `args`, on a free loopback port; returns once it
    /// prints its URL.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        std::fs::create_dir_all(dir).expect("the server's data dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        let (child, url) = spawn_until_url(cmd, "berth server listening on ");
        Server {
            child: Some(child),
            dir: dir.to_path_buf(),
            url,
        }
    }

    /// Give `to` this server's CA, serving keys and tokens (see [`share_secrets`]).
    pub fn share_secrets(&self, to: &Path) {
        share_secrets(&self.dir, to);
    }

    /// `host:port` it serves on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_string()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An admin kubeconfig for the cluster whose secrets are in `data_dir`, naming `server`.
pub fn kubeconfig_for(data_dir: &Path, server: &str, to: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("kubeconfig")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--server", server])
        .output()
        .expect("berth kubeconfig runs");
    assert!(
        out.status.success(),
        "berth kubeconfig: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(to, out.stdout).expect("write the kubeconfig");
}

/// Copy the CA, serving keys and tokens of the server on `from` into `to`, as the README
/// says to for every further server on one store.
pub fn share_secrets(from: &Path, to: &Path) {
    let pki = to.join("pki");
    std::fs::create_dir_all(&pki).expect("the pki dir");
    for entry in std::fs::read_dir(from.join("pki")).expect("the first server's pki") {
        let entry = entry.expect("a pki file");
        std::fs::copy(entry.path(), pki.join(entry.file_name())).expect("copy pki");
    }
    std::fs::copy(from.join("tokens.json"), to.join("tokens.json")).expect("copy tokens");
}
