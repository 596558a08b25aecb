//! Per-token cost of the tap path, on one core, against a real SQLite file.
//!
//! - `verify`: parse + issuer and wallet signature checks (`verify_strict`).
//! - `policy`: the stateful checks alone (pure).
//! - `accept`: verify + policy + durable commit (WAL, synchronous=FULL, one
//!   fsync per accept) of a fresh token, as `reader accept` does.
//!
//! Criterion reports means; a payment reader cares about the tail, so the
//! accept group also records every single accept's latency and prints the
//! median, p99 and max. Run: `cargo bench --bench accept`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use sonotap_disk::keys::PublicKey;
use sonotap_protocol::policy::{ReaderPolicy, TrustedKeys, WalletHistory, authenticate, decide};
use sonotap_protocol::token::{CredentialTerms, PaymentTerms, Scope, Token, reader_tag};
use sonotap_reader::reader::{InitOptions, Reader};

const NOW: u64 = 1_800_000_000;

struct Fixture {
    issuer: SigningKey,
    wallet: SigningKey,
    terms: CredentialTerms,
}

impl Fixture {
    fn new() -> Self {
        let issuer = SigningKey::from_bytes(&[1; 32]);
        let wallet = SigningKey::from_bytes(&[2; 32]);
        let terms = CredentialTerms {
            issuer_key_id: 1,
            scope: Scope::Transit,
            currency: 978,
            wallet_key: wallet.verifying_key().to_bytes(),
            offline_limit: u32::MAX,
            per_payment_cap: 1_000,
            valid_from: NOW as u32 - 3600,
            valid_hours: 48,
        };
        Self {
            issuer,
            wallet,
            terms,
        }
    }

    fn token(&self, counter: u32) -> Vec<u8> {
        let credential = self.terms.sign(&self.issuer).expect("valid terms");
        let payment = PaymentTerms {
            amount: 250,
            counter,
            total_before: 0,
            timestamp: NOW as u32,
            reader_tag: 0,
        };
        Token::sign(credential, payment, &self.wallet)
            .expect("sign")
            .encode()
    }

    fn keys(&self) -> TrustedKeys {
        let mut keys = TrustedKeys::default();
        keys.insert(1, self.issuer.verifying_key());
        keys
    }
}

fn verify_and_policy(c: &mut Criterion) {
    let fixture = Fixture::new();
    let token = fixture.token(1);
    let keys = fixture.keys();
    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify", |b| {
        b.iter(|| authenticate(black_box(&token), &keys).expect("authentic"))
    });
    let authentic = authenticate(&token, &keys).expect("authentic");
    let policy = ReaderPolicy {
        reader_tag: reader_tag("bench"),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        gate: Default::default(),
    };
    group.bench_function("policy", |b| {
        b.iter(|| {
            decide(
                black_box(&authentic),
                &WalletHistory::default(),
                &policy,
                None,
                NOW,
            )
        })
    });
    group.finish();
}

fn accept(c: &mut Criterion) {
    let fixture = Fixture::new();
    // On the build's own disk, never tmpfs: fsync must cost what it costs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let issuer = PublicKey::from_bytes(
        sonotap_disk::keys::Role::Issuer,
        Some(1),
        &fixture.issuer.verifying_key().to_bytes(),
    )
    .expect("issuer key");
    let options = InitOptions {
        id: "bench".into(),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        fare: None,
    };
    let mut reader = Reader::init(&dir.path().join("r"), &options, &issuer, NOW).expect("reader");
    let mut counter = 0u32;
    let mut samples: Vec<Duration> = Vec::new();

    let mut group = c.benchmark_group("tap");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("accept_durable", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                counter += 1;
                let token = fixture.token(counter); // made by the phone: not timed
                let start = Instant::now();
                let outcome = reader
                    .present(&token, None::<NonZeroU32>, NOW)
                    .expect("store works");
                let took = start.elapsed();
                assert!(outcome.decision.is_ok(), "{:?}", outcome.decision);
                total += took;
                samples.push(took);
            }
            total
        })
    });
    group.finish();

    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "accept (verify + policy + durable commit), {} single accepts: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
    );
}

criterion_group!(benches, verify_and_policy, accept);
criterion_main!(benches);
