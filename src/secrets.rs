//! Generated credentials: 32 bytes from the operating system's CSPRNG, hex-encoded, written once
//! with a create (never an update) and never read back, logged or put into events or status.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

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
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
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

/// Whether the Secret was created now or already existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Now,
    AlreadyExisted,
}

/// Creates the Secret unless it exists. The caller checks existence first (metadata only, so the
/// steady state sends no write); a 409 from a concurrent create also counts as success. An
/// existing Secret is never overwritten: the database was initialised with its password.
pub async fn ensure(api: &Api<Secret>, site: &ArticleSite, which: Generated) -> Result<Created> {
    let value = generate()?;
    let mut secret = match which {
        Generated::DatabaseCredentials => resources::secret::database_credentials(site, value),
        Generated::WriteToken => resources::secret::write_token(site, value),
    };
    // A fresh token already answers a pending rotation request: no second token, no extra roll.
    if which == Generated::WriteToken
        && let Some(wanted) = requested_rotation(site)
    {
        mark_handled(&mut secret, wanted);
    }
    match api.create(&post_params(), &secret).await {
        Ok(_) => Ok(Created::Now),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Created::AlreadyExisted),
        // The error of a create never echoes the body, so it carries no secret value.
        Err(e) => Err(Error::kube("create", "Secret")(e)),
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

/// Records on the write token which rotation request its value answers.
fn mark_handled(secret: &mut Secret, rotation: &str) {
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HANDLED_ANNOTATION.into(), rotation.into());
}

/// Creates and replaces carry the operator's field manager, like its applies.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::MANAGER.into()),
        ..Default::default()
    }
}

/// The write token as the pods should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteToken {
    /// Changes with the Secret's uid and rotation, never derived from the value.
    pub version: String,
    /// The rotation request the current value was generated for.
    pub rotation: Option<String>,
    /// Whether this reconcile replaced the value.
    pub rotated_now: bool,
}

/// Replaces the write token once per distinct `articlesite.io/rotate-credentials` value (an
/// update with the live resourceVersion, so a concurrent change is a 409 and a retry), and
/// reports its version. `live` is the Secret as read this reconcile; `None` when it does not
/// exist (created on the next reconcile).
pub async fn reconcile_write_token(
    api: &Api<Secret>,
    site: &ArticleSite,
    live: Option<&Secret>,
) -> Result<Option<WriteToken>> {
    let name = Generated::WriteToken.name(&site.name_any());
    let Some(meta) = live else {
        return Ok(None);
    };
    let uid = meta.uid().unwrap_or_default();
    let handled = meta.annotations().get(HANDLED_ANNOTATION).cloned();
    match requested_rotation(site) {
        Some(wanted) if handled.as_deref() != Some(wanted) => {
            let mut secret = resources::secret::write_token(site, generate()?);
            secret.metadata.resource_version = meta.resource_version();
            mark_handled(&mut secret, wanted);
            // The answer holds the new value: drop it unread.
            api.replace(&name, &post_params(), &secret)
                .await
                .map_err(Error::kube("rotate", "Secret"))?;
            Ok(Some(WriteToken {
                version: resources::security::credentials_version(&uid, wanted),
                rotation: Some(wanted.to_string()),
                rotated_now: true,
            }))
        }
        _ => Ok(Some(WriteToken {
            version: resources::security::credentials_version(
                &uid,
                handled.as_deref().unwrap_or_default(),
            ),
            rotation: handled,
            rotated_now: false,
        })),
    }
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
    fn hex_encoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
