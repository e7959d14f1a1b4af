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
    /// The secret sealed with `key` for `context`: XORed with the
    /// HMAC-SHA256 of `context` under `key`, a one-time pad as long as the
    /// key is used for one context only. An agent's credential is stored
    /// sealed with its enrolment token, so the same enrolment again (its
    /// answer lost) gets the same credential, and no one without the token
    /// reads it.
    pub fn seal(&self, key: &str, context: &[u8]) -> Option<String> {
        let (_, body) = self.0.split_at_checked(4)?;
        let bytes = B64URL.decode(body).ok()?;
        let pad = pad(key, context);
        (bytes.len() == pad.len()).then(|| {
            let sealed: Vec<u8> = bytes.iter().zip(pad).map(|(a, b)| a ^ b).collect();
            B64URL.encode(sealed)
        })
    }

    /// What [`Secret::seal`] sealed, with the same key and context; with
    /// any other, a secret that is not it.
    pub fn unseal(prefix: &str, key: &str, context: &[u8], sealed: &str) -> Option<Self> {
        let bytes = B64URL.decode(sealed).ok()?;
        let pad = pad(key, context);
        (bytes.len() == pad.len()).then(|| {
            let open: Vec<u8> = bytes.iter().zip(pad).map(|(a, b)| a ^ b).collect();
            Self(format!("{prefix}{}", B64URL.encode(open)))
        })
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

fn pad(key: &str, context: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(context);
    mac.finalize().into_bytes().into()
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

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_context_only() {
        let c = Secret::generate(AGENT_PREFIX);
        let sealed = c.seal("wne_a", b"k1").expect("sealed");
        assert!(!sealed.contains(&c.expose()[4..]));
        let open = |k: &str, ctx: &[u8]| Secret::unseal(AGENT_PREFIX, k, ctx, &sealed);
        assert_eq!(open("wne_a", b"k1"), Some(c.clone()));
        assert_ne!(open("wne_a", b"k2"), Some(c.clone()));
        assert_ne!(open("wne_b", b"k1"), Some(c.clone()));
        assert_eq!(
            Secret::unseal(AGENT_PREFIX, "wne_a", b"k1", "not base64!"),
            None
        );
    }
}
