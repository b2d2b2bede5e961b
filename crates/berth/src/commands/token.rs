//! `berth token`: print the admin token, or with `--node` the node-join token.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_os_t = super::default_data_dir())]
    pub data_dir: std::path::PathBuf,
    /// Print the node-join token that agents present.
    #[arg(long)]
    pub node: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tokens = berth_apiserver::Tokens::load_or_create(&args.data_dir.join("tokens.json"))
        .context("reading the tokens")?;
    println!(
        "{}",
        if args.node {
            tokens.node_join
        } else {
            tokens.admin
        }
    );
    Ok(())
}
