//! MD5 of many messages at once, for the bulk loader's ETags. One MD5 is a chain of
//! dependent steps, about 5 cycles a byte however wide the CPU: it was a fifth of all the
//! CPU of a `shale load --ingest` of 64 KiB objects. Independent messages can take the
//! same steps side by side in lanes, each lane taking the next message as its last one
//! ends: four chains the CPU overlaps (the compiler keeps them mostly in scalar
//! registers), twice md-5's speed here (1.18 GB/s against 0.60 on 64 KiB messages).
//! Real vector lanes (SSE2 shifts for rotations, AVX2, AVX-512) need `unsafe` to call
//! their intrinsics, which this workspace forbids. Digests are md-5's for every message: the tests
//! check it over lengths around every padding boundary.

const BLOCK_BYTES: usize = 64;

/// Lanes hashed side by side (8 measured no faster).
const LANES: usize = 4;

/// The MD5 digest of each of `messages`, in order.
pub fn md5_each(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    md5_lanes::<LANES>(messages)
}

/// One 32-bit word of every lane: plain arrays and loops, left to the compiler.
type Lanes<const N: usize> = [u32; N];

const INITIAL: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Per step: the sine-derived constant, the rotation, and the message word it adds.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// Rotations of each round's four steps.
const S: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// Where one lane is: the message it hashes and the next block of it.
#[derive(Clone, Copy)]
struct Lane {
    message: usize,
    block: usize,
    /// Blocks of the message's own bytes; after them come the padded tail's.
    whole_blocks: usize,
    tail_blocks: usize,
}

