//! The instances service's `/metrics` (prometheus-client): its groups by state and what the
//! meter has counted, read from the service at each scrape.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::Service;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

pub struct Telemetry {
    registry: Registry,
    groups: Family<StateLabel, Gauge>,
    vcpu_seconds: FloatCounter,
    gb_seconds: FloatCounter,
    /// The meter's totals at the last scrape: each scrape adds what came since.
    counted: Mutex<(f64, f64)>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let groups = Family::<StateLabel, Gauge>::default();
        registry.register(
            "berth_instances_container_groups",
            "Container groups held, by provisioning state (Stopped for stopped ones)",
            groups.clone(),
        );
        let vcpu_seconds = FloatCounter::default();
        registry.register(
            "berth_instances_metered_vcpu_seconds",
            "vCPU-seconds the meter has counted",
            vcpu_seconds.clone(),
        );
        let gb_seconds = FloatCounter::default();
        registry.register(
            "berth_instances_metered_memory_gb_seconds",
            "Memory GB-seconds the meter has counted",
            gb_seconds.clone(),
        );
        Telemetry {
            registry,
            groups,
            vcpu_seconds,
            gb_seconds,
            counted: Mutex::new((0.0, 0.0)),
        }
    }
}

impl Telemetry {
    /// The text format, as the service stands now.
    pub fn render(&self, service: &Arc<Service>) -> String {
        // One scrape at a time: the gauges are cleared and refilled.
        let mut counted = self.counted.lock().expect("counted");
        self.groups.clear();
        for (state, n) in service.group_states() {
            self.groups
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        if let Ok((cpu, gb)) = service.metered() {
            // A counter only goes up: a total read lower (a deleted meter row) adds nothing.
            self.vcpu_seconds.inc_by((cpu - counted.0).max(0.0));
            self.gb_seconds.inc_by((gb - counted.1).max(0.0));
            *counted = (cpu.max(counted.0), gb.max(counted.1));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("text encoding into a String");
        out
    }
}
