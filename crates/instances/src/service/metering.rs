//! Metering: what a group's running time costs, from the meter's intervals in the
//! database, and the subscription's counts for `usages`.

use jiff::Timestamp;

use super::placement::requests;
use super::{internal, now_ms, Service};
use crate::db::Usage;
use berth_core::aci::ArmError;

/// What a vCPU-second and a GB-second cost.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    pub currency: String,
    pub vcpu_second: f64,
    pub gb_second: f64,
}

impl Default for Prices {
    /// ACI's published Linux pay-as-you-go rates in East US.
    fn default() -> Self {
        Prices {
            currency: "USD".into(),
            vcpu_second: 0.0000135,
            gb_second: 0.0000015,
        }
    }
}

impl Service {
    pub fn prices(&self) -> &Prices {
        &self.cfg.prices
    }

    /// Billed usage per group in `[from, to)`.
    pub fn usage(
        &self,
        sub: &str,
        rg: Option<&str>,
        name: Option<&str>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Usage>, ArmError> {
        self.db
            .usage(
                sub,
                rg,
                name,
                from.as_millisecond(),
                to.as_millisecond(),
                now_ms(),
            )
            .map_err(internal)
    }

    /// Everything metered so far: (vCPU-seconds, GB-seconds).
    pub fn metered(&self) -> Result<(f64, f64), ArmError> {
        self.db.totals(now_ms()).map_err(internal)
    }

    /// Groups held now, by provisioning state (`Stopped` for stopped ones).
    pub fn group_states(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let groups = self.registry.groups.lock().expect("groups");
        let mut by = std::collections::BTreeMap::new();
        for l in groups.values() {
            let state = if l.lifecycle.is_stopped() {
                "Stopped"
            } else {
                l.lifecycle.provisioning_state()
            };
            *by.entry(state).or_insert(0) += 1;
        }
        by
    }

    /// How many groups a subscription holds, for `locations/{l}/usages`.
    pub fn count(&self, sub: &str) -> (usize, f64) {
        let groups = self.registry.groups.lock().expect("groups");
        let mine = groups.iter().filter(|(k, _)| k.sub == sub);
        let cpu: f64 = mine
            .clone()
            .filter(|(_, l)| !l.lifecycle.is_stopped())
            .map(|(_, l)| requests(&l.group).0)
            .sum();
        (mine.count(), cpu)
    }
}
