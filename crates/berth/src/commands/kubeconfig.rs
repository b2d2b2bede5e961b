//! `berth kubeconfig`: print an admin kubeconfig for a data dir's cluster, or with `--user` one
//! for a user whose rights RBAC gives.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_os_t = super::default_data_dir())]
    pub data_dir: std::path::PathBuf,
    /// The server URL to put in the kubeconfig.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub server: String,
    /// A kubeconfig for this user (with a token `berth token --user` would mint) instead of
    /// the admin.
    #[arg(long)]
    pub user: Option<String>,
    /// A group of `--user` (repeatable).
    #[arg(long, requires = "user")]
    pub group: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tokens = berth_apiserver::Tokens::load_or_create(&args.data_dir.join("tokens.json"))
        .context(
            "reading the tokens (has `berth up` or `berth server` run with this --data-dir?)",
        )?;
    let ca_path = berth_tls::TlsFiles::in_dir(&args.data_dir).ca_cert;
    let ca = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "reading the cluster CA {} (start the server once first)",
            ca_path.display()
        )
    })?;
    let token = match &args.user {
        Some(user) => {
            super::token::check_user(user)?;
            tokens.user_token(user, &args.group, None)
        }
        None => tokens.admin.clone(),
    };
    print!("{}", berth_apiserver::kubeconfig(&args.server, &ca, &token));
    Ok(())
}
