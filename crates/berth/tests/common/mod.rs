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
}

fn start(dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen)
        .args(extra)
        .env("BERTH_LOG", "warn")
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
            "berth up did not come up within 30 s"
        );
        let line = lines
            .next()
            .expect("berth up exited before printing its URL")
            .expect("read berth's stdout");
        if let Some(url) = line.strip_prefix("Berth is up: Kubernetes API at ") {
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
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = start(dir.path(), "127.0.0.1:0", &extra);
        let listen = url.trim_start_matches("https://").to_string();
        Berth {
            child: Some(child),
            dir,
            listen,
            url,
            extra,
        }
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
