//! `berth up`: everything on this machine, embedded store, and a kubeconfig to use it.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = berth_apiserver::start(args.serve.config())
        .await
        .with_context(|| format!("starting Berth in {}", args.serve.data_dir.display()))?;
    let path = args.serve.data_dir.join("kubeconfig");
    let config = berth_apiserver::kubeconfig(&server.url(), &server.ca_pem, &server.tokens.admin);
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    println!("Berth is up: Kubernetes API at {}", server.url());
    println!("export KUBECONFIG={}", path.display());
    println!("Then try: kubectl get namespaces");
    super::shutdown_signal().await;
    server.shutdown();
    Ok(())
}
