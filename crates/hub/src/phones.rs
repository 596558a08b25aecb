//! How much the hub lets phones ask: riders reach the hub from anywhere,
//! so every address and every wallet gets a budget of requests, and every
//! address a smaller one of failed enrolment codes (docs/sync.md §2.3).
//!
//! Pure: a [`Limiter`] takes the time in milliseconds and keeps bounded
//! state, so a flood of addresses costs at most [`MAX_KEYS`] buckets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use sonotap_protocol::token::WalletId;

/// The most keys one bucket table holds; when full, the buckets that have
/// refilled are forgotten first, then the least recently used half.
pub const MAX_KEYS: usize = 100_000;

/// A budget: `burst` requests at once, then one every `every_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Milliseconds for one more.
    pub every_ms: u64,
}

/// Requests per client address: a phone asks a few times a day; a NAT of
/// many phones may ask a few times a second.
pub const PER_ADDRESS: Rate = Rate {
    burst: 60,
    every_ms: 200,
};
/// Requests per wallet: a renewal, a statement now and then.
pub const PER_WALLET: Rate = Rate {
    burst: 10,
    every_ms: 6_000,
};
/// Enrolment codes refused per address: guessing an 80-bit code is
/// hopeless anyway; this keeps it slow and visible in the log.
pub const CODE_FAILURES: Rate = Rate {
    burst: 5,
    every_ms: 60_000,
};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in thousandths, as of `at_ms`.
    milli: u64,
    at_ms: u64,
}

/// Token buckets keyed by `K`.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
    max_keys: usize,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// Empty buckets with `rate`, at most `max_keys` of them.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
            max_keys: max_keys.max(1),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.rate.burst) * 1000
    }

    fn refilled(&self, b: Bucket, now_ms: u64) -> u64 {
        let gained =
            now_ms.saturating_sub(b.at_ms).saturating_mul(1000) / self.rate.every_ms.max(1);
        b.milli.saturating_add(gained).min(self.full())
    }

    /// Milliseconds until `key` has a token (0: it has one now).
    pub fn wait_ms(&self, key: &K, now_ms: u64) -> u64 {
        match self.buckets.get(key) {
            None => 0,
            Some(b) => {
                let have = self.refilled(*b, now_ms);
                match have >= 1000 {
                    true => 0,
                    false => (1000 - have) * self.rate.every_ms.max(1) / 1000 + 1,
                }
            }
        }
    }

    /// Takes a token for `key`: `Ok` if it had one, else how many
    /// milliseconds until it will.
    pub fn take(&mut self, key: &K, now_ms: u64) -> Result<(), u64> {
        let have = match self.buckets.get(key) {
            Some(b) => self.refilled(*b, now_ms),
            None => {
                self.make_room(now_ms);
                self.full()
            }
        };
        if have < 1000 {
            return Err((1000 - have) * self.rate.every_ms.max(1) / 1000 + 1);
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                milli: have - 1000,
                at_ms: now_ms,
            },
        );
        Ok(())
    }

    fn make_room(&mut self, now_ms: u64) {
        if self.buckets.len() < self.max_keys {
            return;
        }
        let full = self.full();
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let gained = now_ms.saturating_sub(b.at_ms).saturating_mul(1000) / rate.every_ms.max(1);
            b.milli.saturating_add(gained) < full
        });
        if self.buckets.len() >= self.max_keys {
            let mut times: Vec<u64> = self.buckets.values().map(|b| b.at_ms).collect();
            let mid = times.len() / 2;
            let (_, cut, _) = times.select_nth_unstable(mid);
            let cut = *cut;
            self.buckets.retain(|_, b| b.at_ms > cut);
        }
    }

    /// Keys held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The key an address's budget is kept under: an IPv4 address, or an
/// IPv6 address's /64 (one subscriber's network holds all of its /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(octets))
            }
        },
    }
}

/// Every budget the phone endpoints keep.
#[derive(Debug)]
pub struct Limiter {
    /// Per client address.
    pub addresses: Buckets<IpAddr>,
    /// Per wallet.
    pub wallets: Buckets<WalletId>,
    /// Refused enrolment codes per client address.
    pub code_failures: Buckets<IpAddr>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            addresses: Buckets::new(PER_ADDRESS, MAX_KEYS),
            wallets: Buckets::new(PER_WALLET, MAX_KEYS),
            code_failures: Buckets::new(CODE_FAILURES, MAX_KEYS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_period() {
        let mut b = Buckets::new(
            Rate {
                burst: 3,
                every_ms: 1000,
            },
            10,
        );
        for _ in 0..3 {
            assert_eq!(b.take(&1, 0), Ok(()));
        }
        assert_eq!(b.take(&1, 0), Err(1001));
        assert_eq!(b.take(&1, 999), Err(2));
        assert_eq!(b.take(&1, 1000), Ok(()));
        assert_eq!(b.take(&2, 1000), Ok(()), "another key has its own budget");
    }

    #[test]
    fn a_flood_of_keys_never_holds_more_than_the_cap() {
        let mut b = Buckets::new(
            Rate {
                burst: 2,
                every_ms: 1000,
            },
            100,
        );
        for k in 0..10_000u32 {
            let _ = b.take(&k, u64::from(k));
            assert!(b.len() <= 100);
        }
        // A key still draining keeps its debt while there is room.
        let mut b = Buckets::new(
            Rate {
                burst: 1,
                every_ms: 60_000,
            },
            100,
        );
        assert_eq!(b.take(&"guesser", 0), Ok(()));
        assert!(b.take(&"guesser", 1).is_err());
        assert!(b.wait_ms(&"guesser", 1) > 59_000);
    }

    #[test]
    fn an_ipv6_network_shares_one_budget_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
