//! The restic format's cryptography: a key is AES-256 (counter mode) for secrecy plus
//! Poly1305-AES for integrity; a sealed message is `IV || CIPHERTEXT || MAC`, the MAC
//! over the ciphertext with the IV as the Poly1305-AES nonce. Key files derive a user
//! key from the password with scrypt and hold the repository's master key sealed with
//! it. No I/O.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{Error, Result, corrupt, random_bytes};

/// Bytes a sealed message adds to its plaintext: the IV and the MAC.
pub const OVERHEAD: usize = 32;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Encryption and authentication keys (restic's "master key" or a user key).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub encrypt: [u8; 32],
    /// The AES-128 key that turns a nonce into Poly1305's `s`.
    pub mac_k: [u8; 16],
    /// Poly1305's `r` (clamped by the Poly1305 implementation).
    pub mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// A new random key.
    pub fn random() -> Key {
        Key {
            encrypt: random_bytes(),
            mac_k: random_bytes(),
            mac_r: random_bytes(),
        }
    }

    /// A key from 64 bytes: 32 for encryption, then 16 of `k`, then 16 of `r`.
    pub fn from_64(b: &[u8; 64]) -> Key {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        k.encrypt.copy_from_slice(&b[..32]);
        k.mac_k.copy_from_slice(&b[32..48]);
        k.mac_r.copy_from_slice(&b[48..]);
        k
    }

    fn mac(&self, iv: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        let aes = aes::Aes128::new(&self.mac_k.into());
        let mut s = aes::Block::from(*iv);
        aes.encrypt_block(&mut s);
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&self.mac_r);
        key[16..].copy_from_slice(&s);
        poly1305::Poly1305::new(&key.into())
            .compute_unpadded(ciphertext)
            .into()
    }

    /// Encrypts and authenticates `plain` with a fresh random IV.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut iv: [u8; 16] = random_bytes();
        while iv == [0; 16] {
            iv = random_bytes();
        }
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plain);
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut out[16..]);
        let mac = self.mac(&iv, &out[16..]);
        out.extend_from_slice(&mac);
        out
    }

    /// Checks the MAC of a sealed message and decrypts it; `what` names it in errors.
    pub fn open(&self, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(corrupt(
                what,
                format!("{} bytes is too short to be sealed", sealed.len()),
            ));
        }
        let iv: [u8; 16] = sealed[..16].try_into().expect("16 bytes");
        let (body, mac) = sealed[16..].split_at(sealed.len() - OVERHEAD);
        // A constant-time comparison: the MAC is a secret-dependent value.
        let want = self.mac(&iv, body);
        let diff = want.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(corrupt(
                what,
                "MAC check failed (damaged, or another repository's key)",
            ));
        }
        let mut plain = body.to_vec();
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut plain);
        Ok(plain)
    }
}

/// scrypt's cost parameters as a key file records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub n: u64,
    pub r: u32,
    pub p: u32,
}

/// What snapring writes: N=2^15, r=8, p=1 (32 MiB, about 0.1 s), inside restic's range.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    n: 1 << 15,
    r: 8,
    p: 1,
};

/// Derives a user key from a password with scrypt.
pub fn derive(password: &[u8], salt: &[u8], p: KdfParams) -> Result<Key> {
    if !p.n.is_power_of_two() || p.n < 2 {
        return Err(Error::Other(format!(
            "scrypt N={} is not a power of two",
            p.n
        )));
    }
    // A damaged key file's N or r could ask for terabytes, and the allocation would
    // abort the process (restic's own keys use 64 MiB by default).
    let memory = 128u128 * u128::from(p.n) * u128::from(p.r);
    if memory > 2 << 30 {
        return Err(Error::Other(format!(
            "scrypt N={} r={} would need {} GiB of memory: more than this key can be (damaged?)",
            p.n,
            p.r,
            memory >> 30
        )));
    }
    let params = scrypt::Params::new(p.n.trailing_zeros() as u8, p.r, p.p, 64).map_err(|e| {
        Error::Other(format!(
            "scrypt parameters N={} r={} p={}: {e}",
            p.n, p.r, p.p
        ))
    })?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &params, &mut out)
        .map_err(|e| Error::Other(format!("scrypt: {e}")))?;
    Ok(Key::from_64(&out))
}

/// A file of `keys/`: plain JSON with the KDF's parameters and the sealed master key.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct KeyFile {
    pub created: String,
    pub username: String,
    pub hostname: String,
    pub kdf: String,
    #[serde(rename = "N")]
    pub n: u64,
    pub r: u32,
    pub p: u32,
    pub salt: String,
    pub data: String,
}

