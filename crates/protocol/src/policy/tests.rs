//! One test per decline reason, and the boundaries between accept and decline.

use super::*;
use crate::testkit::*;
use crate::token::{CredentialTerms, PaymentTerms, reader_tag};
use ed25519_dalek::SigningKey;

/// Runs both stages the way the store does.
fn evaluate(
    bytes: &[u8],
    history: WalletHistory,
    charge: Option<u32>,
    now: u64,
) -> Result<Approval, Decline> {
    let authentic = authenticate(bytes, &keys())?;
    decide(
        &authentic,
        &history,
        &policy(),
        charge.and_then(NonZeroU32::new),
        now,
    )
}

fn reason(result: Result<Approval, Decline>) -> Option<Reason> {
    result.err().map(|d| d.reason)
}

/// The reason a token (`bytes`) from a wallet with no history is declined
/// at `NOW` for its authorised amount, or `None` if it is accepted.
fn declined_now(bytes: &[u8]) -> Option<Reason> {
    declined_after(bytes, fresh())
}

/// The same for a wallet with `history`.
fn declined_after(bytes: &[u8], history: WalletHistory) -> Option<Reason> {
    reason(evaluate(bytes, history, None, NOW))
}

/// The test token with payment counter `counter`.
fn with_counter(counter: u32) -> Vec<u8> {
    token_bytes(
        terms(),
        PaymentTerms {
            counter,
            ..payment()
        },
    )
}

fn fresh() -> WalletHistory {
    WalletHistory::default()
}

#[test]
fn a_good_token_is_accepted_for_its_authorised_amount() {
    let approval = evaluate(&token_bytes(terms(), payment()), fresh(), None, NOW).expect("accept");
    assert_eq!(
        approval,
        Approval {
            charge: 250,
            running_total: 250
        }
    );
}

#[test]
fn the_reader_may_charge_less_than_authorised() {
    let approval =
        evaluate(&token_bytes(terms(), payment()), fresh(), Some(180), NOW).expect("accept");
    assert_eq!(approval.charge, 180);
    // The wallet counts what it authorised, so the running total does too.
    assert_eq!(approval.running_total, 250);
}

#[test]
fn declines_malformed_truncated_and_padded_tokens() {
    let good = token_bytes(terms(), payment());
    assert_eq!(declined_now(&good[..150]), Some(Reason::Malformed));
    let mut padded = good.clone();
    padded.push(0);
    assert_eq!(declined_now(&padded), Some(Reason::Malformed));
    assert_eq!(declined_now(&[]), Some(Reason::Malformed));
}

#[test]
fn declines_unknown_issuer_key() {
    let bytes = token_bytes(
        CredentialTerms {
            issuer_key_id: 9,
            ..terms()
        },
        payment(),
    );
    let decline = evaluate(&bytes, fresh(), None, NOW).expect_err("unknown key");
    assert_eq!(decline.reason, Reason::UnknownIssuerKey);
    assert!(decline.detail.contains("key id 9"), "{}", decline.detail);
}

#[test]
fn declines_a_credential_from_another_issuer_under_a_trusted_key_id() {
    let forged = CredentialTerms { ..terms() }
        .sign(&SigningKey::from_bytes(&[66; 32]))
        .expect("valid terms");
    let bytes = Token::sign(forged, payment(), &wallet())
        .expect("sign")
        .encode();
    assert_eq!(declined_now(&bytes), Some(Reason::BadSignature));
}

#[test]
fn declines_a_flipped_bit_in_the_payment() {
    let mut bytes = token_bytes(terms(), payment());
    bytes[crate::token::CREDENTIAL_LEN + 3] ^= 0x01; // lowest bit of the amount
    assert_eq!(declined_now(&bytes), Some(Reason::BadSignature));
}

#[test]
fn declines_denied_wallet() {
    let history = WalletHistory {
        denied: true,
        ..fresh()
    };
    let decline =
        evaluate(&token_bytes(terms(), payment()), history, None, NOW).expect_err("denied");
    assert_eq!(decline.reason, Reason::WalletDenied);
}

#[test]
fn declines_wrong_scope_currency_and_reader_binding() {
    let bound_to = |gate: &str| PaymentTerms {
        reader_tag: reader_tag(gate),
        ..payment()
    };
    let vending = CredentialTerms {
        scope: Scope::Vending,
        ..terms()
    };
    let dollars = CredentialTerms {
        currency: 840,
        ..terms()
    };
    for (case, bytes) in [
        ("vending", token_bytes(vending, payment())),
        ("dollars", token_bytes(dollars, payment())),
        ("bound to gate-2", token_bytes(terms(), bound_to("gate-2"))),
    ] {
        assert_eq!(declined_now(&bytes), Some(Reason::WrongScope), "{case}");
    }
    let here = token_bytes(terms(), bound_to("gate-1"));
    assert!(evaluate(&here, fresh(), None, NOW).is_ok());
}

