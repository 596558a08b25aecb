//! Arithmetic in GF(2^8) with the primitive polynomial x^8 + x^4 + x^3 + x^2 + 1
//! (0x11d) and generator α = 2, the field the Reed–Solomon code works in.
//!
//! Addition is XOR; multiplication and division go through log / antilog
//! tables built once at compile time.

/// The field's primitive polynomial (bit 8 set).
const PRIMITIVE: u16 = 0x11d;

/// exp[i] = α^i for i in 0..510 (doubled so a sum of two logs needs no modulo).
const EXP: [u8; 512] = build_exp();
/// log[x] = i with α^i = x, for x != 0 (log[0] is unused).
const LOG: [u8; 256] = build_log();

const fn build_exp() -> [u8; 512] {
    let mut table = [0u8; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        table[i] = x as u8;
        table[i + 255] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= PRIMITIVE;
        }
        i += 1;
    }
    table[510] = table[0];
    table[511] = table[1];
    table
}

const fn build_log() -> [u8; 256] {
    let exp = build_exp();
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        table[exp[i] as usize] = i as u8;
        i += 1;
    }
    table
}

/// α^power, for any power (reduced modulo 255).
pub fn exp(power: usize) -> u8 {
    EXP[power % 255]
}

/// The discrete logarithm of a non-zero element (log of 0 is reported as 0;
/// callers never ask for it).
#[cfg(test)]
pub fn log(x: u8) -> usize {
    LOG[x as usize] as usize
}

/// Product of two field elements.
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// Multiplicative inverse of a non-zero element (0 maps to 0).
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        0
    } else {
        EXP[255 - LOG[a as usize] as usize]
    }
}

/// Quotient a / b (b must be non-zero; division by zero yields 0).
pub fn div(a: u8, b: u8) -> u8 {
    mul(a, inv(b))
}

/// Evaluates a polynomial given lowest-degree coefficient first at x.
pub fn poly_eval_low_first(poly: &[u8], x: u8) -> u8 {
    let mut acc = 0u8;
    for &c in poly.iter().rev() {
        acc = mul(acc, x) ^ c;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_a_permutation_of_the_nonzero_elements() {
        let mut seen = [false; 256];
        for i in 0..255 {
            let x = exp(i);
            assert_ne!(x, 0);
            assert!(!seen[x as usize], "α^{i} repeats");
            seen[x as usize] = true;
            assert_eq!(log(x), i);
        }
    }

    #[test]
    fn field_laws_hold() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1);
                for b in [1u8, 2, 3, 29, 200, 255] {
                    assert_eq!(div(mul(a, b), b), a);
                    assert_eq!(mul(a, b), mul(b, a));
                }
            }
        }
        // Distributivity on a sample.
        for (a, b, c) in [(3u8, 7u8, 200u8), (255, 254, 1), (17, 99, 128)] {
            assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
        }
    }

    #[test]
    fn polynomial_evaluation_matches_horner_by_hand() {
        // p(x) = 1 + 2x + 3x^2 at x = 2: 1 ^ 4 ^ mul(3, 4)
        let expected = 1 ^ mul(2, 2) ^ mul(3, mul(2, 2));
        assert_eq!(poly_eval_low_first(&[1, 2, 3], 2), expected);
    }
}
