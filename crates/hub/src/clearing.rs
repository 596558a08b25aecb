//! Clearing rules: pure functions over what the hub already holds about a
//! wallet's payments. No I/O; [`super::ledger`] fetches the facts and acts on
//! the findings.
//!
//! A wallet signs a counter, its running total before the payment and the
//! amount it authorises; an honest wallet's tokens under one credential
//! therefore form a chain (`total_before(c + 1) = total_before(c) +
//! authorised(c)`) and never reuse a counter. What a clone or a tampered
//! wallet cannot hide from the hub is listed in [`FraudRule`].

use serde::Serialize;

use sonotap_protocol::token::WalletId;

/// Why the hub adds a wallet to the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FraudRule {
    /// The same counter signed twice with different contents (a cloned phone).
    CounterReused,
    /// Running totals that skip backwards: the wallet hid earlier spending.
    TotalsDoNotChain,
    /// Charges under one credential add up to more than its offline limit.
    OverOfflineLimit,
}

impl FraudRule {
    /// Every rule, in the order they are checked.
    pub const ALL: [FraudRule; 3] = [
        FraudRule::CounterReused,
        FraudRule::TotalsDoNotChain,
        FraudRule::OverOfflineLimit,
    ];

    /// The stable code stored with the flag and sent in the deny entry.
    pub fn as_str(self) -> &'static str {
        match self {
            FraudRule::CounterReused => "counter_reused",
            FraudRule::TotalsDoNotChain => "totals_do_not_chain",
            FraudRule::OverOfflineLimit => "over_offline_limit",
        }
    }

    /// The reason code a deny-list entry for this rule publishes.
    pub fn deny_reason(self) -> sonotap_protocol::wire::DenyReason {
        use sonotap_protocol::wire::DenyReason;
        match self {
            FraudRule::CounterReused => DenyReason::CounterReused,
            FraudRule::TotalsDoNotChain => DenyReason::TotalsDoNotChain,
            FraudRule::OverOfflineLimit => DenyReason::OverOfflineLimit,
        }
    }

    /// One line for operators (`sonotap hub report`, docs).
    pub fn describe(self) -> &'static str {
        match self {
            FraudRule::CounterReused => {
                "one wallet counter signed twice with different contents (cloned wallet)"
            }
            FraudRule::TotalsDoNotChain => {
                "a token's running total is below the previous token's total plus its amount"
            }
            FraudRule::OverOfflineLimit => {
                "charges under one credential, at all readers, exceed its offline limit"
            }
        }
    }
}

/// One distinct payment token as the hub keeps it (the same token seen at
/// two readers is one payment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// SHA-256 of the token bytes.
    pub token_hash: [u8; 32],
    /// The paying wallet.
    pub wallet: WalletId,
    /// The wallet's counter.
    pub counter: u32,
    /// Digest of the credential it was made under.
    pub credential: [u8; 32],
    /// The wallet's running total before this payment, as it signed it.
    pub total_before: u32,
    /// The amount the wallet authorised.
    pub authorised: u32,
    /// Where the hub first saw it.
    pub reader: String,
    /// The record's sequence number there.
    pub seq: u64,
}

/// A rule broken, with the records that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule.
    pub rule: FraudRule,
    /// What was seen, for the operator.
    pub detail: String,
    /// `(reader, seq)` of the records involved.
    pub records: Vec<(String, u64)>,
}

/// What the hub knows around a newly seen payment.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// Other payments of the same wallet with the same counter.
    pub same_counter: &'a [Payment],
    /// The payment with the next lower counter under the same credential.
    pub before: Option<&'a Payment>,
    /// The payment with the next higher counter under the same credential.
    pub after: Option<&'a Payment>,
    /// Net charges under the credential, this payment's charge included.
    pub credential_charged: u64,
    /// The credential's offline limit.
    pub offline_limit: u32,
}

/// The rules a new payment breaks, given what was known before it.
pub fn check(new: &Payment, ctx: &Context<'_>) -> Vec<Finding> {
    let at = |p: &Payment| (p.reader.clone(), p.seq);
    let mut findings = Vec::new();
    if let Some(other) = ctx
        .same_counter
        .iter()
        .find(|p| p.token_hash != new.token_hash)
    {
        findings.push(Finding {
            rule: FraudRule::CounterReused,
            detail: format!(
                "counter {} used at {} #{} and at {} #{} with different contents",
                new.counter, other.reader, other.seq, new.reader, new.seq
            ),
            records: vec![at(other), at(new)],
        });
    }
    for (earlier, later) in [(ctx.before, Some(new)), (Some(new), ctx.after)] {
        let (Some(earlier), Some(later)) = (earlier, later) else {
            continue;
        };
        let floor = u64::from(earlier.total_before) + u64::from(earlier.authorised);
        let total = u64::from(later.total_before);
        let consecutive = u64::from(earlier.counter) + 1 == u64::from(later.counter);
        // Counters the hub has not seen yet may lie between: then the
        // total may be higher, never lower.
        if total < floor || (consecutive && total != floor) {
            findings.push(Finding {
                rule: FraudRule::TotalsDoNotChain,
                detail: format!(
                    "counter {} claims a running total of {total}, but counter {} had already \
                     brought it to {floor}",
                    later.counter, earlier.counter
                ),
                records: vec![at(earlier), at(later)],
            });
        }
    }
    if ctx.credential_charged > u64::from(ctx.offline_limit) {
        findings.push(Finding {
            rule: FraudRule::OverOfflineLimit,
            detail: format!(
                "charges under one credential reached {}, over its offline limit of {}",
                ctx.credential_charged, ctx.offline_limit
            ),
            records: vec![at(new)],
        });
    }
    findings
}

