//! Generated credentials: 32 bytes from the operating system's CSPRNG, hex-encoded, written once
//! with a create (never an update) and never read back, logged or put into events or status.

use k8s_openapi::api::core::v1::Secret;
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
    let secret = match which {
        Generated::DatabaseCredentials => resources::secret::database_credentials(site, value),
        Generated::WriteToken => resources::secret::write_token(site, value),
    };
    let pp = PostParams {
        field_manager: Some(crate::MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &secret).await {
        Ok(_) => Ok(Created::Now),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Created::AlreadyExisted),
        // The error of a create never echoes the body, so it carries no secret value.
        Err(e) => Err(Error::kube("create", "Secret")(e)),
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
    fn hex_encoding() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