#[test]
fn credential_validity_edges() {
    let t = terms();
    let from = u64::from(t.valid_from);
    let until = t.valid_until();
    // A token made at the reader's time, so only the credential window matters.
    let at = |now: u64| {
        token_bytes(
            t,
            PaymentTerms {
                timestamp: now as u32,
                ..payment()
            },
        )
    };
    assert_eq!(
        reason(evaluate(&at(from - 1), fresh(), None, from - 1)),
        Some(Reason::CredentialNotYetValid)
    );
    assert!(evaluate(&at(from), fresh(), None, from).is_ok());
    assert!(evaluate(&at(until - 1), fresh(), None, until - 1).is_ok());
    assert_eq!(
        reason(evaluate(&at(until), fresh(), None, until)),
        Some(Reason::CredentialExpired)
    );
    assert_eq!(
        reason(evaluate(&at(until + 86_400), fresh(), None, until + 86_400)),
        Some(Reason::CredentialExpired)
    );
}

#[test]
fn skew_window_edges() {
    let at = |offset: i64| {
        let timestamp = (NOW as i64 + offset) as u32;
        token_bytes(
            terms(),
            PaymentTerms {
                timestamp,
                ..payment()
            },
        )
    };
    let skew = i64::from(SKEW);
    assert!(evaluate(&at(skew), fresh(), None, NOW).is_ok());
    assert_eq!(declined_now(&at(skew + 1)), Some(Reason::FutureToken));
    assert!(evaluate(&at(-skew), fresh(), None, NOW).is_ok());
    assert_eq!(declined_now(&at(-skew - 1)), Some(Reason::StaleToken));
}

#[test]
fn the_same_token_twice_is_replayed() {
    let bytes = token_bytes(terms(), payment());
    let first = evaluate(&bytes, fresh(), None, NOW).expect("first tap");
    // What the store records after the first tap.
    let after = WalletHistory {
        last_counter: Some(5),
        credential_total: first.running_total,
        ..fresh()
    };
    assert_eq!(declined_after(&bytes, after), Some(Reason::Replayed));
}

#[test]
fn lower_or_equal_counter_is_replayed_higher_is_not() {
    let history = WalletHistory {
        last_counter: Some(5),
        ..fresh()
    };
    assert_eq!(
        declined_after(&with_counter(4), history.clone()),
        Some(Reason::Replayed)
    );
    assert_eq!(
        declined_after(&with_counter(5), history.clone()),
        Some(Reason::Replayed)
    );
    assert!(evaluate(&with_counter(6), history, None, NOW).is_ok());
}

#[test]
fn a_counter_a_site_peer_accepted_is_replayed_and_named_after_the_peer() {
    let history = WalletHistory {
        site: Some(SiteSeen {
            reader: "gate-2".into(),
            counter: 5,
            at: NOW - 3,
        }),
        ..fresh()
    };
    let declined = evaluate(&with_counter(5), history.clone(), None, NOW).unwrap_err();
    assert_eq!(declined.reason, Reason::Replayed);
    assert!(declined.detail.contains("gate-2"), "{}", declined.detail);
    assert!(declined.detail.contains("3s ago"), "{}", declined.detail);
    assert_eq!(
        declined_after(&with_counter(4), history.clone()),
        Some(Reason::Replayed)
    );
    assert!(evaluate(&with_counter(6), history, None, NOW).is_ok());
}

#[test]
fn counter_cannot_wrap_around() {
    let exhausted = WalletHistory {
        last_counter: Some(u32::MAX),
        ..fresh()
    };
    // Counter 0 is not even canonical; 1 after u32::MAX is a replay.
    let mut zero = with_counter(1);
    zero[crate::token::CREDENTIAL_LEN + 4..crate::token::CREDENTIAL_LEN + 8]
        .copy_from_slice(&[0; 4]);
    assert_eq!(
        declined_after(&zero, exhausted.clone()),
        Some(Reason::Malformed)
    );
    assert_eq!(
        declined_after(&with_counter(1), exhausted.clone()),
        Some(Reason::Replayed)
    );
    assert_eq!(
        declined_after(&with_counter(u32::MAX), exhausted),
        Some(Reason::Replayed)
    );
    let nearly = WalletHistory {
        last_counter: Some(u32::MAX - 1),
        ..fresh()
    };
    assert!(evaluate(&with_counter(u32::MAX), nearly, None, NOW).is_ok());
}

