//! Issue 17 through the real binary, a `hub serve` process on 127.0.0.1
//! and real SQLite files (and a throwaway PostgreSQL cluster for the hub
//! where one is installed): a token replayed at other readers is money
//! the report shows, not a reason to deny its rider; a phone restored
//! from a backup that reuses counters is suspended for review, renewed
//! above the highest counter the hub cleared, and cleared by an operator.

use std::process::Output;

use crate::pg_server;
use crate::util::{HubProcess, Scratch, copy_dir, last_json, succeeded};

/// A hub (SQLite in `hub/`, or PostgreSQL), wallet `w` and readers
/// `r1`…`rN` (gate-1…gate-N), each registered at the hub.
struct Site {
    s: Scratch,
    database: Option<String>,
    /// The first credential's start of validity.
    valid_from: u64,
}

impl Site {
    fn new(readers: usize, database: Option<String>) -> Self {
        let site = Self {
            s: Scratch::new(),
            database,
            valid_from: crate::util::unix_now() - 3600,
        };
        site.hub(&["hub", "init", "--data", "hub"]);
        site.s.ok(&["wallet", "new", "--dir", "w"]);
        site.issue("cred", site.valid_from);
        site.s
            .ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
        for n in 1..=readers {
            let (dir, id) = (format!("r{n}"), format!("gate-{n}"));
            site.s.reader_init(&dir, &id, &[]);
            let key = format!("{dir}/reader.pub");
            site.hub(&[
                "hub", "reader", "add", "--data", "hub", "--id", &id, "--key", &key,
            ]);
        }
        site
    }

