use super::*;
use proptest::prelude::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn terms(wallet: &SigningKey) -> CredentialTerms {
    CredentialTerms {
        issuer_key_id: 1,
        scope: Scope::Transit,
        currency: 978,
        wallet_key: wallet.verifying_key().to_bytes(),
        offline_limit: 5_000,
        per_payment_cap: 500,
        valid_from: 1_800_000_000,
        valid_hours: 72,
    }
}

fn payment() -> PaymentTerms {
    PaymentTerms {
        amount: 250,
        counter: 7,
        total_before: 1_000,
        timestamp: 1_800_000_100,
        reader_tag: 0,
    }
}

fn sample() -> Token {
    let credential = terms(&key(2)).sign(&key(1)).expect("valid terms");
    Token::sign(credential, payment(), &key(2)).expect("matching key")
}

#[test]
fn token_fits_the_two_hundred_byte_budget() {
    assert_eq!(CREDENTIAL_LEN, 115);
    assert_eq!(TOKEN_LEN, 199);
    assert_eq!(sample().encode().len(), TOKEN_LEN);
}

#[test]
fn encode_decode_round_trips_and_signatures_verify() {
    let token = sample();
    let bytes = token.encode();
    let back = Token::decode(&bytes).expect("canonical");
    assert_eq!(back, token);
    back.credential
        .verify(&key(1).verifying_key())
        .expect("issuer signature");
    back.verify_payment().expect("wallet signature");
}

#[test]
fn trailing_byte_is_rejected() {
    let mut bytes = sample().encode().to_vec();
    bytes.push(0);
    assert!(matches!(
        Token::decode(&bytes),
        Err(FormatError::WrongLength { got: 200, .. })
    ));
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = sample().encode();
    for len in 0..TOKEN_LEN {
        assert!(
            Token::decode(&bytes[..len]).is_err(),
            "length {len} accepted"
        );
    }
}

#[test]
fn unknown_version_is_named() {
    let mut bytes = sample().encode();
    bytes[0] = 3;
    assert_eq!(
        Token::decode(&bytes),
        Err(FormatError::UnsupportedVersion(3))
    );
    // A v1 token relabelled version 2 is one byte short of a v2 token.
    bytes[0] = 2;
    assert!(matches!(
        Token::decode(&bytes),
        Err(FormatError::WrongLength {
            expected: 200,
            got: 199,
            ..
        })
    ));
}

#[test]
fn reserved_scope_codes_are_rejected() {
    for code in [0x00u8, 0x03, 0x10, 0x7f] {
        assert_eq!(
            Scope::from_code(code),
            Err(FormatError::ReservedScope(code))
        );
    }
    for scope in [
        Scope::Transit,
        Scope::Vending,
        Scope::Group(0),
        Scope::Group(127),
    ] {
        assert_eq!(Scope::from_code(scope.code()), Ok(scope));
        assert_eq!(scope.to_string().parse::<Scope>(), Ok(scope));
    }
    assert!("group:128".parse::<Scope>().is_err());
}

#[test]
fn zero_counter_and_zero_amount_are_not_canonical() {
    let credential = terms(&key(2)).sign(&key(1)).expect("valid terms");
    let zero_counter = PaymentTerms {
        counter: 0,
        ..payment()
    };
    assert_eq!(
        Token::sign(credential, zero_counter, &key(2)),
        Err(SignError::Format(FormatError::ZeroCounter))
    );
    let mut bytes = sample().encode();
    bytes[CREDENTIAL_LEN..CREDENTIAL_LEN + 4].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(Token::decode(&bytes), Err(FormatError::ZeroAmount));
}

#[test]
fn signing_with_another_wallet_key_is_refused() {
    let credential = terms(&key(2)).sign(&key(1)).expect("valid terms");
    assert_eq!(
        Token::sign(credential, payment(), &key(3)),
        Err(SignError::KeyMismatch)
    );
}

#[test]
fn credential_signature_does_not_verify_as_payment_signature() {
    // Domain separation: the issuer's signature over the credential must not
    // be usable under the payment domain, nor the reverse.
    let token = sample();
    let issuer = key(1).verifying_key();
    let payment_message = signed_message(PAYMENT_DOMAIN, &token.encode()[..PAYMENT_SIGNED_LEN]);
    assert!(
        issuer
            .verify_strict(
                &payment_message,
                &Signature::from_bytes(&token.credential.issuer_signature)
            )
            .is_err()
    );
}

#[test]
fn every_single_bit_flip_is_caught_by_parse_or_signature() {
    let bytes = sample().encode();
    let issuer = key(1).verifying_key();
    for bit in 0..TOKEN_LEN * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let still_good = Token::decode(&flipped)
            .map(|t| t.credential.verify(&issuer).is_ok() && t.verify_payment().is_ok())
            .unwrap_or(false);
        // Flipping the issuer key id leaves a token that names another key;
        // it is caught by the key lookup, which a signature check against
        // the right key models here.
        assert!(!still_good, "bit {bit} flipped unnoticed");
    }
}

