//! Content-defined chunking as restic does it: a Rabin fingerprint over a sliding
//! window of 64 bytes, modulo the repository's irreducible polynomial of degree 53
//! (`chunker_polynomial` in the config); a chunk ends where the fingerprint's low 20
//! bits are zero (1 MiB on average), never before 512 KiB, always at 8 MiB. The same
//! polynomial and the same bytes give the same chunks as restic, so snapring's blobs
//! deduplicate against restic's. Also the GF(2) arithmetic to pick a new random
//! irreducible polynomial. No I/O.

use super::random_bytes;

pub const WINDOW: usize = 64;
pub const MIN_SIZE: usize = 512 * 1024;
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
const SPLIT_MASK: u64 = (1 << 20) - 1;

/// A polynomial over GF(2), bit i the coefficient of x^i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pol(pub u64);

fn deg(x: u128) -> i32 {
    127 - x.leading_zeros() as i32
}

/// `x mod m` over GF(2).
fn modp(mut x: u128, m: u128) -> u128 {
    let dm = deg(m);
    while x != 0 && deg(x) >= dm {
        x ^= m << (deg(x) - dm);
    }
    x
}

/// `a * b mod m` over GF(2), for a and b of degree below 64.
fn mulmod(a: u64, b: u64, m: u64) -> u64 {
    let mut prod: u128 = 0;
    for i in 0..64 {
        if b >> i & 1 == 1 {
            prod ^= (a as u128) << i;
        }
    }
    modp(prod, m as u128) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = modp(a as u128, b as u128) as u64;
        a = b;
        b = r;
    }
    a
}

impl Pol {
    pub fn degree(self) -> i32 {
        deg(self.0 as u128)
    }

    /// Ben-Or's test: irreducible iff gcd(x^(2^i) - x mod f, f) = 1 for every i up to
    /// deg/2.
    pub fn irreducible(self) -> bool {
        let f = self.0;
        let mut x2i = 2u64; // x
        for _ in 1..=self.degree() / 2 {
            x2i = mulmod(x2i, x2i, f); // x^(2^i)
            if gcd(f, x2i ^ 2) != 1 {
                return false;
            }
        }
        true
    }

    /// A random irreducible polynomial of degree 53, as `restic init` picks one.
    pub fn random() -> Pol {
        loop {
            let f = (u64::from_le_bytes(random_bytes()) & ((1 << 54) - 1)) | (1 << 53) | 1;
            if Pol(f).irreducible() {
                return Pol(f);
            }
        }
    }

    /// As the config file writes it: lower-case hex without leading zeros.
    pub fn to_hex(self) -> String {
        format!("{:x}", self.0)
    }
}

/// Tables derived from a polynomial: what sliding a byte out of the window removes,
/// and the reduction of the 8 bits shifted past the degree.
pub struct Tables {
    out: [u64; 256],
    reduce: [u64; 256],
    shift: u32,
}

impl Tables {
    pub fn new(pol: Pol) -> Tables {
        let p = pol.0 as u128;
        let k = pol.degree() as u32;
        let mut out = [0u64; 256];
        let mut reduce = [0u64; 256];
        for b in 0..256u128 {
            // The fingerprint of b followed by 63 zero bytes.
            let mut h = modp(b, p);
            for _ in 0..WINDOW - 1 {
                h = modp(h << 8, p);
            }
            out[b as usize] = h as u64;
            reduce[b as usize] = (modp(b << k, p) | (b << k)) as u64;
        }
        Tables {
            out,
            reduce,
            shift: k - 8,
        }
    }
}

/// The rolling state of one chunk.
pub struct Chunker<'t> {
    t: &'t Tables,
    window: [u8; WINDOW],
    wpos: usize,
    digest: u64,
    /// Bytes of the current chunk seen so far.
    count: usize,
}

impl<'t> Chunker<'t> {
    pub fn new(t: &'t Tables) -> Chunker<'t> {
        let mut c = Chunker {
            t,
            window: [0; WINDOW],
            wpos: 0,
            digest: 0,
            count: 0,
        };
        c.reset();
        c
    }

    /// A new chunk: an empty window into which one byte of value 1 has been slid.
    fn reset(&mut self) {
        self.window = [0; WINDOW];
        self.wpos = 0;
        self.digest = 0;
        self.count = 0;
        self.slide(1);
    }

    #[inline]
    fn slide(&mut self, b: u8) {
        let out = self.window[self.wpos];
        self.window[self.wpos] = b;
        self.wpos = (self.wpos + 1) % WINDOW;
        let d = self.digest ^ self.t.out[out as usize];
        let top = (d >> self.t.shift) as usize;
        self.digest = ((d << 8) | b as u64) ^ self.t.reduce[top];
    }

    /// Feeds `buf`; returns how many of its bytes end the current chunk, if it ends in
    /// `buf` (the chunker is then ready for the next one).
    pub fn next_cut(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = 0;
        // The fingerprint only matters from the window before the minimum size on.
        let skip = (MIN_SIZE - WINDOW)
            .saturating_sub(self.count)
            .min(buf.len());
        self.count += skip;
        i += skip;
        while i < buf.len() {
            self.slide(buf[i]);
            self.count += 1;
            i += 1;
            if (self.digest & SPLIT_MASK == 0 || self.count >= MAX_SIZE) && self.count >= MIN_SIZE {
                self.reset();
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(t: &Tables, data: &[u8]) -> Vec<usize> {
        let mut c = Chunker::new(t);
        let mut out = vec![];
        let mut start = 0;
        // Feed in uneven pieces: the cuts must not depend on how the data arrives.
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + 100_003).min(data.len());
            let mut p = pos;
            while let Some(n) = c.next_cut(&data[p..end]) {
                p += n;
                out.push(p - start);
                start = p;
            }
            pos = end;
        }
        if start < data.len() {
            out.push(data.len() - start);
        }
        out
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn known_polynomials_are_irreducible_and_others_not() {
        // The polynomial of restic's design document and chunker tests.
        assert!(Pol(0x3DA3358B4DC173).irreducible());
        // x^2 + 1 = (x + 1)^2, and a product of two polynomials of degree > 0.
        assert!(!Pol(0b101).irreducible());
        assert!(!Pol(0x3DA3358B4DC173 << 1).irreducible());
        let r = Pol::random();
        assert_eq!(r.degree(), 53);
        assert!(r.irreducible());
    }

    #[test]
    fn cuts_are_deterministic_and_within_bounds() {
        let t = Tables::new(Pol(0x3DA3358B4DC173));
        let data = pseudo_random(20 * 1024 * 1024, 7);
        let a = chunks(&t, &data);
        let b = chunks(&t, &data);
        assert_eq!(a, b);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        assert!(a.len() > 5, "{a:?}");
        for (i, len) in a.iter().enumerate() {
            assert!(*len <= MAX_SIZE, "{a:?}");
            assert!(*len >= MIN_SIZE || i == a.len() - 1, "{a:?}");
        }
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let t = Tables::new(Pol(0x3DA3358B4DC173));
        let data = pseudo_random(12 * 1024 * 1024, 11);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let a = chunks(&t, &data);
        let b = chunks(&t, &shifted);
        assert_eq!(a[1..], b[1..], "later chunks resynchronise");
        assert_eq!(a[0] + 14, b[0]);
    }
}