/// What the hub does about a new payment's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sanction {
    /// No rule broken.
    None,
    /// A counter signed twice: the credentials of the conflicting tokens
    /// are suspended for review, and the wallet is not denied. A phone
    /// restored from a backup reuses its counters exactly as a clone does,
    /// so the hub cannot tell them apart; a suspension stops the
    /// credentials at every reader after its next sync, and leaves the
    /// wallet's next credential alone for the operator to decide
    /// (`hub review`, `hub clear`). Oldest credential first, no repeats.
    Suspend(Vec<[u8; 32]>),
    /// The payment's credential is suspended for review already: what it
    /// broke (a limit passed, totals that skip, most likely because the
    /// restored phone restarted its running total) joins that evidence
    /// instead of denying the wallet.
    UnderReview,
    /// Any other rule: the wallet is denied, as before.
    DenyWallet(FraudRule),
}

/// Decides on a payment's `findings` (from [`check`] with `ctx`);
/// `under_review` says whether its credential is suspended already.
pub fn sanction(
    new: &Payment,
    ctx: &Context<'_>,
    findings: &[Finding],
    under_review: bool,
) -> Sanction {
    let Some(first) = findings.first() else {
        return Sanction::None;
    };
    if findings.iter().any(|f| f.rule == FraudRule::CounterReused) {
        let mut credentials: Vec<[u8; 32]> = Vec::new();
        let conflicting = ctx
            .same_counter
            .iter()
            .filter(|p| p.token_hash != new.token_hash)
            .map(|p| p.credential)
            .chain([new.credential]);
        for credential in conflicting {
            if !credentials.contains(&credential) {
                credentials.push(credential);
            }
        }
        return Sanction::Suspend(credentials);
    }
    if under_review {
        return Sanction::UnderReview;
    }
    Sanction::DenyWallet(first.rule)
}