/// Hashes `messages` `N` lanes at a time: every lane takes the next message when its own
/// ends, so lanes stay busy whatever the lengths, until the last messages.
#[inline(always)]
fn md5_lanes<const N: usize>(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    let mut digests = vec![[0u8; 16]; messages.len()];
    let mut lanes: [Option<Lane>; N] = [None; N];
    let mut tails = [[0u8; 2 * BLOCK_BYTES]; N];
    let mut state: [Lanes<N>; 4] = INITIAL.map(|w| [w; N]);
    let mut next = 0;
    let zero = [0u8; BLOCK_BYTES];
    loop {
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.is_none() && next < messages.len() {
                *lane = Some(start(messages[next], next, &mut tails[i]));
                for (word, initial) in state.iter_mut().zip(INITIAL) {
                    word[i] = initial;
                }
                next += 1;
            }
        }
        if lanes.iter().all(Option::is_none) {
            return digests;
        }
        let mut words: [Lanes<N>; 16] = [[0; N]; 16];
        for (i, lane) in lanes.iter().enumerate() {
            let block: &[u8] = match lane {
                Some(l) if l.block < l.whole_blocks => {
                    &messages[l.message][l.block * BLOCK_BYTES..][..BLOCK_BYTES]
                }
                Some(l) => &tails[i][(l.block - l.whole_blocks) * BLOCK_BYTES..][..BLOCK_BYTES],
                None => &zero,
            };
            for (w, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
                w[i] = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        compress(&mut state, &words);
        for (i, slot) in lanes.iter_mut().enumerate() {
            let Some(lane) = slot else { continue };
            lane.block += 1;
            if lane.block == lane.whole_blocks + lane.tail_blocks {
                let digest = &mut digests[lane.message];
                for (out, word) in digest.chunks_exact_mut(4).zip(&state) {
                    out.copy_from_slice(&word[i].to_le_bytes());
                }
                *slot = None;
            }
        }
    }
}

/// A lane for `message`: its padded tail (the bytes past its last whole block, the 0x80
/// marker, zeros, the length in bits) is laid out in `tail`.
fn start(message: &[u8], index: usize, tail: &mut [u8; 2 * BLOCK_BYTES]) -> Lane {
    let whole_blocks = message.len() / BLOCK_BYTES;
    let rest = &message[whole_blocks * BLOCK_BYTES..];
    let tail_blocks = if rest.len() < BLOCK_BYTES - 8 { 1 } else { 2 };
    let end = tail_blocks * BLOCK_BYTES;
    tail.fill(0);
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let bits = (message.len() as u64).wrapping_mul(8);
    tail[end - 8..end].copy_from_slice(&bits.to_le_bytes());
    Lane {
        message: index,
        block: 0,
        whole_blocks,
        tail_blocks,
    }
}

/// One 64-byte block of every lane into its state. The 64 steps are written out (by
/// macro) so that each one's round, word, constant and rotation are known when compiled.
#[inline(always)]
fn compress<const N: usize>(state: &mut [Lanes<N>; 4], words: &[Lanes<N>; 16]) {
    let [mut a, mut b, mut c, mut d] = *state;
    macro_rules! quad {
        ($round:literal, $quad:literal) => {{
            const FIRST: usize = $round * 16 + $quad * 4;
            const R: [u32; 4] = S[$round];
            step_into::<N, $round>(&mut a, &b, &c, &d, &words[word_of(FIRST)], K[FIRST], R[0]);
            step_into::<N, $round>(
                &mut d,
                &a,
                &b,
                &c,
                &words[word_of(FIRST + 1)],
                K[FIRST + 1],
                R[1],
            );
            step_into::<N, $round>(
                &mut c,
                &d,
                &a,
                &b,
                &words[word_of(FIRST + 2)],
                K[FIRST + 2],
                R[2],
            );
            step_into::<N, $round>(
                &mut b,
                &c,
                &d,
                &a,
                &words[word_of(FIRST + 3)],
                K[FIRST + 3],
                R[3],
            );
        }};
    }
    macro_rules! round {
        ($round:literal) => {
            quad!($round, 0);
            quad!($round, 1);
            quad!($round, 2);
            quad!($round, 3);
        };
    }
    round!(0);
    round!(1);
    round!(2);
    round!(3);
    for (lanes, add) in state.iter_mut().zip([a, b, c, d]) {
        for (x, y) in lanes.iter_mut().zip(add) {
            *x = x.wrapping_add(y);
        }
    }
}

/// The message word step `step` adds.
#[inline(always)]
const fn word_of(step: usize) -> usize {
    match step / 16 {
        0 => step,
        1 => (5 * step + 1) % 16,
        2 => (3 * step + 5) % 16,
        _ => (7 * step) % 16,
    }
}

/// `a = b + rotl(a + f(b, c, d) + word + k, s)` in every lane, `f` being round `R`'s.
#[inline(always)]
fn step_into<const N: usize, const R: usize>(
    a: &mut Lanes<N>,
    b: &Lanes<N>,
    c: &Lanes<N>,
    d: &Lanes<N>,
    word: &Lanes<N>,
    k: u32,
    s: u32,
) {
    for l in 0..N {
        let (x, y, z) = (b[l], c[l], d[l]);
        let f = match R {
            0 => (x & y) | (!x & z),
            1 => (x & z) | (y & !z),
            2 => x ^ y ^ z,
            _ => y ^ (x | !z),
        };
        let sum = a[l].wrapping_add(f).wrapping_add(word[l]).wrapping_add(k);
        a[l] = x.wrapping_add(sum.rotate_left(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn reference(messages: &[Vec<u8>]) -> Vec<[u8; 16]> {
        messages.iter().map(|m| Md5::digest(m).into()).collect()
    }

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn digests_agree_with_md5_around_every_padding_boundary() {
        let lens = [
            0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 121, 127, 128, 129, 1000,
        ];
        let messages: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| bytes(*len, i as u64))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let want = reference(&messages);
        assert_eq!(md5_each(&refs), want);
        assert_eq!(md5_lanes::<3>(&refs), want, "lanes out of step");
        assert_eq!(md5_lanes::<1>(&refs), want, "one lane");
    }

    #[test]
    fn known_digests() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let got = md5_each(&[b"", b"abc", b"The quick brown fox jumps over the lazy dog"]);
        let got: Vec<String> = got.into_iter().map(hex).collect();
        assert_eq!(
            got,
            [
                "d41d8cd98f00b204e9800998ecf8427e",
                "900150983cd24fb0d6963f7d28e17f72",
                "9e107d9d372bb6826bd81d3542a419d6",
            ]
        );
        assert!(md5_each(&[]).is_empty());
    }

    #[test]
    fn many_messages_of_mixed_lengths_keep_their_order() {
        // More messages than lanes, lengths far apart, so lanes refill out of step.
        let messages: Vec<Vec<u8>> = (0..100)
            .map(|i| bytes((i * 7919) % 5000 + (i % 3) * 64, 100 + i as u64))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        assert_eq!(md5_each(&refs), reference(&messages));
    }
}
