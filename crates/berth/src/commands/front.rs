//! `berth front`: one address in front of several API servers on one store, for clients
//! that take a single server (kubectl). Each connection goes on to the server the last one
//! reached, or to the next when that one does not answer; TLS passes through, so the
//! kubeconfig names the front's address (every server's certificate covers 127.0.0.1;
//! give others with `--tls-san` on the servers).

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: std::net::SocketAddr,
    /// The servers, `https://host:port` comma-separated.
    #[arg(long)]
    pub server: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let servers =
        berth_agent::front::servers(&args.server).map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    let front = berth_agent::front::start(args.listen, servers.clone())
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("berth front on {} for {}", front.url(), servers.join(", "));
    super::shutdown_signal().await;
    Ok(())
}
