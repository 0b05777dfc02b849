//! SLOs as planning and the agent configuration see them: the probe they
//! watch, the threshold the kernel counts exactly, and the drop rate they
//! tolerate. Pure.

use ringwarden_crds::{Slo, Threshold};

/// One valid SLO, reduced to what planning and the agents need.
#[derive(Clone, Debug, PartialEq)]
pub struct SloTarget {
    /// The namespace of the ProbeSet it watches: the SLO's own, or empty
    /// for a ClusterProbeSet.
    pub namespace: String,
    /// `namespace/name`, as thresholds name it.
    pub id: String,
    /// The SLO's own namespace, which a ClusterProbeSet's
    /// `spec.sloNamespaces` must list.
    pub slo_namespace: String,
    /// The ProbeSet (or ClusterProbeSet) it watches.
    pub probeset: String,
    /// The probe of that ProbeSet.
    pub probe: String,
    /// The exact good/total counter the kernel keeps for the SLO.
    pub threshold: Threshold,
    /// Largest fraction of events the SLO tolerates losing; the probe is
    /// planned for the strictest of these and the ProbeSet's own.
    pub max_drop_rate: f64,
}

impl SloTarget {
    /// The SLO's target, or `None` when its spec is invalid: an invalid SLO
    /// says so in its own status and must not change how probes run.
    pub fn from_slo(slo: &Slo) -> Option<Self> {
        if !slo.spec.validate().is_empty() {
            return None;
        }
        let namespace = slo.metadata.namespace.clone().unwrap_or_default();
        let id = format!(
            "{namespace}/{}",
            slo.metadata.name.as_deref().unwrap_or_default()
        );
        let (target_ns, probeset) = {
            let (ns, name) = slo.spec.target(Some(&namespace));
            (ns.unwrap_or_default().to_owned(), name.to_owned())
        };
        Some(Self {
            threshold: slo.spec.threshold(id.clone())?,
            namespace: target_ns,
            slo_namespace: namespace,
            id,
            probeset,
            probe: slo.spec.probe.clone(),
            max_drop_rate: slo.spec.max_drop_rate,
        })
    }

    /// Whether the SLO watches `probe` of ProbeSet `namespace/probeset`.
    pub fn watches(&self, namespace: &str, probeset: &str, probe: &str) -> bool {
        self.namespace == namespace && self.probeset == probeset && self.probe == probe
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringwarden_crds::{ErrorsIndicator, Indicator, LatencyIndicator, SloSpec};

    use super::*;

    fn slo(indicator: Indicator, max_drop_rate: f64) -> Slo {
        let mut slo = Slo::new(
            "checkout-fast",
            SloSpec {
                probe_set: "web".into(),
                cluster_probe_set: None,
                probe: "sys".into(),
                series: vec!["read".into()],
                indicator,
                target: 99.9,
                window: Duration::from_secs(30 * 86_400),
                max_drop_rate,
            },
        );
        slo.metadata.namespace = Some("shop".into());
        slo
    }

    fn latency(ms: u64) -> Indicator {
        Indicator {
            latency: Some(LatencyIndicator {
                threshold: Duration::from_millis(ms),
            }),
            errors: None,
        }
    }

    #[test]
    fn a_valid_slo_becomes_a_kernel_threshold_on_its_probe() {
        let t = SloTarget::from_slo(&slo(latency(5), 0.001)).unwrap();
        assert_eq!(
            t.threshold,
            Threshold {
                slo: "shop/checkout-fast".into(),
                latency_ns: Some(5_000_000),
                errors: false,
                series: vec!["read".into()],
            }
        );
        assert_eq!(t.max_drop_rate, 0.001);
        assert_eq!(t.slo_namespace, "shop");
        assert!(t.watches("shop", "web", "sys"));
        assert!(!t.watches("other", "web", "sys"));

        let errors = Indicator {
            latency: None,
            errors: Some(ErrorsIndicator {}),
        };
        let t = SloTarget::from_slo(&slo(errors, 0.01)).unwrap();
        assert_eq!((t.threshold.latency_ns, t.threshold.errors), (None, true));
    }

    #[test]
    fn invalid_slos_change_nothing() {
        assert_eq!(SloTarget::from_slo(&slo(latency(5), 1.5)), None);
        assert_eq!(SloTarget::from_slo(&slo(Indicator::default(), 0.01)), None);
    }
}
