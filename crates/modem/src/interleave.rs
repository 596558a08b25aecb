//! Byte interleaving across Reed–Solomon codewords.
//!
//! The codewords are read out column by column (byte 0 of every codeword,
//! then byte 1, ...), skipping codewords that are already exhausted. A burst
//! of bad cells in time or frequency then spreads evenly over the codewords
//! instead of overloading one of them.

/// Interleaves `codewords` (possibly of different lengths) into one stream.
pub fn interleave(codewords: &[Vec<u8>]) -> Vec<u8> {
    let longest = codewords.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(codewords.iter().map(Vec::len).sum());
    for j in 0..longest {
        for cw in codewords {
            if let Some(&b) = cw.get(j) {
                out.push(b);
            }
        }
    }
    out
}

/// For codewords of the given lengths, the stream index of each codeword
/// byte: `map[c][j]` is where byte `j` of codeword `c` sits in the stream.
pub fn positions(lengths: &[usize]) -> Vec<Vec<usize>> {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut map: Vec<Vec<usize>> = lengths.iter().map(|&l| Vec::with_capacity(l)).collect();
    let mut next = 0;
    for j in 0..longest {
        for (c, &len) in lengths.iter().enumerate() {
            if j < len {
                map[c].push(next);
                next += 1;
            }
        }
    }
    map
}

/// Inverse of [`interleave`]: splits `stream` back into codewords of the
/// given lengths (missing stream bytes read as 0).
#[cfg(test)]
pub fn deinterleave(stream: &[u8], lengths: &[usize]) -> Vec<Vec<u8>> {
    positions(lengths)
        .into_iter()
        .map(|idx| {
            idx.into_iter()
                .map(|i| stream.get(i).copied().unwrap_or(0))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_unequal_codewords() {
        let cws = vec![
            vec![1u8, 2, 3, 4],
            vec![10, 20, 30],
            vec![100, 200, 250, 251],
        ];
        let stream = interleave(&cws);
        assert_eq!(stream, vec![1, 10, 100, 2, 20, 200, 3, 30, 250, 4, 251]);
        assert_eq!(deinterleave(&stream, &[4, 3, 4]), cws);
    }

    #[test]
    fn a_burst_spreads_over_codewords() {
        let cws = vec![vec![0u8; 50]; 3];
        let lengths = [50, 50, 50];
        let map = positions(&lengths);
        // A burst of 9 consecutive stream bytes touches each codeword 3 times.
        for positions in &map {
            let hits = positions.iter().filter(|&&i| (30..39).contains(&i)).count();
            assert_eq!(hits, 3);
        }
        assert_eq!(interleave(&cws).len(), 150);
    }

    #[test]
    fn empty_input_is_fine() {
        assert!(interleave(&[]).is_empty());
        assert!(deinterleave(&[], &[]).is_empty());
    }
}
