//! Placement on the pool: which hosts hold a group's images, which has room and its
//! public ports free (least allocated first), and moving running groups off a host that
//! has stopped answering.

use std::time::Duration;

use berth_agent::runtime::PullPolicy;
use berth_core::aci::{ArmError, ContainerGroup};

use super::Service;
use crate::db::Key;

/// A group's ports on its Public IP address: (port, protocol).
pub(super) fn public_ports(g: &ContainerGroup) -> Vec<(i64, String)> {
    g.properties
        .ip_address
        .iter()
        .filter(|ip| ip.type_ == "Public")
        .flat_map(|ip| &ip.ports)
        .map(|p| {
            (
                p.port,
                p.protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_uppercase(),
            )
        })
        .collect()
}

/// Requests of a group: (vCPU, GB).
pub(super) fn requests(g: &ContainerGroup) -> (f64, f64) {
    g.properties
        .containers
        .iter()
        .map(|c| &c.properties.resources.requests)
        .fold((0.0, 0.0), |(c, m), r| (c + r.cpu, m + r.memory_in_gb))
}

impl Service {
    /// The hosts that answered their last listing; none is a 409 that says so.
    pub(super) fn answering_hosts(&self, name: &str) -> Result<Vec<usize>, ArmError> {
        let answering = self.pool.answering(std::time::Instant::now());
        if answering.is_empty() {
            return Err(ArmError::new(
                409,
                "ServiceUnavailable",
                format!("No host of the pool answers, so container group '{name}' cannot be placed; check that the hosts' engines run and are reachable, then retry."),
            ));
        }
        Ok(answering)
    }

    /// Which of `hosts` hold every image of `g`; none is an error naming the first image
    /// missing (there is no registry to pull from).
    pub(super) async fn check_images(
        &self,
        g: &ContainerGroup,
        name: &str,
        hosts: &[usize],
    ) -> Result<Vec<usize>, ArmError> {
        let mut holding = Vec::new();
        let mut first_missing = None;
        for &h in hosts {
            match self.missing_image(g, name, h).await {
                None => holding.push(h),
                Some(e) => {
                    first_missing.get_or_insert(e);
                }
            }
        }
        match first_missing {
            Some(e) if holding.is_empty() => Err(e),
            _ => Ok(holding),
        }
    }

