//! Bearer secrets: enrolment tokens, agent credentials and admin tokens.
//! 256 random bits, shown once, stored only as a SHA-256 hash.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// A freshly generated secret with a kind prefix (`wne_` enrolment,
/// `wna_` agent, `wnt_` admin) so a leaked string says what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(format!("{prefix}{}", B64URL.encode(bytes)))
    }
    /// The secret itself, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The stored form of a secret: hex SHA-256. 256-bit random secrets need no
/// salt or slow hash; the hash only keeps a database dump from being a key.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub const ENROLMENT_PREFIX: &str = "wne_";
pub const AGENT_PREFIX: &str = "wna_";
pub const ADMIN_PREFIX: &str = "wnt_";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_prefixed_and_hash_stably() {
        let a = Secret::generate(ENROLMENT_PREFIX);
        let b = Secret::generate(ENROLMENT_PREFIX);
        assert_ne!(a, b);
        assert!(a.expose().starts_with("wne_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert_eq!(a.hash(), hash_secret(a.expose()));
        assert_eq!(a.hash().len(), 64);
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
    }
}
