//! How far the tokens' own times were from this reader's clock when it
//! decided: the measurement the freshness window (`clock_skew_secs`) is
//! chosen from. A version-1 token carries the phone's clock; a version-2
//! token the gate's, as its beacon told the phone (docs/protocol.md §3a), so
//! the two are measured apart. Pure: fed records, returns figures.

use serde::Serialize;

use sonotap_protocol::record::{Record, RecordKind};
use sonotap_protocol::token::{Token, TokenVersion};

/// The offsets of one token version's charges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffsetSummary {
    /// `1` or `2`.
    pub version: u8,
    /// Charges measured.
    pub charges: usize,
    /// Median of (token time − decision time), seconds: negative when the
    /// phone's clock (or the beacon it heard) was behind the reader's.
    pub median_secs: i64,
    /// 90th, 99th percentile and largest |token time − decision time|.
    pub p90_abs_secs: u64,
    /// 99th percentile of the absolute offset.
    pub p99_abs_secs: u64,
    /// The largest absolute offset.
    pub max_abs_secs: u64,
    /// Charges more than 30 s off either way.
    pub beyond_30s: usize,
    /// Charges more than 300 s (the default window) off either way.
    pub beyond_300s: usize,
}

/// The offsets of the charges in `records`, one summary per token version
/// present (voids carry their charge's token and are left out).
pub fn offsets(records: &[Record]) -> Vec<OffsetSummary> {
    let mut by_version: [(u8, Vec<i64>); 2] = [(1, Vec::new()), (2, Vec::new())];
    for record in records.iter().filter(|r| r.kind == RecordKind::Charge) {
        let Ok(token) = Token::decode(&record.token) else {
            continue;
        };
        let offset = i64::from(token.payment.timestamp) - record.at as i64;
        let slot = match token.version {
            TokenVersion::V1 => 0,
            TokenVersion::V2 => 1,
        };
        by_version[slot].1.push(offset);
    }
    by_version
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(version, mut signed)| {
            signed.sort_unstable();
            let mut abs: Vec<u64> = signed.iter().map(|o| o.unsigned_abs()).collect();
            abs.sort_unstable();
            let at = |q: f64| abs[((abs.len() - 1) as f64 * q).round() as usize];
            OffsetSummary {
                version,
                charges: signed.len(),
                median_secs: signed[signed.len() / 2],
                p90_abs_secs: at(0.90),
                p99_abs_secs: at(0.99),
                max_abs_secs: abs[abs.len() - 1],
                beyond_30s: abs.iter().filter(|a| **a > 30).count(),
                beyond_300s: abs.iter().filter(|a| **a > 300).count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonotap_protocol::testkit::*;
    use sonotap_protocol::token::PaymentTerms;

    fn charge(token: Vec<u8>, at: u64) -> Record {
        Record {
            seq: 1,
            at,
            kind: RecordKind::Charge,
            wallet: sonotap_protocol::token::WalletId([0; 8]),
            counter: 1,
            amount: 1,
            token,
            prev_hash: [0; 32],
            hash: [0; 32],
            signature: [0; 64],
            synced_at: None,
        }
    }

    fn made_at(t: u32) -> PaymentTerms {
        PaymentTerms {
            timestamp: t,
            ..payment()
        }
    }

    #[test]
    fn offsets_are_summarised_per_version_with_their_sign_and_tail() {
        let now = NOW as u32;
        let mut records: Vec<Record> = [-40i64, -3, 0, 2, 400]
            .iter()
            .map(|d| {
                charge(
                    token_bytes(terms(), made_at((i64::from(now) + d) as u32)),
                    NOW,
                )
            })
            .collect();
        records.push(charge(
            token_v2_bytes(terms(), made_at(now - 1), CHALLENGE),
            NOW,
        ));
        let mut void = charge(token_bytes(terms(), made_at(now + 9_000)), NOW);
        void.kind = RecordKind::Void;
        records.push(void);
        let summary = offsets(&records);
        assert_eq!(summary.len(), 2);
        let v1 = &summary[0];
        assert_eq!((v1.version, v1.charges), (1, 5), "the void is left out");
        assert_eq!(v1.median_secs, 0);
        assert_eq!(v1.max_abs_secs, 400);
        assert_eq!((v1.beyond_30s, v1.beyond_300s), (2, 1));
        let v2 = &summary[1];
        assert_eq!((v2.version, v2.charges, v2.median_secs), (2, 1, -1));
    }

    #[test]
    fn no_charges_give_no_summary() {
        assert!(offsets(&[]).is_empty());
    }
}
