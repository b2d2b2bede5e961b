//! The `berth` binary: one file per subcommand under `commands/`, each a thin layer that
//! parses arguments and calls a library crate.

#[cfg(not(feature = "dhat-heap"))]
mod alloc;
mod commands;

#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOC: alloc::ByRole = alloc::ByRole;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A self-hosted container platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine (embedded store) and write a kubeconfig.
    Up(commands::up::Args),
    /// Run the API server (and, as they land, the scheduler and controllers).
    Server(commands::server::Args),
    /// Join a cluster as a node and run the pods bound to it.
    Agent(commands::agent::Args),
    /// Join a cluster as a virtual node whose pods run as container groups.
    Vnode(commands::vnode::Args),
    /// Run the container instances service (ACI-shaped container groups) on its own.
    Instances(commands::instances::Args),
    /// Manage container groups on the instances service, in the manner of `az container`.
    Container(commands::container::Args),
    /// One local address in front of several API servers (for kubectl).
    Front(commands::front::Args),
    /// Print a kubeconfig for the admin of a data dir.
    Kubeconfig(commands::kubeconfig::Args),
    /// Print the admin or node-join token of a data dir.
    Token(commands::token::Args),
}

fn main() -> anyhow::Result<()> {
    // No transparent huge pages: mimalloc asks for them on its arenas, and a 2 MiB page
    // behind a few bytes of heap made an idle agent 10 MiB larger (anonymous 11.7 -> 2.3 MiB).
    // Berth's heaps are small and long-lived; 4 KiB pages serve them.
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integers only and changes nothing but this flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // The agent waits on the network nearly all the time: one thread serves it, and each
    // thread more costs it resident memory (stack, and the allocator's pages per thread).
    let runtime = match cli.command {
        Command::Agent(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    // Dropped before the runtime: the profile's end shows what the running tasks hold.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    runtime.block_on(async {
        match cli.command {
            Command::Up(args) => commands::up::run(args).await,
            Command::Server(args) => commands::server::run(args).await,
            Command::Agent(args) => commands::agent::run(args).await,
            Command::Vnode(args) => commands::vnode::run(args).await,
            Command::Instances(args) => commands::instances::run(args).await,
            Command::Container(args) => commands::container::run(args).await,
            Command::Front(args) => commands::front::run(args).await,
            Command::Kubeconfig(args) => commands::kubeconfig::run(args),
            Command::Token(args) => commands::token::run(args),
        }
    })
}