    /// `sonotap ARGS` against this site's hub database.
    fn run_hub<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.s.run_on_hub(self.database.as_deref(), args)
    }

    /// [`Site::run_hub`], requiring success; stdout.
    fn hub<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        succeeded(args, self.run_hub(args))
    }

    /// `hub issue` for wallet `w` (limit 5000, 300 a payment, 48 h from
    /// `from`) into `out` (and `out.renewal`); the JSON it prints.
    fn issue(&self, out: &str, from: u64) -> serde_json::Value {
        let printed = self.hub(&self.issue_args(out, from));
        serde_json::from_str(printed.trim()).expect("issue JSON")
    }

    fn issue_args(&self, out: &str, from: u64) -> Vec<String> {
        let from = from.to_string();
        [
            "hub",
            "issue",
            "--data",
            "hub",
            "--wallet-key",
            "w/wallet.pub",
            "--limit",
            "5000",
            "--per-payment",
            "300",
            "--valid-hours",
            "48",
            "--valid-from",
            &from,
            "--out",
            out,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn serve(&self) -> HubProcess {
        match &self.database {
            Some(url) => HubProcess::start_with(&self.s, &["--database", url]),
            None => HubProcess::start_with(&self.s, &[]),
        }
    }

    /// `wallet pay` from `dir` for `amount` into `out`.
    fn pay(&self, dir: &str, amount: u32, out: &str) {
        let amount = amount.to_string();
        self.s.ok(&[
            "wallet", "pay", "--dir", dir, "--amount", &amount, "--out", out,
        ]);
    }

    /// `reader accept` of token file `token` at `reader`: its JSON answer.
    fn accept(&self, reader: &str, token: &str) -> serde_json::Value {
        last_json(&self.s.run(&["reader", "accept", "--data", reader, token]))
    }

    /// One sync round of `reader` with `hub`: its JSON report.
    fn sync(&self, reader: &str, hub: &HubProcess) -> serde_json::Value {
        let out = self.s.reader_sync(reader, &hub.url, &[]);
        assert!(
            out.status.success(),
            "sync {reader}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(&out)
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_str(&self.hub(&["hub", "report", "--data", "hub", "--json"]))
            .expect("report JSON")
    }
}

fn wallet_id(site: &Site) -> String {
    let shown = site.s.ok(&["wallet", "show", "--dir", "w"]);
    let value: serde_json::Value = serde_json::from_str(shown.trim()).expect("show JSON");
    value["wallet"].as_str().expect("wallet id").to_owned()
}

/// The replay case, on the hub's database `database`.
fn a_token_charged_at_three_readers(database: Option<String>) {
    let site = Site::new(3, database);
    let wallet = wallet_id(&site);
    site.pay("w", 250, "t1");
    // The sound of one token, recorded and played at two more gates.
    for reader in ["r1", "r2", "r3"] {
        assert_eq!(site.accept(reader, "t1")["decision"], "accept");
    }
    let hub = site.serve();
    for reader in ["r1", "r2", "r3"] {
        assert_eq!(site.sync(reader, &hub)["records"], 1);
    }

    let report = site.report();
    let replays = report["replays"].as_array().expect("replays");
    assert_eq!(replays.len(), 1, "one incident for one token: {report}");
    let replay = &replays[0];
    assert_eq!(replay["wallet"], wallet.as_str());
    assert_eq!(replay["attribution"], "copied_token");
    assert_eq!(replay["wallet_denied"], false);
    let charges = replay["charges"].as_array().expect("charges");
    let mut readers: Vec<&str> = charges
        .iter()
        .map(|c| c["reader"].as_str().expect("reader"))
        .collect();
    readers.sort_unstable();
    assert_eq!(readers, ["gate-1", "gate-2", "gate-3"]);
    assert!(
        charges
            .iter()
            .all(|c| c["amount"] == 250 && c["at"].as_u64() > Some(0))
    );
    assert_eq!(
        charges.iter().filter(|c| c["counted"] == true).count(),
        1,
        "counted once against the wallet"
    );
    assert_eq!(
        (replay["collected"].as_u64(), replay["uncollected"].as_u64()),
        (Some(250), Some(500))
    );
    assert_eq!(report["uncollected"], 500);
    assert!(report["flagged"].as_array().expect("flags").is_empty());
    assert_eq!(report["deny_version"], 0, "nobody is denied for it");
    let text = site.hub(&["hub", "report", "--data", "hub"]);
    assert!(
        text.contains("replayed tokens: 1, uncollected 500")
            && text.contains("charged 3 times at gate-")
            && text.contains("a replay of a copied token"),
        "{text}"
    );

    // The rider whose token was copied pays on, everywhere.
    for reader in ["r1", "r2", "r3"] {
        assert_eq!(site.sync(reader, &hub)["deny_entries"], 0);
    }
    site.pay("w", 250, "t2");
    assert_eq!(site.accept("r2", "t2")["decision"], "accept");
}

#[test]
fn issue17_a_token_charged_at_three_readers_is_one_replay_incident_with_the_uncollected_sum() {
    a_token_charged_at_three_readers(None);
}

#[test]
fn issue17_a_token_charged_at_three_readers_is_one_replay_incident_on_postgresql_too() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    server.create_database("replay");
    a_token_charged_at_three_readers(Some(server.url("replay")));
}

/// The restored-phone case, on the hub's database `database`.
fn a_restored_phone(database: Option<String>) {
    let site = Site::new(3, database);
    let wallet = wallet_id(&site);
    let path = |name: &str| site.s.path(name);
    // Counter 1, then the phone is backed up, then counters 2 to 5.
    site.pay("w", 100, "t1");
    copy_dir(&path("w"), &path("backup"));
    for n in 2..=5 {
        site.pay("w", 100, &format!("t{n}"));
    }
    for n in 1..=5 {
        assert_eq!(site.accept("r1", &format!("t{n}"))["decision"], "accept");
    }
    let hub = site.serve();
    assert_eq!(site.sync("r1", &hub)["records"], 5);

    // Restored from the backup: counter 2 again, other contents, at gate-2.
    std::fs::remove_dir_all(path("w")).expect("lost phone");
    copy_dir(&path("backup"), &path("w"));
    site.pay("w", 120, "t2b");
    assert_eq!(site.accept("r2", "t2b")["decision"], "accept");
    // Its upload opens the suspension; the same round brings it back.
    assert_eq!(site.sync("r2", &hub)["deny_entries"], 1);

    let report = site.report();
    let credential = report["suspensions"][0]["credential"]
        .as_str()
        .expect("a suspension")
        .to_owned();
    assert_eq!(report["suspensions"][0]["wallet"], wallet.as_str());
    assert_eq!(report["suspensions"][0]["rule"], "counter_reused");
    let flags = report["flagged"].as_array().expect("flags");
    assert!(flags.iter().any(|f| f["rule"] == "counter_reused"));
    assert!(flags.iter().all(|f| f["denied"] == false), "{report}");

    // At every reader after its next sync: the credential is declined,
    // naming it; the token the restored phone makes next is one of them.
    site.pay("w", 100, "t3b");
    assert_eq!(site.sync("r3", &hub)["deny_entries"], 1);
    let declined = site.accept("r3", "t3b");
    assert_eq!(declined["decision"], "decline");
    assert_eq!(declined["reason"], "wallet_denied");
    let detail = declined["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&credential) && detail.contains("suspended for review"),
        "{detail}"
    );

    // The operator renews. The same terms would make the same credential,
    // the suspended one: refused. Then the note beside the new one says the
    // highest counter cleared (5), and the wallet (at 3) jumps to it.
    let args = site.issue_args("cred2", site.valid_from);
    let same = site.run_hub(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let same_err = String::from_utf8_lossy(&same.stderr);
    assert!(
        same.status.code() == Some(2) && same_err.contains("suspended for review"),
        "{same_err}"
    );
    assert!(!path("cred2").exists());
    let issued = site.issue("cred2", site.valid_from + 60);
    assert_eq!(issued["highest_cleared_counter"], 5);
    assert!(path("cred2.renewal").exists());
    let installed: serde_json::Value = serde_json::from_str(
        site.s
            .ok(&["wallet", "add-credential", "--dir", "w", "cred2"])
            .trim(),
    )
    .expect("install JSON");
    assert_eq!(
        (
            installed["counter_before"].as_u64(),
            installed["counter"].as_u64()
        ),
        (Some(3), Some(5))
    );
    site.pay("w", 100, "t6");
    let inspected: serde_json::Value =
        serde_json::from_str(site.s.ok(&["token", "inspect", "t6"]).trim()).expect("inspect JSON");
    assert_eq!(inspected["payment"]["counter"], 6);
    // The new credential works at the readers that hold the suspension.
    let fresh = site.accept("r2", "t6");
    assert_eq!(fresh["decision"], "accept", "{fresh}");
    site.pay("w", 100, "t7");
    assert_eq!(site.accept("r2", "t7")["decision"], "accept");

    // The operator reviews the evidence: both tokens of counter 2.
    let review: serde_json::Value =
        serde_json::from_str(&site.hub(&["hub", "review", "--data", "hub", "--json"]))
            .expect("review JSON");
    let open = &review["suspensions"][0];
    assert_eq!(open["credential"], credential.as_str());
    assert_eq!(open["highest_cleared_counter"], 5);
    let conflicts = open["conflicts"].as_array().expect("conflicts");
    let mut seen: Vec<(u64, &str, u64, u64)> = conflicts
        .iter()
        .map(|c| {
            (
                c["counter"].as_u64().expect("counter"),
                c["reader"].as_str().expect("reader"),
                c["charged"].as_u64().expect("charged"),
                c["total_before"].as_u64().expect("total"),
            )
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [(2, "gate-1", 100, 100), (2, "gate-2", 120, 100)]);
    assert!(conflicts.iter().all(|c| c["at"].as_u64() > Some(0)));
    let text = site.hub(&["hub", "review", "--data", "hub"]);
    assert!(
        text.contains(&format!("credential {credential} of wallet {wallet}"))
            && text.contains("tokens sharing a counter: 2")
            && text.contains("sonotap hub clear --data hub"),
        "{text}"
    );

    // A clear needs who and why; then it lifts the suspension at the
    // readers after their next sync: the declined token is accepted.
    let refused = site.run_hub(&[
        "hub",
        "clear",
        "--data",
        "hub",
        &credential,
        "--by",
        " ",
        "--note",
        "x",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let cleared = site.hub(&[
        "hub",
        "clear",
        "--data",
        "hub",
        &credential,
        "--by",
        "ops-7",
        "--note",
        "phone restored from a backup; renewed",
    ]);
    let cleared: serde_json::Value = serde_json::from_str(cleared.trim()).expect("clear JSON");
    assert_eq!(cleared["cleared"], credential.as_str());
    assert_eq!(cleared["action"], "allow");
    let again = site.run_hub(&[
        "hub", "clear", "--data", "hub", &wallet, "--by", "ops-7", "--note", "x",
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no open suspension"));
    assert_eq!(site.sync("r3", &hub)["deny_entries"], 1);
    assert_eq!(site.accept("r3", "t3b")["decision"], "accept");
    let review: serde_json::Value =
        serde_json::from_str(&site.hub(&["hub", "review", "--data", "hub", "--all", "--json"]))
            .expect("review JSON");
    let done = &review["suspensions"][0]["cleared"];
    assert_eq!(
        (done["by"].as_str(), done["note"].as_str()),
        (Some("ops-7"), Some("phone restored from a backup; renewed"))
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(
            &site.hub(&["hub", "review", "--data", "hub", "--json"])
        )
        .expect("review JSON")["suspensions"]
            .as_array()
            .expect("list")
            .is_empty()
    );
}

#[test]
fn issue17_a_restored_phone_reusing_counters_is_suspended_for_review_not_denied_forever() {
    a_restored_phone(None);
}

#[test]
fn issue17_a_restored_phone_is_suspended_renewed_and_cleared_on_postgresql_too() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    server.create_database("restored");
    a_restored_phone(Some(server.url("restored")));
}
