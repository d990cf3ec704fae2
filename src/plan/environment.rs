//! Problems only the user can fix, from what the cluster offers.

use kube::ResourceExt;

use crate::admission;
use crate::crd::ArticleSite;
use crate::observe::{Observed, StorageClassSeen};
use crate::problem::Problem;
use crate::reason::Reason;

pub fn problems(site: &ArticleSite, observed: &Observed) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Only before the StatefulSet exists: its claim template is immutable, so it is never
    // created with a class that is missing, and an existing one keeps its volumes.
    if observed.statefulset.is_none() {
        match &observed.storage_class {
            StorageClassSeen::Available => {}
            StorageClassSeen::NamedMissing(class) => problems.push(Problem::blocking_database(
                Reason::StorageClassNotFound,
                format!(
                    "spec.database.storage.storageClass: StorageClass {class:?} does not exist; create it or choose an existing class"
                ),
            )),
            StorageClassSeen::NoDefault => problems.push(Problem::blocking_database(
                Reason::NoDefaultStorageClass,
                "spec.database.storage.storageClass is unset and the cluster has no default StorageClass; set storageClass",
            )),
        }
    }
    if observed.tls_secret_exists == Some(false)
        && let Some(secret) = site
            .spec
            .ingress
            .as_ref()
            .and_then(|i| i.tls.as_ref())
            .and_then(|t| t.secret_name.as_ref())
    {
        problems.push(Problem::new(
            Reason::TlsSecretNotFound,
            format!(
                "spec.ingress.tls.secretName: Secret {secret:?} does not exist in namespace {}",
                site.namespace().unwrap_or_default()
            ),
        ));
    }
    if let (Some(message), Some(sts)) = (&observed.database_refusal, &observed.statefulset) {
        problems.push(Problem::new(
            admission::refusal_reason(message).unwrap_or(Reason::PodCreationFailed),
            format!("StatefulSet {}: {message}", sts.name_any()),
        ));
    }
    problems
}
