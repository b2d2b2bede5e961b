//! `berth container ...`: container groups from the command line, in the manner of
//! `az container`. A client of the instances API (`berth instances` or `berth up`).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_aci_client::{Client, ClientError, GroupRef};
use berth_core::aci::{
    ContainerDef, ContainerGroup, ContainerProperties, EnvVar, GroupProperties, IpAddress, Port,
    ResourceAmounts, Resources,
};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Verb,
    /// The client config `berth instances`/`berth up` writes (server, token, CA).
    #[arg(long, global = true, env = "BERTH_INSTANCES_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data dir whose `instances.json` to use when --config is not given.
    #[arg(long, global = true, default_value_os_t = super::default_data_dir())]
    pub data_dir: PathBuf,
    /// The subscription the groups belong to.
    #[arg(
        long,
        global = true,
        env = "BERTH_SUBSCRIPTION",
        default_value = "default"
    )]
    pub subscription: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The resource group.
    #[arg(long, short = 'g')]
    pub resource_group: String,
    /// The container group's name.
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Create (or update) a container group of one container and wait until it runs.
    Create(Box<CreateArgs>),
    /// List container groups (of one resource group with -g).
    List {
        #[arg(long, short = 'g')]
        resource_group: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one container group.
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Print a container's output (--follow keeps streaming).
    Logs {
        #[command(flatten)]
        target: Target,
        /// The container (default: the group's first).
        #[arg(long)]
        container_name: Option<String>,
        #[arg(long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Run a command in a running container, attached to this terminal.
    Exec {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        container_name: Option<String>,
        #[arg(long, default_value = "/bin/sh")]
        exec_command: String,
    },
    /// Stream a container's output until it ends (or Ctrl-C).
    Attach {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        container_name: Option<String>,
    },
    /// Restart every container of a group in place.
    Restart(Target),
    /// Stop every container of a group; billing stops.
    Stop(Target),
    /// Start a stopped group and wait until it runs.
    Start(Target),
    /// Delete a group.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Billed vCPU-seconds, GB-seconds and cost, per group.
    Usage {
        #[arg(long, short = 'g')]
        resource_group: Option<String>,
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// Window start (RFC 3339).
        #[arg(long)]
        start_time: Option<String>,
        /// Window end (RFC 3339; default now).
        #[arg(long)]
        end_time: Option<String>,
        /// Sum per group, or per Kubernetes namespace or workload of the virtual node's
        /// pods (from the tags it puts on their groups).
        #[arg(long, value_enum, default_value_t = By::Group)]
        by: By,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Group,
    Namespace,
    Workload,
}

/// Usage rows summed per namespace or per namespace and workload, from the groups' tags
/// (`berth.dev/namespace`, `berth.dev/workload`); groups without them sum under `-`.
fn usage_by(u: &Value, by: By) -> Value {
    let mut sums: std::collections::BTreeMap<(String, String), [f64; 3]> = Default::default();
    for r in u["value"].as_array().into_iter().flatten() {
        let tag = |k: &str| r["tags"][k].as_str().unwrap_or("-").to_string();
        let key = match by {
            By::Namespace => (tag("berth.dev/namespace"), String::new()),
            By::Workload => (tag("berth.dev/namespace"), tag("berth.dev/workload")),
            By::Group => (
                r["resourceGroup"].as_str().unwrap_or("").to_string(),
                r["containerGroup"].as_str().unwrap_or("").to_string(),
            ),
        };
        let s = sums.entry(key).or_default();
        for (i, k) in ["vcpuSeconds", "memoryGbSeconds", "cost"]
            .iter()
            .enumerate()
        {
            s[i] += r[*k].as_f64().unwrap_or(0.0);
        }
    }
    let value: Vec<Value> = sums
        .into_iter()
        .map(|((a, b), s)| {
            serde_json::json!({"namespace": a, "workload": b, "vcpuSeconds": s[0],
                "memoryGbSeconds": s[1], "cost": s[2], "currency": u["total"]["currency"]})
        })
        .collect();
    serde_json::json!({"from": u["from"], "to": u["to"], "value": value, "total": u["total"]})
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub image: String,
    /// vCPUs requested (and enforced as the limit).
    #[arg(long, default_value_t = 1.0)]
    pub cpu: f64,
    /// GB of memory requested (and enforced as the limit).
    #[arg(long, default_value_t = 1.5)]
    pub memory: f64,
    /// Ports the container listens on.
    #[arg(long, num_args = 1..)]
    pub ports: Vec<i64>,
    /// `Public` publishes the ports on this host's address.
    #[arg(long)]
    pub ip_address: Option<String>,
    #[arg(long)]
    pub dns_name_label: Option<String>,
    #[arg(long, default_value = "Always")]
    pub restart_policy: String,
    /// KEY=VALUE pairs.
    #[arg(long, short = 'e', num_args = 1..)]
    pub environment_variables: Vec<String>,
    /// KEY=VALUE pairs never shown again by the API.
    #[arg(long, num_args = 1..)]
    pub secure_environment_variables: Vec<String>,
    /// The command to run, split as a shell would.
    #[arg(long)]
    pub command_line: Option<String>,
    #[arg(long, short = 'l', default_value = "eastus")]
    pub location: String,
    #[arg(long, default_value = "Linux")]
    pub os_type: String,
    /// Return once the group is accepted, without waiting for it to run.
    #[arg(long)]
    pub no_wait: bool,
}

fn client(args: &Args) -> anyhow::Result<Client> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| args.data_dir.join("instances.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (start the service with `berth up` or `berth instances`, or pass --config)",
            path.display()
        )
    })?;
    let cfg: super::instances::ClientConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an instances client config", path.display()))?;
    let ca = std::fs::read_to_string(&cfg.ca_file)
        .with_context(|| format!("reading the CA {}", cfg.ca_file.display()))?;
    Ok(Client::new(&cfg.server, &cfg.token, &ca))
}

