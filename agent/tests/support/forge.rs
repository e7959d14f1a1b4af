//! Forged WireGuard handshake initiations, for the flood test and bench.

use wardnet_common::{PrivateKey, PublicKey};

/// `count` handshake initiations to the holder of `public`, each with its
/// own sender index and a valid mac1 (forging one takes only the public
/// key), from a key the holder does not know.
pub fn forged_initiations(public: PublicKey, count: u32) -> Vec<Vec<u8>> {
    use blake2::digest::consts::U16;
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    use boringtun::noise::{Tunn, TunnResult};
    let mut stranger = Tunn::new(
        PrivateKey::generate().to_dalek(),
        public.to_dalek(),
        None,
        None,
        1,
        None,
    );
    let mut buf = [0u8; 256];
    let TunnResult::WriteToNetwork(template) =
        stranger.format_handshake_initiation(&mut buf, false)
    else {
        panic!("boringtun makes an initiation for a fresh peer");
    };
    let template = template.to_vec();
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(public.as_bytes())
        .finalize();
    (0..count)
        .map(|i| {
            let mut m = template.clone();
            m[4..8].copy_from_slice(&i.to_le_bytes());
            let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key)
                .expect("a 32-byte key suits BLAKE2s");
            Update::update(&mut mac, &m[..116]);
            m[116..132].copy_from_slice(&mac.finalize_fixed());
            m[132..148].fill(0);
            m
        })
        .collect()
}
