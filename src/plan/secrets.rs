//! The generated Secrets: create what is missing, rotate the write token once per request.

use super::Rotation;
use crate::crd::ArticleSite;
use crate::observe::Observed;
use crate::secrets::{self, Generated};

pub struct SecretsPlan {
    pub create: Vec<Generated>,
    pub rotate: Option<Rotation>,
    /// A Secret the workloads read is missing.
    pub waiting: bool,
}

pub fn plan(site: &ArticleSite, observed: &Observed) -> SecretsPlan {
    let create: Vec<Generated> = [
        (Generated::DatabaseCredentials, &observed.credentials),
        (Generated::WriteToken, &observed.write_token),
    ]
    .into_iter()
    .filter_map(|(which, seen)| seen.is_none().then_some(which))
    .collect();
    // A new token answers a pending request itself (`secrets::build`): no rotation then.
    let rotate = observed.write_token.as_ref().and_then(|token| {
        let wanted = secrets::requested_rotation(site)?;
        let handled = token
            .annotations
            .as_ref()
            .and_then(|a| a.get(secrets::HANDLED_ANNOTATION));
        (handled.map(String::as_str) != Some(wanted)).then(|| Rotation {
            request: wanted.to_string(),
            resource_version: token.resource_version.clone().unwrap_or_default(),
        })
    });
    SecretsPlan {
        waiting: !create.is_empty(),
        create,
        rotate,
    }
}