/// The sample's payment as a version-2 token bound to gate `gate-1`'s challenge.
fn sample_v2(challenge: [u8; 8]) -> Token {
    let credential = terms(&key(2)).sign(&key(1)).expect("valid terms");
    Token::sign_for_gate(
        credential,
        payment(),
        reader_tag("gate-1"),
        &challenge,
        &key(2),
    )
    .expect("matching key")
}

#[test]
fn a_version_2_token_is_200_bytes_the_v1_fields_behind_a_version_byte() {
    let v2 = sample_v2([7; 8]);
    let bytes = v2.encode();
    assert_eq!(bytes.len(), TOKEN_V2_LEN);
    assert_eq!(TOKEN_V2_LEN, 200);
    assert_eq!(bytes[0], VERSION_2);
    assert_eq!(
        bytes[1], VERSION,
        "the credential inside keeps its own version"
    );
    let back = Token::decode(&bytes).expect("canonical");
    assert_eq!(back, v2);
    back.verify_payment().expect("wallet signature");
    assert_eq!(
        back.gate_binding(),
        Some(gate_binding(reader_tag("gate-1"), &[7; 8]))
    );
    assert_eq!(back.bound_reader_tag(), None);
    // The fields after the version byte are a v1 layout, but not a v1 token:
    // the wallet signed them under the version-2 domain.
    let as_v1 = Token::decode(&bytes[1..]).expect("the layout parses as v1");
    assert!(
        as_v1.verify_payment().is_err(),
        "a v2 signature never verifies as v1"
    );
}

#[test]
fn a_version_2_token_of_the_wrong_length_or_a_version_3_is_malformed() {
    let bytes = sample_v2([7; 8]).encode();
    for n in 1..bytes.len() {
        assert!(Token::decode(&bytes[..n]).is_err(), "{n} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Token::decode(&longer),
        Err(FormatError::WrongLength {
            expected: 200,
            got: 201,
            ..
        })
    ));
    let mut v3 = bytes;
    v3[0] = 3;
    assert_eq!(Token::decode(&v3), Err(FormatError::UnsupportedVersion(3)));
}

#[test]
fn every_single_bit_flip_of_a_version_2_token_is_caught() {
    let bytes = sample_v2([7; 8]).encode();
    let issuer = key(1).verifying_key();
    for bit in 0..TOKEN_V2_LEN * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let still_good = Token::decode(&flipped)
            .map(|t| t.credential.verify(&issuer).is_ok() && t.verify_payment().is_ok())
            .unwrap_or(false);
        assert!(!still_good, "bit {bit} flipped unnoticed");
    }
}

#[test]
fn wallet_id_and_reader_tag_are_stable() {
    let id = WalletId::of_key(&[0u8; 32]);
    assert_eq!(id.to_string().parse::<WalletId>(), Ok(id));
    assert_ne!(reader_tag("gate-1"), reader_tag("gate-2"));
    assert_ne!(reader_tag("gate-1"), 0);
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Token::decode(&bytes);
        let _ = Credential::decode(&bytes);
    }

    #[test]
    fn decoding_near_valid_bytes_never_panics(
        position in 0..TOKEN_LEN, value in any::<u8>(), cut in 0..=TOKEN_LEN + 2
    ) {
        let mut bytes = sample().encode().to_vec();
        bytes[position] = value;
        bytes.resize(cut, 0);
        let _ = Token::decode(&bytes);
    }

    #[test]
    fn encode_then_decode_round_trips(
        key_id in any::<u8>(), scope in 0u8..130, currency in 1u16..=999,
        limit in any::<u32>(), cap in 1u32.., from in any::<u32>(), hours in 1u16..,
        amount in 1u32.., counter in 1u32.., total in any::<u32>(), at in any::<u32>(), tag in any::<u32>(),
        issuer_sig in any::<[u8; 32]>(), wallet_sig in any::<[u8; 32]>(), wallet_key in any::<[u8; 32]>(),
        v2 in any::<bool>(),
    ) {
        let scope = match scope { 0 => Scope::Transit, 1 => Scope::Vending, g => Scope::Group(g - 2) };
        let mut issuer_signature = [0u8; 64];
        issuer_signature[..32].copy_from_slice(&issuer_sig);
        let mut wallet_signature = [0u8; 64];
        wallet_signature[32..].copy_from_slice(&wallet_sig);
        let token = Token {
            version: if v2 { TokenVersion::V2 } else { TokenVersion::V1 },
            credential: Credential {
                terms: CredentialTerms {
                    issuer_key_id: key_id, scope, currency, wallet_key,
                    offline_limit: limit, per_payment_cap: cap, valid_from: from, valid_hours: hours,
                },
                issuer_signature,
            },
            payment: PaymentTerms { amount, counter, total_before: total, timestamp: at, reader_tag: tag },
            wallet_signature,
        };
        let bytes = token.encode();
        prop_assert_eq!(bytes.len(), token.version.encoded_len());
        prop_assert_eq!(Token::decode(&bytes), Ok(token));
        let credential_at = usize::from(v2);
        prop_assert_eq!(
            Credential::decode(&bytes[credential_at..credential_at + CREDENTIAL_LEN]),
            Ok(token.credential)
        );
    }
}
