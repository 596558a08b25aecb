//! Fixed keys and tokens shared by the unit tests of every crate (feature
//! `testkit`, a dev-dependency only). Test support: panics on misuse.

#![allow(clippy::expect_used)]

use ed25519_dalek::SigningKey;

use crate::policy::{GatePolicy, IssuedChallenge, ReaderPolicy, TrustedKeys};
use crate::token::{
    Credential, CredentialTerms, PaymentTerms, Scope, Token, gate_binding, reader_tag,
};

/// The reader clock most tests run at.
pub const NOW: u64 = 1_800_000_000;
/// The skew window most tests use.
pub const SKEW: u32 = 300;

/// The issuer key (key id 1): seed all ones.
pub fn issuer() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// The wallet key: seed all twos.
pub fn wallet() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// Trusted keys holding [`issuer`] as key id 1.
pub fn keys() -> TrustedKeys {
    let mut keys = TrustedKeys::default();
    keys.insert(1, issuer().verifying_key());
    keys
}

/// Reader `gate-1`, transit, EUR, [`SKEW`] seconds of skew.
pub fn policy() -> ReaderPolicy {
    ReaderPolicy {
        reader_tag: reader_tag("gate-1"),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: SKEW,
        gate: Default::default(),
    }
}

/// Limit 1000, cap 300, valid from an hour before [`NOW`] for a day.
pub fn terms() -> CredentialTerms {
    CredentialTerms {
        issuer_key_id: 1,
        scope: Scope::Transit,
        currency: 978,
        wallet_key: wallet().verifying_key().to_bytes(),
        offline_limit: 1_000,
        per_payment_cap: 300,
        valid_from: (NOW - 3600) as u32,
        valid_hours: 24,
    }
}

/// 250 authorised, counter 5, nothing spent before, made at [`NOW`].
pub fn payment() -> PaymentTerms {
    PaymentTerms {
        amount: 250,
        counter: 5,
        total_before: 0,
        timestamp: NOW as u32,
        reader_tag: 0,
    }
}

/// `terms` signed by [`issuer`].
pub fn credential(terms: CredentialTerms) -> Credential {
    terms.sign(&issuer()).expect("valid terms")
}

/// A token for `terms` and `payment`, signed by [`wallet`], encoded.
pub fn token_bytes(terms: CredentialTerms, payment: PaymentTerms) -> Vec<u8> {
    Token::sign(credential(terms), payment, &wallet())
        .expect("wallet key matches")
        .encode()
        .to_vec()
}

/// The challenge gate `gate-1` (the [`policy`] reader) announces in tests.
pub const CHALLENGE: [u8; 8] = [0xC4; 8];

/// A version-2 token for `terms` and `payment`, bound to gate `gate-1` and
/// `challenge`, signed by [`wallet`], encoded.
pub fn token_v2_bytes(
    terms: CredentialTerms,
    payment: PaymentTerms,
    challenge: [u8; 8],
) -> Vec<u8> {
    Token::sign_for_gate(
        credential(terms),
        payment,
        reader_tag("gate-1"),
        &challenge,
        &wallet(),
    )
    .expect("wallet key matches")
    .encode()
}

/// [`policy`] at a gate that beacons: it announced [`CHALLENGE`] at
/// `issued_at`, challenges live 30 s, and version-1 tokens are off.
pub fn beaconing_policy(issued_at: u64) -> ReaderPolicy {
    ReaderPolicy {
        gate: GatePolicy {
            accept_v1: false,
            challenge_life_secs: 30,
            issued: vec![IssuedChallenge {
                binding: gate_binding(reader_tag("gate-1"), &CHALLENGE),
                issued_at,
            }],
        },
        ..policy()
    }
}
