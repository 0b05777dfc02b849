//! What the operator creates at run time, and the owner reference that
//! lets Kubernetes remove it with the operator. No IO.
//!
//! Every object the operator makes in its namespace names the operator's
//! Deployment (`--owner-deployment`) as a non-controller owner, so that
//! deleting the Deployment (`helm uninstall`) garbage-collects them all.
//! Events are the one exception: they live in the namespaces of the
//! objects they are about and expire by the API server's `--event-ttl`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{cli::Args, config::AgentSettings, ingest::publish};

/// `ownerReferences` naming `owner`, if there is one.
pub fn references(owner: Option<&OwnerReference>) -> Option<Vec<OwnerReference>> {
    owner.map(|o| vec![o.clone()])
}

/// Adds `owner` to `meta`'s owners unless it is there already (same uid);
/// returns whether it was added. Objects made by an operator started
/// without an owner are adopted this way on their next write.
pub fn adopt(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) -> bool {
    let Some(owner) = owner else {
        return false;
    };
    let owners = meta.owner_references.get_or_insert_with(Vec::new);
    if owners.iter().any(|o| o.uid == owner.uid) {
        return false;
    }
    owners.push(owner.clone());
    true
}

/// How an object made at run time goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Garbage-collected with the operator's Deployment.
    WithTheDeployment,
    /// Expires after the API server's `--event-ttl` (one hour by default).
    Expires,
}

/// One kind of object the operator creates at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub kind: &'static str,
    /// Its name, or the common prefix of its names (`ringwarden-slo-`).
    pub name: String,
    pub removal: Removal,
}

/// Everything the operator started with `args` and agent settings `agent`
/// creates at run time (docs/install.md lists each; a test keeps the two
/// in step).
pub fn made_at_run_time(args: &Args, agent: &AgentSettings) -> Vec<Made> {
    let owned = |kind, name: &str| Made {
        kind,
        name: name.to_owned(),
        removal: Removal::WithTheDeployment,
    };
    let snapshot = publish::snapshot_name("");
    let prefix = snapshot.trim_end_matches(|c: char| c.is_ascii_hexdigit());
    vec![
        owned("DaemonSet", &agent.name),
        owned("ConfigMap", &agent.config_map_name),
        owned("ConfigMap", &args.ca_configmap),
        owned("Secret", &args.tls_secret),
        owned("Lease", &args.lease_name),
        owned("ConfigMap", prefix),
        Made {
            kind: "Event",
            name: String::new(),
            removal: Removal::Expires,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "ringwarden-operator".into(),
            uid: uid.into(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }
    }

    #[test]
    fn an_object_is_adopted_once_and_keeps_its_other_owners() {
        let mut meta = ObjectMeta {
            owner_references: Some(vec![deployment("other")]),
            ..Default::default()
        };
        assert!(adopt(&mut meta, Some(&deployment("u1"))));
        assert!(!adopt(&mut meta, Some(&deployment("u1"))));
        let uids: Vec<_> = meta
            .owner_references
            .unwrap()
            .into_iter()
            .map(|o| o.uid)
            .collect();
        assert_eq!(uids, ["other", "u1"]);
    }

    #[test]
    fn without_an_owner_nothing_changes() {
        let mut meta = ObjectMeta::default();
        assert!(!adopt(&mut meta, None));
        assert_eq!(meta.owner_references, None);
        assert_eq!(references(None), None);
    }

    #[test]
    fn snapshot_configmaps_are_named_by_their_prefix() {
        use clap::Parser;
        let args = Args::parse_from(["ringwarden-operator"]);
        let made = made_at_run_time(&args, &AgentSettings::default());
        assert!(
            made.iter()
                .any(|m| m.kind == "ConfigMap" && m.name == "ringwarden-slo-"),
            "{made:?}"
        );
        assert!(publish::snapshot_name("ns/slo").starts_with("ringwarden-slo-"));
    }
}