fn env_pairs(pairs: &[String], secure: bool) -> anyhow::Result<Vec<EnvVar>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("environment variable {p:?} is not KEY=VALUE"))?;
            Ok(EnvVar {
                name: k.into(),
                value: (!secure).then(|| v.into()),
                secure_value: secure.then(|| v.into()),
            })
        })
        .collect()
}

fn group_of(a: &CreateArgs) -> anyhow::Result<ContainerGroup> {
    let command = match &a.command_line {
        None => vec![],
        Some(c) => shlex::split(c)
            .with_context(|| format!("--command-line {c:?} has unbalanced quotes"))?,
    };
    let mut env = env_pairs(&a.environment_variables, false)?;
    env.extend(env_pairs(&a.secure_environment_variables, true)?);
    let ports: Vec<Port> = a
        .ports
        .iter()
        .map(|p| Port {
            protocol: None,
            port: *p,
        })
        .collect();
    let ip_address = (a.ip_address.is_some() || a.dns_name_label.is_some()).then(|| IpAddress {
        ports: ports.clone(),
        type_: a.ip_address.clone().unwrap_or_else(|| "Public".into()),
        dns_name_label: a.dns_name_label.clone(),
        ..Default::default()
    });
    Ok(ContainerGroup {
        location: a.location.clone(),
        properties: GroupProperties {
            containers: vec![ContainerDef {
                name: a.target.name.clone(),
                properties: ContainerProperties {
                    image: a.image.clone(),
                    command,
                    ports,
                    environment_variables: env,
                    resources: Resources {
                        requests: ResourceAmounts {
                            memory_in_gb: a.memory,
                            cpu: a.cpu,
                        },
                        limits: None,
                    },
                    ..Default::default()
                },
            }],
            restart_policy: Some(a.restart_policy.clone()),
            ip_address,
            os_type: a.os_type.clone(),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn state(g: &ContainerGroup) -> String {
    let p = &g.properties;
    let iv = p
        .instance_view
        .as_ref()
        .and_then(|v| v["state"].as_str())
        .unwrap_or("");
    format!("{} ({})", iv, p.provisioning_state.as_deref().unwrap_or(""))
}

fn print(value: &impl serde::Serialize, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

fn table(groups: &[ContainerGroup]) {
    let rows: Vec<[String; 8]> = groups
        .iter()
        .map(|g| {
            let p = &g.properties;
            let rg =
                g.id.as_deref()
                    .and_then(|id| id.split("/resourceGroups/").nth(1))
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("")
                    .to_string();
            let images: Vec<&str> = p
                .containers
                .iter()
                .map(|c| c.properties.image.as_str())
                .collect();
            let ip = p
                .ip_address
                .as_ref()
                .map(|i| {
                    let ports: Vec<String> = i.ports.iter().map(|p| p.port.to_string()).collect();
                    format!("{}:{}", i.ip.clone().unwrap_or_default(), ports.join(","))
                })
                .unwrap_or_default();
            let (cpu, mem) = p.containers.iter().fold((0.0, 0.0), |(c, m), x| {
                let r = &x.properties.resources.requests;
                (c + r.cpu, m + r.memory_in_gb)
            });
            [
                g.name.clone().unwrap_or_default(),
                rg,
                p.instance_view
                    .as_ref()
                    .and_then(|v| v["state"].as_str())
                    .unwrap_or("")
                    .to_string(),
                images.join(","),
                ip,
                format!("{cpu} core/{mem} gb"),
                p.os_type.clone(),
                g.location.clone(),
            ]
        })
        .collect();
    let head = [
        "Name",
        "ResourceGroup",
        "Status",
        "Image",
        "IP:ports",
        "CPU/Memory",
        "OsType",
        "Location",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Follow an operation with a one-line progress display on stderr.
async fn wait(c: &Client, g: &GroupRef, op: Option<String>, what: &str) -> anyhow::Result<()> {
    let Some(op) = op else { return Ok(()) };
    let started = std::time::Instant::now();
    let mut err = std::io::stderr();
    let mut last = String::new();
    let spin = ["|", "/", "-", "\\"];
    let mut n = 0;
    let result = loop {
        let current = c.get(g).await.map(|g| state(&g)).unwrap_or_default();
        if current != last || n % 4 == 0 {
            let _ = write!(err, "\r{} {what} {} ... {current}   ", spin[n % 4], g.name);
            let _ = err.flush();
            last = current;
        }
        n += 1;
        match tokio::time::timeout(std::time::Duration::from_millis(250), c.wait(&op, || {})).await
        {
            Ok(r) => break r,
            Err(_) => continue,
        }
    };
    let _ = writeln!(
        err,
        "\r{what} {}: {} in {:.1} s        ",
        g.name,
        if result.is_ok() { "done" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    result.map_err(explain)
}

/// A client error with what to do about it.
fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Arm(a) => match a.target {
            Some(t) => anyhow::anyhow!("({}) {}\nTarget: {t}", a.code, a.message),
            None => anyhow::anyhow!("({}) {}", a.code, a.message),
        },
        other => anyhow::Error::new(other),
    }
}

async fn first_container(c: &Client, g: &GroupRef, name: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = name {
        return Ok(n);
    }
    let group = c.get(g).await.map_err(explain)?;
    group
        .properties
        .containers
        .first()
        .map(|c| c.name.clone())
        .context("the group has no containers")
}

fn stdout_bytes(b: &[u8]) {
    let mut out = std::io::stdout();
    let _ = out.write_all(b);
    let _ = out.flush();
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let c = client(&args)?;
    let sub = args.subscription.clone();
    let at = |t: &Target| GroupRef {
        sub: sub.clone(),
        rg: t.resource_group.clone(),
        name: t.name.clone(),
    };
    match args.command {
        Verb::Create(a) => {
            let g = at(&a.target);
            let (_, op) = c.put(&g, &group_of(&a)?).await.map_err(explain)?;
            if !a.no_wait {
                wait(&c, &g, op, "creating").await?;
            }
            print(&c.get(&g).await.map_err(explain)?, Output::Json)?;
        }
        Verb::List {
            resource_group,
            output,
        } => {
            let groups = c
                .list(&sub, resource_group.as_deref())
                .await
                .map_err(explain)?;
            match output {
                Output::Table => table(&groups),
                o => print(&groups, o)?,
            }
        }
        Verb::Show { target, output } => {
            let g = c.get(&at(&target)).await.map_err(explain)?;
            match output {
                Output::Table => table(&[g]),
                o => print(&g, o)?,
            }
        }
        Verb::Logs {
            target,
            container_name,
            follow,
            tail,
        } => {
            let g = at(&target);
            let name = first_container(&c, &g, container_name).await?;
            print!("{}", c.logs(&g, &name, tail, false).await.map_err(explain)?);
            if follow {
                c.connect(&g, &name, None, futures::stream::pending(), stdout_bytes)
                    .await
                    .map_err(explain)?;
            }
        }
        Verb::Attach {
            target,
            container_name,
        } => {
            let g = at(&target);
            let name = first_container(&c, &g, container_name).await?;
            c.connect(&g, &name, None, futures::stream::pending(), stdout_bytes)
                .await
                .map_err(explain)?;
        }
        Verb::Exec {
            target,
            container_name,
            exec_command,
        } => {
            let g = at(&target);
            let name = first_container(&c, &g, container_name).await?;
            let (tx, rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
            std::thread::spawn(move || {
                use std::io::Read as _;
                let mut stdin = std::io::stdin();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || tx.unbounded_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
            c.connect(&g, &name, Some(&exec_command), rx, stdout_bytes)
                .await
                .map_err(explain)?;
        }
        Verb::Restart(t) => {
            c.action(&at(&t), "restart").await.map_err(explain)?;
        }
        Verb::Stop(t) => {
            c.action(&at(&t), "stop").await.map_err(explain)?;
        }
        Verb::Start(t) => {
            let g = at(&t);
            let op = c.action(&g, "start").await.map_err(explain)?;
            wait(&c, &g, op, "starting").await?;
        }
        Verb::Delete { target, yes } => {
            if !yes {
                bail!("deleting container group {} needs --yes", target.name);
            }
            let g = at(&target);
            if !c.delete(&g).await.map_err(explain)? {
                eprintln!("container group {} did not exist", target.name);
            }
        }
        Verb::Usage {
            resource_group,
            name,
            start_time,
            end_time,
            by,
            output,
        } => {
            let mut window = Vec::new();
            if let Some(s) = start_time {
                window.push(format!("from={s}"));
            }
            if let Some(e) = end_time {
                window.push(format!("to={e}"));
            }
            let u = c
                .usage(
                    &sub,
                    resource_group.as_deref(),
                    name.as_deref(),
                    &window.join("&"),
                )
                .await
                .map_err(explain)?;
            let (u, columns) = match by {
                By::Group => (u, ["resourceGroup", "containerGroup"]),
                By::Namespace => (usage_by(&u, by), ["namespace", "workload"]),
                By::Workload => (usage_by(&u, by), ["namespace", "workload"]),
            };
            match output {
                Output::Table => usage_table(&u, columns),
                o => print(&u, o)?,
            }
        }
    }
    Ok(())
}

/// The usage rows as a table; `columns`: the two naming each row (their JSON keys).
fn usage_table(u: &Value, columns: [&str; 2]) {
    let title = |k: &str| match k {
        "resourceGroup" => "ResourceGroup",
        "containerGroup" => "Name",
        "namespace" => "Namespace",
        _ => "Workload",
    };
    println!(
        "{:<20} {:<32} {:>14} {:>16} {:>12}",
        title(columns[0]),
        title(columns[1]),
        "vCPU-seconds",
        "GB-seconds",
        "Cost"
    );
    let cur = u["total"]["currency"].as_str().unwrap_or("");
    for r in u["value"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<32} {:>14.1} {:>16.1} {:>8.6} {cur}",
            r[columns[0]].as_str().unwrap_or(""),
            r[columns[1]].as_str().unwrap_or(""),
            r["vcpuSeconds"].as_f64().unwrap_or(0.0),
            r["memoryGbSeconds"].as_f64().unwrap_or(0.0),
            r["cost"].as_f64().unwrap_or(0.0),
        );
    }
    let t = &u["total"];
    println!(
        "{:<20} {:<32} {:>14.1} {:>16.1} {:>8.6} {cur}",
        "total",
        "",
        t["vcpuSeconds"].as_f64().unwrap_or(0.0),
        t["memoryGbSeconds"].as_f64().unwrap_or(0.0),
        t["cost"].as_f64().unwrap_or(0.0),
    );
}