#[test]
fn payment_cap_edges_and_overcharge() {
    let with_amount = |amount| {
        token_bytes(
            terms(),
            PaymentTerms {
                amount,
                ..payment()
            },
        )
    };
    assert!(evaluate(&with_amount(300), fresh(), None, NOW).is_ok());
    assert_eq!(
        declined_now(&with_amount(301)),
        Some(Reason::OverPaymentCap)
    );
    let decline = evaluate(&with_amount(200), fresh(), Some(201), NOW).expect_err("overcharge");
    assert_eq!(decline.reason, Reason::OverPaymentCap);
    assert!(decline.detail.contains("charge 201"), "{}", decline.detail);
    assert!(evaluate(&with_amount(200), fresh(), Some(200), NOW).is_ok());
}

#[test]
fn offline_limit_reached_exactly_is_accepted_one_more_is_not() {
    let with = |amount, total_before| {
        token_bytes(
            terms(),
            PaymentTerms {
                amount,
                total_before,
                ..payment()
            },
        )
    };
    assert_eq!(
        evaluate(&with(300, 700), fresh(), None, NOW).map(|a| a.running_total),
        Ok(1_000)
    );
    assert_eq!(
        declined_now(&with(300, 701)),
        Some(Reason::OverOfflineLimit)
    );
}

#[test]
fn a_wallet_understating_its_running_total_is_held_to_what_the_reader_saw() {
    let seen = WalletHistory {
        last_counter: Some(4),
        credential_total: 900,
        ..fresh()
    };
    // The wallet claims it spent nothing so far; the reader saw 900.
    let bytes = token_bytes(
        terms(),
        PaymentTerms {
            amount: 200,
            total_before: 0,
            ..payment()
        },
    );
    assert_eq!(declined_after(&bytes, seen), Some(Reason::OverOfflineLimit));
}

#[test]
fn reasons_are_listed_in_check_order() {
    let stateful: Vec<Reason> = RULES.iter().map(|r| r.reason).collect();
    assert_eq!(&Reason::ALL[3..], stateful.as_slice());
    let codes: Vec<String> = Reason::ALL
        .iter()
        .map(|r| serde_json::to_string(r).expect("json"))
        .collect();
    for (reason, code) in Reason::ALL.iter().zip(&codes) {
        assert_eq!(code, &format!("\"{}\"", reason.as_str()));
    }
}

#[test]
fn first_failing_check_wins() {
    // Expired and over the cap and denied: denied comes first.
    let bytes = token_bytes(
        terms(),
        PaymentTerms {
            amount: 300,
            total_before: 999,
            ..payment()
        },
    );
    let history = WalletHistory {
        denied: true,
        last_counter: Some(10),
        credential_total: 0,
        site: None,
    };
    assert_eq!(
        reason(evaluate(&bytes, history, None, NOW + 10 * 86_400)),
        Some(Reason::WalletDenied)
    );
}

#[test]
fn issue13_12_most_chargeable_runs_every_price_free_check_and_bounds_the_funds() {
    // The good token: 250 authorised, cap 300, limit 1000, nothing spent.
    let bytes = token_bytes(terms(), payment());
    let authentic = authenticate(&bytes, &keys()).expect("authentic");
    assert_eq!(
        most_chargeable(&authentic, &fresh(), &policy(), NOW),
        Ok(250)
    );
    // What is seen spent under the credential counts, as at commit.
    let spent = WalletHistory {
        credential_total: 700,
        ..fresh()
    };
    assert_eq!(most_chargeable(&authentic, &spent, &policy(), NOW), Ok(250));
    let over = WalletHistory {
        credential_total: 800,
        ..fresh()
    };
    let declined = most_chargeable(&authentic, &over, &policy(), NOW).expect_err("over");
    assert_eq!(declined.reason, Reason::OverOfflineLimit);
    // A denied wallet, an expired credential, an amount above the cap: no funds at all.
    let denied = WalletHistory {
        denied: true,
        ..fresh()
    };
    assert_eq!(
        most_chargeable(&authentic, &denied, &policy(), NOW).map_err(|d| d.reason),
        Err(Reason::WalletDenied)
    );
    assert_eq!(
        most_chargeable(&authentic, &fresh(), &policy(), NOW + 30 * 3600).map_err(|d| d.reason),
        Err(Reason::CredentialExpired)
    );
    let big = token_bytes(
        terms(),
        PaymentTerms {
            amount: u32::MAX,
            ..payment()
        },
    );
    let big = authenticate(&big, &keys()).expect("authentic");
    assert_eq!(
        most_chargeable(&big, &fresh(), &policy(), NOW).map_err(|d| d.reason),
        Err(Reason::OverPaymentCap)
    );
}

