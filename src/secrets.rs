//! Generated credentials: 32 bytes from the operating system's CSPRNG, hex-encoded, written once
//! with a create (never an update) and never read back, logged or put into events or status.
//! The plan decides when (`plan::secrets`); `act` generates the value and sends it.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::crd::ArticleSite;
use crate::error::{Error, Result};
use crate::resources;

/// Bytes of OS randomness in each generated secret value (256 bits).
pub const SECRET_BYTES: usize = 32;

/// A fresh random value: `SECRET_BYTES` bytes from the OS, as 64 lowercase hex characters
/// (safe in URLs, connection strings and shell scripts).
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| Error::Randomness(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Which generated Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generated {
    DatabaseCredentials,
    WriteToken,
}

impl Generated {
    pub fn name(self, site: &str) -> String {
        match self {
            Generated::DatabaseCredentials => resources::Names::database_credentials(site),
            Generated::WriteToken => resources::Names::write_token(site),
        }
    }
}

/// Annotation on the ArticleSite: each new value asks for one rotation of the write token.
pub const ROTATE_ANNOTATION: &str = "articlesite.io/rotate-credentials";
/// Annotation on the write token Secret: the rotation request its value was generated for. The
/// Secret itself records it, so a crash between the rotation and the status write never rotates
/// twice for one request.
pub const HANDLED_ANNOTATION: &str = "articlesite.io/rotation";

/// The rotation the user asks for: the annotation's value, when set and not blank.
pub fn requested_rotation(site: &ArticleSite) -> Option<&str> {
    site.annotations()
        .get(ROTATE_ANNOTATION)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// The Secret `which` holding `value`. A write token records the rotation request it answers:
/// `rotation` for a rotation, the pending request (if any) for a new token, so that a fresh
/// token never causes a second token and a second roll.
pub fn build(
    site: &ArticleSite,
    which: Generated,
    value: String,
    rotation: Option<&str>,
) -> Secret {
    let mut secret = match which {
        Generated::DatabaseCredentials => resources::secret::database_credentials(site, value),
        Generated::WriteToken => resources::secret::write_token(site, value),
    };
    if which == Generated::WriteToken
        && let Some(r) = rotation.or_else(|| requested_rotation(site))
    {
        secret
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(HANDLED_ANNOTATION.into(), r.into());
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_are_long_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn blank_rotation_requests_are_ignored() {
        let mut site = crate::resources::testing::site("news");
        assert_eq!(requested_rotation(&site), None);
        site.metadata.annotations = Some([(ROTATE_ANNOTATION.to_string(), " ".to_string())].into());
        assert_eq!(requested_rotation(&site), None);
        site.metadata.annotations =
            Some([(ROTATE_ANNOTATION.to_string(), "2026-11".to_string())].into());
        assert_eq!(requested_rotation(&site), Some("2026-11"));
    }

    #[test]
    fn a_new_token_answers_the_pending_request() {
        let mut site = crate::resources::testing::site("news");
        site.metadata.annotations =
            Some([(ROTATE_ANNOTATION.to_string(), "r1".to_string())].into());
        let token = build(&site, Generated::WriteToken, "v".into(), None);
        assert_eq!(token.annotations()[HANDLED_ANNOTATION], "r1");
        let creds = build(&site, Generated::DatabaseCredentials, "v".into(), None);
        assert!(!creds.annotations().contains_key(HANDLED_ANNOTATION));
    }
}