    /// The error for the first image of `g` that host `h` lacks.
    async fn missing_image(&self, g: &ContainerGroup, name: &str, h: usize) -> Option<ArmError> {
        let host = &self.pool.hosts()[h];
        let where_ = if self.pool.hosts().len() == 1 {
            "on this host".to_string()
        } else {
            format!(
                "on any host of the pool (looked on host '{}' and the rest)",
                host.name
            )
        };
        let all = g
            .properties
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("properties.containers[{i}]"), c))
            .chain(
                g.properties
                    .init_containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("properties.initContainers[{i}]"), c)),
            );
        for (at, c) in all {
            let image = &c.properties.image;
            if host
                .runtime
                .ensure_image(image, PullPolicy::Never)
                .await
                .is_err()
            {
                return Some(ArmError::bad(
                    "InaccessibleImage",
                    format!("{at}.properties.image"),
                    format!("The image '{image}' of container '{}' in container group '{name}' is not {where_} and there is no registry to pull it from; build or load it first (docker build / docker load).", c.name),
                ));
            }
        }
        None
    }

    /// The host for a new group among `candidates` (hosts holding its images): one where its
    /// public ports are free and its requests fit beside the running groups, the least
    /// allocated first (the larger free share of CPU or memory, whichever is scarcer).
    pub(super) fn choose_host(
        &self,
        g: &ContainerGroup,
        name: &str,
        candidates: &[usize],
    ) -> Result<usize, ArmError> {
        let (cpu, mem) = requests(g);
        let ports = public_ports(g);
        let hosts = self.pool.hosts();
        let mut used = vec![(0.0f64, 0.0f64, Vec::new()); hosts.len()];
        for l in self.registry.groups.lock().expect("groups").values() {
            if l.lifecycle.is_stopped() {
                continue;
            }
            let (c, m) = requests(&l.group);
            let u = &mut used[self.placement(&l.uid)];
            u.0 += c;
            u.1 += m;
            u.2.extend(public_ports(&l.group));
        }
        let mut best: Option<(f64, usize)> = None;
        let mut why = Vec::new();
        for &h in candidates {
            let host = &hosts[h];
            let (free_cpu, free_mem) = (host.cpu - used[h].0, host.memory_gb - used[h].1);
            let taken: Vec<String> = ports
                .iter()
                .filter(|p| used[h].2.contains(p))
                .map(|(p, proto)| format!("{p}/{proto}"))
                .collect();
            if !taken.is_empty() {
                why.push(format!(
                    "{}: public port {} taken",
                    host.name,
                    taken.join(", ")
                ));
                continue;
            }
            if cpu > free_cpu + 1e-9 || mem > free_mem + 1e-9 {
                why.push(format!(
                    "{}: {:.2} CPU and {:.2} GB free",
                    host.name,
                    free_cpu.max(0.0),
                    free_mem.max(0.0)
                ));
                continue;
            }
            let score = ((free_cpu - cpu) / host.cpu).min((free_mem - mem) / host.memory_gb);
            if best.is_none_or(|(s, _)| score > s + 1e-12) {
                best = Some((score, h));
            }
        }
        best.map(|(_, h)| h).ok_or_else(|| {
            ArmError::new(
                409,
                "ServiceUnavailable",
                format!(
                    "The requested resource is not available for container group '{name}': {cpu} CPU and {mem} GB memory with public ports [{}] fit on no host that holds its images ({}). Retry with a smaller request or other ports, stop or delete a group, or add a host to the pool.",
                    ports.iter().map(|(p, proto)| format!("{p}/{proto}")).collect::<Vec<_>>().join(", "),
                    why.join("; ")
                ),
            )
        })
    }

    /// Move every running group of a host silent for longer than the grace to a host that
    /// answers and has its images, room and ports; called under the tick lock. A group with
    /// nowhere to go waits on its host, and its events say why.
    pub(super) async fn move_off_silent_hosts(&self, draining: &std::collections::HashSet<String>) {
        let now = std::time::Instant::now();
        let hosts = self.pool.hosts();
        let silent: Vec<Option<Duration>> = (0..hosts.len())
            .map(|h| self.pool.silent_for(h, now))
            .collect();
        if !silent
            .iter()
            .any(|s| s.is_some_and(|d| d >= self.cfg.host_grace))
        {
            return;
        }
        let answering = self.pool.answering(now);
        let stranded: Vec<(Key, String, ContainerGroup, usize)> = {
            let groups = self.registry.groups.lock().expect("groups");
            groups
                .iter()
                .filter(|(_, l)| !l.lifecycle.is_stopped() && !draining.contains(&l.uid))
                .filter_map(|(k, l)| {
                    let h = self.pool.placement(&l.uid)?;
                    silent[h]
                        .is_some_and(|d| d >= self.cfg.host_grace)
                        .then(|| (k.clone(), l.uid.clone(), l.group.clone(), h))
                })
                .collect()
        };
        let told = !stranded.is_empty();
        for (key, uid, group, from) in stranded {
            let from_name = hosts[from].name.clone();
            let grace_s = self.cfg.host_grace.as_secs();
            let chosen = match self.check_images(&group, &key.name, &answering).await {
                Ok(candidates) => self.choose_host(&group, &key.name, &candidates),
                Err(e) => Err(e),
            };
            let to = match chosen {
                Ok(to) => to,
                Err(e) => {
                    let message = format!("Host '{from_name}' has not answered for {grace_s} s or more and the group fits on no other host: {}", e.message);
                    self.group_event(&key, "Warning", "HostUnreachable", &message);
                    continue;
                }
            };
            let to_name = hosts[to].name.clone();
            if let Err(e) = self.db.set_host(&key, &to_name) {
                tracing::warn!(group = %key.name, error = %berth_core::error::Chain(&e), "storing a group's new host failed");
                continue;
            }
            self.pool.assign(&uid, to);
            tracing::warn!(group = %key.name, from = %from_name, to = %to_name, "moved a group off a host that does not answer");
            self.with_group(&key, |l| l.status = None).ok();
            let message = format!("Host '{from_name}' has not answered for {grace_s} s or more: the group was moved to host '{to_name}' and is started there");
            self.group_event(&key, "Warning", "Rescheduled", &message);
        }
        if told {
            self.registry.bump();
        }
    }

    /// Record an event of the group itself (not of one of its containers).
    pub(super) fn group_event(&self, key: &Key, type_: &str, reason: &str, message: &str) {
        let _ = self.with_group(key, |l| l.record(String::new(), type_, reason, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Host;
    use crate::pool::Pool;
    use crate::service::{Config, Prices};
    use berth_agent::runtime::mock::MockRuntime;
    use serde_json::json;
    use std::sync::Arc;

    fn group(cpu: f64, port: i64) -> ContainerGroup {
        serde_json::from_value(json!({"location": "eastus", "properties": {"osType": "Linux",
            "ipAddress": {"type": "Public", "ports": [{"port": port}]},
            "containers": [{"name": "c", "properties": {"image": "busybox", "ports": [{"port": port}],
                "resources": {"requests": {"cpu": cpu, "memoryInGB": 1.0}}}}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn groups_go_to_the_least_allocated_host_with_room_and_their_port_free() {
        let dir = tempfile::tempdir().unwrap();
        let host = |name: &str, cpu: f64| Host {
            name: name.into(),
            address: format!("10.0.0.{}", cpu as u8),
            cpu,
            memory_gb: 8.0,
            runtime: Arc::new(MockRuntime::new()),
        };
        let pool = Arc::new(Pool::new(vec![host("a", 2.0), host("b", 4.0)]).unwrap());
        let svc = Service::open(
            Config {
                data_dir: dir.path().to_path_buf(),
                dns_zone: "z".into(),
                prices: Prices::default(),
                resync: Duration::from_secs(1),
                host_grace: Duration::from_secs(30),
            },
            pool,
        )
        .unwrap();
        let key = |n: &str| Key {
            sub: "s".into(),
            rg: "rg".into(),
            name: n.into(),
        };
        let ip = |n: &str| {
            svc.get(&key(n))
                .unwrap()
                .properties
                .ip_address
                .unwrap()
                .ip
                .unwrap()
        };
        // b keeps the larger share free (3 of 4 against 1 of 2).
        svc.put(&key("g1"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g1"), "10.0.0.4");
        // Port 80 is taken on b.
        svc.put(&key("g2"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g2"), "10.0.0.2");
        // a has 1 CPU left, too little.
        svc.put(&key("g3"), group(1.5, 81)).await.unwrap();
        assert_eq!(ip("g3"), "10.0.0.4");
        let e = svc.put(&key("g4"), group(2.0, 80)).await.unwrap_err();
        assert_eq!((e.status, &*e.code), (409, "ServiceUnavailable"), "{e:?}");
        assert!(
            e.message.contains("a: public port 80/TCP taken") || e.message.contains("a: 1.00 CPU"),
            "{}",
            e.message
        );
        assert!(svc.get(&key("g4")).is_err(), "a refused group was stored");
        // A stopped group gives its port and room back, and needs them again to start.
        svc.stop(&key("g2")).await.unwrap();
        svc.put(&key("g5"), group(1.0, 80)).await.unwrap();
        assert_eq!(ip("g5"), "10.0.0.2");
        let e = svc.start(&key("g2")).await.unwrap_err();
        assert_eq!(&*e.code, "ServiceUnavailable", "{e:?}");
        svc.delete(&key("g5")).await.unwrap();
        svc.start(&key("g2")).await.unwrap();
        assert_eq!(ip("g2"), "10.0.0.2");
    }
}
