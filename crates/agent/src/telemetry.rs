//! The agent's `/metrics` (prometheus-client, the kubelet's names): how long pods take to
//! start, and what runs on the node now.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::runtime::{Observed, State};

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pod_start: Histogram,
    running_pods: Gauge,
    running_containers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // 50 ms to about 27 minutes.
        let pod_start = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "From a pod's creation to its first Running status written by this node",
            pod_start.clone(),
        );
        let running_pods = Gauge::default();
        registry.register(
            "kubelet_running_pods",
            "Pods with a running sandbox on this node",
            running_pods.clone(),
        );
        let running_containers = Gauge::default();
        registry.register(
            "kubelet_running_containers",
            "Containers running on this node",
            running_containers.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            pod_start,
            running_pods,
            running_containers,
        }
    }
}

impl Metrics {
    /// A pod was seen Running for the first time, `took` after it was created.
    pub fn pod_started(&self, took: Duration) {
        self.pod_start.observe(took.as_secs_f64());
    }

    /// The text format, with the gauges read from what the runtime holds now.
    pub fn render(&self, observed: &Observed) -> String {
        let pods = observed.sandboxes.iter().filter(|s| s.running).count();
        let containers = observed
            .containers
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .count();
        self.running_pods.set(pods as i64);
        self.running_containers.set(containers as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("text encoding into a String");
        out
    }
}
