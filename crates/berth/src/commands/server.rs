//! `berth server`: the API server on this machine's store.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
    #[command(flatten)]
    pub control: super::ControlArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.control.settings()?;
    let server = berth_apiserver::start(args.serve.config()?)
        .await
        .with_context(|| {
            format!(
                "starting the API server in {}",
                args.serve.data_dir.display()
            )
        })?;
    let control_plane =
        super::start_control_plane(&server, &args.serve.data_dir, &args.control).await?;
    println!("berth server listening on {}", server.url());
    println!(
        "node-join token: berth token --data-dir {} --node",
        args.serve.data_dir.display()
    );
    super::shutdown_signal().await;
    // The loops first, then the API and the store under them.
    control_plane.abort();
    let _ = control_plane.await;
    server.shutdown().await;
    Ok(())
}