/// Decides on `bytes` at a gate that announced [`CHALLENGE`] at `issued_at`.
fn at_beaconing_gate(bytes: &[u8], issued_at: u64, now: u64) -> Result<Approval, Decline> {
    let authentic = authenticate(bytes, &keys())?;
    decide(
        &authentic,
        &fresh(),
        &beaconing_policy(issued_at),
        None,
        now,
    )
}

#[test]
fn a_version_2_token_bound_to_a_live_challenge_of_this_gate_is_accepted() {
    let bytes = token_v2_bytes(terms(), payment(), CHALLENGE);
    assert!(at_beaconing_gate(&bytes, NOW - 10, NOW).is_ok());
    // The challenge's last second still counts.
    assert!(at_beaconing_gate(&bytes, NOW - 30, NOW).is_ok());
}

#[test]
fn a_version_2_token_bound_to_another_gate_or_challenge_is_wrong_scope() {
    let other_challenge = token_v2_bytes(terms(), payment(), [0x11; 8]);
    let declined = at_beaconing_gate(&other_challenge, NOW - 10, NOW).unwrap_err();
    assert_eq!(declined.reason, Reason::WrongScope);
    assert!(
        declined.detail.contains("another gate"),
        "{}",
        declined.detail
    );
    // The same challenge heard at gate-2 binds to gate-2, not to this gate.
    let other_gate = Token::sign_for_gate(
        credential(terms()),
        payment(),
        reader_tag("gate-2"),
        &CHALLENGE,
        &wallet(),
    )
    .unwrap()
    .encode();
    assert_eq!(
        reason(at_beaconing_gate(&other_gate, NOW - 10, NOW)),
        Some(Reason::WrongScope)
    );
    // A reader that never beaconed knows no challenge at all.
    let bytes = token_v2_bytes(terms(), payment(), CHALLENGE);
    assert_eq!(declined_now(&bytes), Some(Reason::WrongScope));
}

#[test]
fn a_version_2_token_whose_challenge_lived_out_is_stale() {
    let bytes = token_v2_bytes(terms(), payment(), CHALLENGE);
    let declined = at_beaconing_gate(&bytes, NOW - 31, NOW).unwrap_err();
    assert_eq!(declined.reason, Reason::StaleToken);
    assert!(declined.detail.contains("31s ago"), "{}", declined.detail);
}

#[test]
fn a_version_1_token_is_declined_where_only_beacon_bound_tokens_are_taken() {
    let v1 = token_bytes(terms(), payment());
    let declined = at_beaconing_gate(&v1, NOW - 10, NOW).unwrap_err();
    assert_eq!(declined.reason, Reason::WrongScope);
    assert!(declined.detail.contains("version-1"), "{}", declined.detail);
    // Where the operator allows them, they are taken as before.
    let mut allowing = beaconing_policy(NOW - 10);
    allowing.gate.accept_v1 = true;
    let authentic = authenticate(&v1, &keys()).unwrap();
    assert!(decide(&authentic, &fresh(), &allowing, None, NOW).is_ok());
}

#[test]
fn a_version_2_tokens_time_is_held_to_its_challenges_life_not_the_phone_clock_window() {
    // The challenge is live (announced 10 s ago, life 30 s); the window for
    // the gate's own time is 30 + 10 s, not the 300 s kept for phone clocks.
    let made = |delta: i64| {
        token_v2_bytes(
            terms(),
            PaymentTerms {
                timestamp: (NOW as i64 + delta) as u32,
                ..payment()
            },
            CHALLENGE,
        )
    };
    assert!(at_beaconing_gate(&made(-40), NOW - 10, NOW).is_ok());
    assert_eq!(
        reason(at_beaconing_gate(&made(-41), NOW - 10, NOW)),
        Some(Reason::StaleToken)
    );
    assert!(at_beaconing_gate(&made(40), NOW - 10, NOW).is_ok());
    assert_eq!(
        reason(at_beaconing_gate(&made(41), NOW - 10, NOW)),
        Some(Reason::FutureToken)
    );
    // A version-1 token 41 s old is still within its 300 s.
    let v1 = token_bytes(
        terms(),
        PaymentTerms {
            timestamp: (NOW - 41) as u32,
            ..payment()
        },
    );
    assert!(evaluate(&v1, fresh(), None, NOW).is_ok());
}
