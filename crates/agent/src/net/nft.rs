//! nftables, through the `nft` program (as kube-proxy's nftables mode drives it): a script
//! is one transaction, so a table replaced by one script is never seen half written.
//! Behind a trait so the proxy's loop is tested with a recording fake.

use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft failed (is the nftables package installed, and the agent root?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the rules: {stderr}")]
    Refused { stderr: String },
}

#[async_trait::async_trait]
pub trait Nft: Send + Sync {
    /// Run one script as one transaction.
    async fn apply(&self, script: &str) -> Result<(), NftError>;
}

/// The kernel's nftables, through `nft -f -`.
pub struct Kernel;

#[async_trait::async_trait]
impl Nft for Kernel {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(NftError::Spawn)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(NftError::Spawn)?;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NftError::Refused {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// A fake that keeps every script it is given.
#[derive(Default)]
pub struct Recording {
    pub scripts: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Nft for Recording {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        self.scripts
            .lock()
            .expect("scripts")
            .push(script.to_string());
        Ok(())
    }
}

/// The script that removes `table` (family ip) if it is there.
pub fn delete_table(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// A table name for `node`: nft identifiers take letters, digits and `_-./`.
pub fn table_for(node: &str) -> String {
    let clean: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("berth-{clean}")
}
