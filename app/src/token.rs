//! The write token as the server keeps it: a digest, compared in constant time. Its own module
//! so that the state (which holds it) and the extractor (which checks it) do not import each
//! other.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured token's digest. Comparing fixed-size digests keeps both the content and
/// the length of the token out of the timing.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn new(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&digest).into()
    }
}
