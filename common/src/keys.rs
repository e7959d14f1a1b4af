//! WireGuard x25519 keys. The private key is generated on the site and never
//! leaves it; `Debug` and `Display` of a private key never show the secret.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a WireGuard key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a WireGuard key is 44 characters of base64 (32 bytes), got {0} characters")]
    Length(usize),
    #[error("a WireGuard key is base64; this is not valid base64")]
    Base64,
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 44 {
        return Err(KeyError::Length(s.len()));
    }
    let bytes = B64.decode(s).map_err(|_| KeyError::Base64)?;
    bytes.try_into().map_err(|_| KeyError::Base64)
}

/// A WireGuard public key (x25519), base64 on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Lower-case hex, the form the WireGuard userspace control protocol uses.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn to_dalek(&self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Redacted in `Debug`; `to_base64` is the one way
/// to get the secret out (for the 0600 state file and the control socket).
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self(x25519_dalek::StaticSecret::random_from_rng(
            rand_core::OsRng,
        ))
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
    pub fn to_dalek(&self) -> x25519_dalek::StaticSecret {
        self.0.clone()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(|b| Self(x25519_dalek::StaticSecret::from(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_base64_and_json() {
        let k = PrivateKey::generate().public_key();
        let s = k.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>(), Ok(k));
        let json = serde_json::to_string(&k).expect("serialise");
        assert_eq!(serde_json::from_str::<PublicKey>(&json).expect("parse"), k);
    }

    #[test]
    fn private_key_is_redacted_and_derives_the_known_public_key() {
        // RFC 7748 section 6.1 test vector (Alice).
        let sk: PrivateKey = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
            .parse()
            .expect("valid key");
        assert_eq!(format!("{sk:?}"), "PrivateKey(<redacted>)");
        assert_eq!(
            sk.public_key().to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!("abc".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let not_b64 = "!".repeat(44);
        assert_eq!(not_b64.parse::<PublicKey>(), Err(KeyError::Base64));
    }
}
