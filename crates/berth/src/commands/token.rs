//! `berth token`: print the admin token, with `--node` the node-join token, or with `--user`
//! a signed token for a user (and `--group`s) whose rights RBAC bindings give.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_os_t = super::default_data_dir())]
    pub data_dir: std::path::PathBuf,
    /// Print the node-join token that agents present.
    #[arg(long, conflicts_with = "user")]
    pub node: bool,
    /// Mint a token for this user name (it may do what RoleBindings and ClusterRoleBindings
    /// to the user or its groups allow).
    #[arg(long)]
    pub user: Option<String>,
    /// A group the user is in (repeatable).
    #[arg(long, requires = "user")]
    pub group: Vec<String>,
    /// How long the user token is valid, e.g. `24h`, `30m`, `7d` (default: no expiry).
    #[arg(long, requires = "user", value_parser = parse_duration)]
    pub expires: Option<std::time::Duration>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write a number and s, m, h or d (24h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// A user name a token may carry: not empty, and not one of the `system:` names of nodes and
/// ServiceAccounts.
pub fn check_user(user: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.starts_with("system:") {
        anyhow::bail!(
            "--user {user:?}: a user name may not be empty or start with \"system:\" (those name nodes and service accounts)"
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tokens = berth_apiserver::Tokens::load_or_create(&args.data_dir.join("tokens.json"))
        .context("reading the tokens")?;
    if let Some(user) = &args.user {
        check_user(user)?;
        println!("{}", tokens.user_token(user, &args.group, args.expires));
        return Ok(());
    }
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