/// Whether a wallet denied by clearing for `reason` should be allowed
/// again because every finding behind it stands with a suspension: each
/// of the wallet's `flags` (rule code, the credential of its payment) is a
/// counter conflict or is on a credential in `suspended` (open suspensions).
/// An operator's denial, or a finding on any other credential, keeps it.
pub fn deny_is_under_review(
    reason: sonotap_protocol::wire::DenyReason,
    flags: &[crate::ledger::FlagOn],
    suspended: &[[u8; 32]],
) -> bool {
    let by_clearing = FraudRule::ALL.iter().any(|r| r.deny_reason() == reason);
    by_clearing
        && flags.iter().all(|(rule, credential)| {
            rule == FraudRule::CounterReused.as_str()
                || credential.is_some_and(|c| suspended.contains(&c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(counter: u32, total_before: u32, authorised: u32, tag: u8) -> Payment {
        Payment {
            token_hash: [tag; 32],
            wallet: WalletId([1; 8]),
            counter,
            credential: [9; 32],
            total_before,
            authorised,
            reader: format!("r{tag}"),
            seq: u64::from(counter),
        }
    }

    fn rules(found: &[Finding]) -> Vec<FraudRule> {
        found.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn honest_chain_breaks_no_rule() {
        let (a, b, c) = (
            payment(1, 0, 250, 1),
            payment(2, 250, 250, 2),
            payment(3, 500, 250, 3),
        );
        let ctx = Context {
            before: Some(&a),
            after: Some(&c),
            credential_charged: 750,
            offline_limit: 2000,
            ..Context::default()
        };
        assert!(check(&b, &ctx).is_empty());
    }

    #[test]
    fn same_counter_with_other_contents_is_a_clone() {
        let first = payment(5, 0, 250, 1);
        let clone = payment(5, 0, 250, 2);
        let ctx = Context {
            same_counter: std::slice::from_ref(&first),
            credential_charged: 500,
            offline_limit: 2000,
            ..Context::default()
        };
        let found = check(&clone, &ctx);
        assert_eq!(rules(&found), [FraudRule::CounterReused]);
        assert_eq!(found[0].records, [("r1".into(), 5), ("r2".into(), 5)]);
    }

    #[test]
    fn same_token_twice_is_not_a_clone() {
        let first = payment(5, 0, 250, 1);
        let ctx = Context {
            same_counter: std::slice::from_ref(&first),
            credential_charged: 250,
            offline_limit: 2000,
            ..Context::default()
        };
        assert!(check(&first.clone(), &ctx).is_empty());
    }

    #[test]
    fn running_total_reset_does_not_chain() {
        let a = payment(1, 0, 250, 1);
        let reset = payment(2, 0, 250, 2);
        let ctx = Context {
            before: Some(&a),
            credential_charged: 500,
            offline_limit: 2000,
            ..Context::default()
        };
        assert_eq!(rules(&check(&reset, &ctx)), [FraudRule::TotalsDoNotChain]);
    }

    #[test]
    fn a_later_token_arriving_first_is_checked_against_the_earlier_one() {
        let late = payment(4, 100, 250, 4);
        let earlier = payment(3, 500, 250, 3);
        let ctx = Context {
            after: Some(&late),
            credential_charged: 500,
            offline_limit: 2000,
            ..Context::default()
        };
        assert_eq!(rules(&check(&earlier, &ctx)), [FraudRule::TotalsDoNotChain]);
    }

    #[test]
    fn unseen_counters_in_between_may_raise_the_total_but_not_lower_it() {
        let a = payment(1, 0, 250, 1);
        let skipped = payment(4, 900, 250, 4);
        let ctx = Context {
            before: Some(&a),
            credential_charged: 500,
            offline_limit: 2000,
            ..Context::default()
        };
        assert!(check(&skipped, &ctx).is_empty());
        let lower = payment(4, 200, 250, 5);
        assert_eq!(rules(&check(&lower, &ctx)), [FraudRule::TotalsDoNotChain]);
    }

    #[test]
    fn spend_over_the_limit_across_readers_is_flagged_at_the_limit_plus_one() {
        let p = payment(1, 0, 250, 1);
        let at_limit = Context {
            credential_charged: 2000,
            offline_limit: 2000,
            ..Context::default()
        };
        assert!(check(&p, &at_limit).is_empty());
        let over = Context {
            credential_charged: 2001,
            ..at_limit
        };
        assert_eq!(rules(&check(&p, &over)), [FraudRule::OverOfflineLimit]);
    }

    #[test]
    fn issue17_a_counter_conflict_suspends_both_credentials_and_denies_no_wallet() {
        let first = Payment {
            credential: [7; 32],
            ..payment(5, 0, 250, 1)
        };
        let restored = payment(5, 0, 250, 2);
        let ctx = Context {
            same_counter: std::slice::from_ref(&first),
            credential_charged: 2_500,
            offline_limit: 2_000,
            ..Context::default()
        };
        let found = check(&restored, &ctx);
        assert_eq!(
            rules(&found),
            [FraudRule::CounterReused, FraudRule::OverOfflineLimit]
        );
        assert_eq!(
            sanction(&restored, &ctx, &found, false),
            Sanction::Suspend(vec![[7; 32], [9; 32]])
        );
        // Both under one credential: it is named once.
        let same = payment(5, 0, 250, 1);
        let ctx = Context {
            same_counter: std::slice::from_ref(&same),
            ..ctx
        };
        assert_eq!(
            sanction(&restored, &ctx, &check(&restored, &ctx), false),
            Sanction::Suspend(vec![[9; 32]])
        );
    }

    #[test]
    fn issue17_other_rules_deny_the_wallet_unless_its_credential_is_under_review() {
        let p = payment(1, 0, 250, 1);
        let over = Context {
            credential_charged: 2001,
            offline_limit: 2000,
            ..Context::default()
        };
        let found = check(&p, &over);
        assert_eq!(
            sanction(&p, &over, &found, false),
            Sanction::DenyWallet(FraudRule::OverOfflineLimit)
        );
        assert_eq!(sanction(&p, &over, &found, true), Sanction::UnderReview);
        assert_eq!(sanction(&p, &over, &[], true), Sanction::None);
    }

    #[test]
    fn issue17_a_clearing_denial_lifts_only_when_every_finding_is_under_review() {
        use sonotap_protocol::wire::DenyReason;
        let (c, other) = ([9; 32], [8; 32]);
        let flags = vec![
            ("over_offline_limit".to_owned(), Some(c)),
            ("counter_reused".to_owned(), Some(c)),
        ];
        assert!(deny_is_under_review(
            DenyReason::OverOfflineLimit,
            &flags,
            &[c]
        ));
        assert!(!deny_is_under_review(
            DenyReason::OverOfflineLimit,
            &flags,
            &[other]
        ));
        assert!(
            !deny_is_under_review(DenyReason::LostOrStolen, &flags, &[c]),
            "an operator's denial stays"
        );
        let mut more = flags.clone();
        more.push(("totals_do_not_chain".to_owned(), Some(other)));
        assert!(!deny_is_under_review(
            DenyReason::OverOfflineLimit,
            &more,
            &[c]
        ));
        more.push(("totals_do_not_chain".to_owned(), None));
        assert!(!deny_is_under_review(
            DenyReason::OverOfflineLimit,
            &more,
            &[c, other]
        ));
    }
}
