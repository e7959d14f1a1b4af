//! Forged WireGuard handshake initiations, for the flood test and bench.

use wardnet_common::{PrivateKey, PublicKey};

/// `count` handshake initiations to the holder of `public`, each with its
/// own sender index and a valid mac1 (forging one takes only the public
/// key), from a key the holder does not know.
pub(crate) fn forged_initiations(public: PublicKey, count: u32) -> Vec<Vec<u8>> {
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

/// The `i`th of a garbage stream, written into `buf`: in turn a datagram
/// shaped like each WireGuard message type (its type byte, zeroed reserved
/// bytes, its length; data of any length from 32) with random contents,
/// and one entirely random.
pub(crate) fn garbage_datagram<'b>(
    i: u64,
    rng: &mut impl rand::Rng,
    buf: &'b mut [u8; 1500],
) -> &'b [u8] {
    let (kind, len) = match i % 5 {
        0 => (1u8, 148),
        1 => (2, 92),
        2 => (3, 64),
        3 => (4, rng.gen_range(32..1500)),
        _ => (rng.gen::<u8>(), rng.gen_range(1..1500)),
    };
    rng.fill(&mut buf[..len]);
    if i % 5 != 4 {
        buf[0] = kind;
        buf[1..4].fill(0);
    }
    &buf[..len]
}