#[derive(Serialize, Deserialize)]
struct MacJson {
    k: String,
    r: String,
}

#[derive(Serialize, Deserialize)]
struct MasterJson {
    mac: MacJson,
    encrypt: String,
}

fn b64_exact<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let v = B64.decode(s).map_err(|e| corrupt(what, e))?;
    v.try_into()
        .map_err(|v: Vec<u8>| corrupt(what, format!("{} bytes, expected {N}", v.len())))
}

impl KeyFile {
    /// A key file that opens `master` with `password`.
    pub fn new(master: &Key, password: &[u8], p: KdfParams) -> Result<KeyFile> {
        let salt: [u8; 64] = random_bytes();
        let user = derive(password, &salt, p)?;
        let json = MasterJson {
            mac: MacJson {
                k: B64.encode(master.mac_k),
                r: B64.encode(master.mac_r),
            },
            encrypt: B64.encode(master.encrypt),
        };
        let plain = serde_json::to_vec(&json).expect("master key serialises");
        Ok(KeyFile {
            created: super::go_time(chrono::Local::now()),
            username: crate::util::username(),
            hostname: crate::util::hostname(),
            kdf: "scrypt".into(),
            n: p.n,
            r: p.r,
            p: p.p,
            salt: B64.encode(salt),
            data: B64.encode(user.seal(&plain)),
        })
    }

    /// The master key, if `password` opens this key file (`None` if it does not).
    pub fn open(&self, password: &[u8], what: &str) -> Result<Option<Key>> {
        if self.kdf != "scrypt" {
            return Err(corrupt(what, format!("unknown kdf {:?}", self.kdf)));
        }
        let salt = B64.decode(&self.salt).map_err(|e| corrupt(what, e))?;
        let data = B64.decode(&self.data).map_err(|e| corrupt(what, e))?;
        let params = KdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        };
        let user = derive(password, &salt, params)?;
        let Ok(plain) = user.open(&data, what) else {
            return Ok(None);
        };
        let m: MasterJson = serde_json::from_slice(&plain).map_err(|e| corrupt(what, e))?;
        Ok(Some(Key {
            encrypt: b64_exact(&m.encrypt, what)?,
            mac_k: b64_exact(&m.mac.k, what)?,
            mac_r: b64_exact(&m.mac.r, what)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let k = Key::random();
        for len in [0usize, 1, 15, 16, 17, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = k.seal(&plain);
            assert_eq!(sealed.len(), len + OVERHEAD);
            // Long enough that the ciphertext equals the plaintext only by a 2^-128
            // chance (one byte matches one time in 256).
            if len >= 16 {
                assert_ne!(&sealed[16..16 + len], &plain[..], "not encrypted");
            }
            assert_eq!(k.open(&sealed, "t").unwrap(), plain);
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_mac() {
        let k = Key::random();
        let sealed = k.seal(b"some plaintext to protect");
        for i in [0, 16, 20, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            let e = k.open(&bad, "blob x").unwrap_err().to_string();
            assert!(
                e.contains("MAC check failed") && e.contains("blob x"),
                "{e}"
            );
        }
        assert!(
            Key::random().open(&sealed, "t").is_err(),
            "another key opened it"
        );
    }

    #[test]
    fn poly1305_aes_matches_the_papers_example() {
        // Bernstein, "The Poly1305-AES message-authentication code", appendix B, the
        // example with a 2-byte message: k, r, n, m → MAC.
        let k = Key {
            encrypt: [0; 32],
            mac_k: hex::decode("ec074c835580741701425b623235add6")
                .unwrap()
                .try_into()
                .unwrap(),
            mac_r: hex::decode("851fc40c3467ac0be05cc20404f3f700")
                .unwrap()
                .try_into()
                .unwrap(),
        };
        let n: [u8; 16] = hex::decode("fb447350c4e868c52ac3275cf9d4327e")
            .unwrap()
            .try_into()
            .unwrap();
        let mac = k.mac(&n, &[0xf3, 0xf6]);
        assert_eq!(hex::encode(mac), "f4c633c3044fc145f84f335cb81953de");
    }

    #[test]
    fn key_file_opens_with_its_password_only() {
        let master = Key::random();
        let cheap = KdfParams {
            n: 1024,
            r: 8,
            p: 1,
        };
        let kf = KeyFile::new(&master, b"secret", cheap).unwrap();
        assert_eq!(kf.open(b"secret", "k").unwrap(), Some(master));
        assert_eq!(kf.open(b"wrong", "k").unwrap(), None);
    }
}
