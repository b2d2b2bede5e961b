//! Local etcd members on loopback ports, each with its data in a directory of its own that
//! goes with it: what the etcd store's tests, and the server's tests on etcd, run against
//! (Debian's `etcd-server` provides the binary).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// One running member; killed, and its data removed, when dropped.
pub struct Member {
    child: Child,
    /// `http://127.0.0.1:<port>`: where clients reach it.
    pub client_url: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Start `n` members forming one cluster, with progress notifications every second (the
/// API's BOOKMARKs). Panics, saying how to get etcd, when it is not on `PATH`.
pub fn cluster(n: usize) -> Vec<Member> {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "etcd is not on PATH: `apt-get install etcd-server` (./scripts/test.sh installs it)"
    );
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let token = format!("berth-{}-{}", std::process::id(), ports[0].0);
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let dir = std::env::temp_dir().join(format!("{token}-m{i}"));
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(&dir)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .args(["--experimental-watch-progress-notify-interval", "1s"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd starts");
            Member {
                child,
                client_url,
                dir,
            }
        })
        .collect()
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which of `members` leads the cluster now (a leader is chosen within a few seconds of
/// the cluster's start).
pub async fn leader(members: &[Member]) -> usize {
    for _ in 0..100 {
        for (i, m) in members.iter().enumerate() {
            let Ok(mut c) = etcd_client::Client::connect([m.client_url.as_str()], None).await
            else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            if status.leader() != 0
                && status.header().map(|h| h.member_id()) == Some(status.leader())
            {
                return i;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no etcd member led the cluster within 10 s")
}
