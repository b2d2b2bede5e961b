//! What the service's DNS server (`crate::dns`) answers: the address of a running group's
//! `dnsNameLabel` fqdn, under the service's zone.

use super::Service;

impl Service {
    /// The address a running group's `dnsNameLabel` fqdn (lowercase, no trailing dot)
    /// stands for.
    pub fn resolve(&self, fqdn: &str) -> Option<std::net::Ipv4Addr> {
        let groups = self.registry.groups.lock().expect("groups");
        let holder = groups.values().find(|l| {
            let ip = l.group.properties.ip_address.as_ref();
            let label = ip.and_then(|i| i.dns_name_label.as_deref());
            !l.lifecycle.is_stopped()
                && label.is_some_and(|d| {
                    format!("{d}.{}.{}", l.group.location, self.cfg.dns_zone)
                        .eq_ignore_ascii_case(fqdn)
                })
        })?;
        self.host_of(&holder.uid).address.parse().ok()
    }

    pub fn dns_zone(&self) -> &str {
        &self.cfg.dns_zone
    }
}
