//! Issue 18 end to end, with real processes on 127.0.0.1: an operator opens
//! a rider's account with a balance; the phone (the CLI wallet) enrols with
//! a one-time code and renews over HTTP from a real `hub serve`; it pays
//! offline at two readers, which sync; its statement shows the payments and
//! the balance down by exactly what was charged; a clone of the phone
//! spends at a third reader, and its overspend appears as debt: the account
//! is suspended and the phone refused. On SQLite, and on a throwaway
//! PostgreSQL cluster where one is installed.

use crate::pg_server;
use crate::util::{HubProcess, Scratch, last_json, succeeded};

/// A hub (SQLite, or PostgreSQL at `database`) serving on 127.0.0.1,
/// readers `r1`…`r3` (gate-1…gate-3) registered, and a wallet `w`.
struct Rider {
    s: Scratch,
    database: Option<String>,
    hub: Option<HubProcess>,
}

impl Rider {
    fn new(database: Option<String>) -> Self {
        let mut rider = Self {
            s: Scratch::new(),
            database,
            hub: None,
        };
        rider.operator(&["hub", "init", "--data", "hub"]);
        for n in 1..=3 {
            let (dir, id) = (format!("r{n}"), format!("gate-{n}"));
            rider.s.reader_init(&dir, &id, &[]);
            let key = format!("{dir}/reader.pub");
            rider.operator(&[
                "hub", "reader", "add", "--data", "hub", "--id", &id, "--key", &key,
            ]);
        }
        rider.s.ok(&["wallet", "new", "--dir", "w"]);
        let extra: Vec<&str> = match &rider.database {
            Some(url) => vec!["--database", url],
            None => vec![],
        };
        rider.hub = Some(HubProcess::start_with(&rider.s, &extra));
        rider
    }

    fn url(&self) -> String {
        self.hub.as_ref().expect("hub").url.clone()
    }

    /// `sonotap ARGS` against this hub's state, requiring success; stdout.
    fn operator(&self, args: &[&str]) -> String {
        succeeded(args, self.s.run_on_hub(self.database.as_deref(), args))
    }

    fn account(&self) -> serde_json::Value {
        let shown = self.operator(&[
            "hub", "account", "show", "--data", "hub", "acct-1", "--json",
        ]);
        serde_json::from_str(&shown).expect("account JSON")
    }

    /// A phone pays `amount` (`wallet` directory) and reader `reader`
    /// accepts it.
    fn pay(&self, wallet: &str, reader: &str, amount: u32, token: &str) {
        let amount = amount.to_string();
        self.s.ok(&[
            "wallet", "pay", "--dir", wallet, "--amount", &amount, "--out", token,
        ]);
        let out = self.s.run(&["reader", "accept", "--data", reader, token]);
        assert!(
            out.status.success(),
            "{reader} declined {token}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    fn sync(&self, reader: &str) {
        let out = self.s.reader_sync(reader, &self.url(), &[]);
        assert!(
            out.status.success(),
            "sync of {reader}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn statement(&self) -> serde_json::Value {
        let out = self.s.run(&["wallet", "statement", "--dir", "w", "--json"]);
        assert!(
            out.status.success(),
            "statement: {}",
            crate::util::stderr(&out)
        );
        last_json(&out)
    }
}

fn rider_pays_and_a_clone_runs_into_debt(database: Option<String>) {
    let site = Rider::new(database);
    // The operator: an account with 1,000 paid in, credentials of at most
    // 600 offline, 300 a payment; a one-time code for the rider's phone.
    site.operator(&[
        "hub",
        "account",
        "new",
        "--data",
        "hub",
        "acct-1",
        "--label",
        "ana@example.org",
        "--offline-limit",
        "600",
        "--per-payment",
        "300",
    ]);
    let code: serde_json::Value = serde_json::from_str(&site.operator(&[
        "hub", "account", "enroll", "--data", "hub", "acct-1", "--json",
    ]))
    .expect("code JSON");
    let code = code["code"].as_str().expect("code").to_owned();

    // A wrong code is refused, and so is this one once another phone used it.
    site.s.ok(&["wallet", "new", "--dir", "other"]);
    let url = site.url();
    let wrong = format!("{}AAAA", &code[..code.len() - 4]);
    let refused = site.s.run_with_stdin(
        &["wallet", "enrol", "--dir", "other", "--hub", &url],
        format!("{wrong}\n").as_bytes(),
    );
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        crate::util::stderr(&refused)
    );
    assert!(crate::util::stderr(&refused).contains("code_not_valid"));

    // The phone enrols before any money is in: no credential yet, but its
    // statement (signed by the issuer key it learned at enrolment) says so.
    let enrolled = site.s.run_with_stdin(
        &["wallet", "enrol", "--dir", "w", "--hub", &url],
        format!("{code}\n").as_bytes(),
    );
    let why = crate::util::stderr(&enrolled);
    assert_eq!(enrolled.status.code(), Some(1), "{why}");
    assert!(why.contains("no_allowance"), "{why}");
    let s = site.statement();
    assert_eq!(s["balance"], 0, "{s}");
    assert_eq!(s["state"], "open", "{s}");

    // The money comes in; the phone renews: a credential of 600.
    site.operator(&[
        "hub",
        "account",
        "credit",
        "--data",
        "hub",
        "acct-1",
        "1000",
        "--reference",
        "card-1",
    ]);
    site.s.ok(&["wallet", "renew", "--dir", "w"]);
    let reused = site.s.run_with_stdin(
        &["wallet", "enrol", "--dir", "other", "--hub", &url],
        format!("{code}\n").as_bytes(),
    );
    assert!(crate::util::stderr(&reused).contains("code_not_valid"));
    let shown = site.s.ok(&["wallet", "show", "--dir", "w"]);
    assert!(shown.contains("600"), "{shown}");
    let account = site.account();
    assert_eq!(account["exposure"], 600);
    assert_eq!(account["available"], 400);

    // A clone: the phone's directory copied now, before it pays.
    let copy = std::process::Command::new("cp")
        .args(["-a", "w", "clone"])
        .current_dir(site.s.dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());

    // Offline at two readers; they sync.
    site.pay("w", "r1", 300, "t1");
    site.pay("w", "r2", 200, "t2");
    site.sync("r1");
    site.sync("r2");
    let s = site.statement();
    assert_eq!(s["balance"], 500, "1,000 less 300 and 200: {s}");
    assert_eq!(s["state"], "open");
    assert_eq!(s["exposure"], 100, "600 less the 500 cleared: {s}");
    let entries = s["entries"].as_array().expect("entries");
    let charges: Vec<(i64, &str)> = entries
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| (e["amount"].as_i64().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(charges, [(-200, "gate-2"), (-300, "gate-1")]);

    // The clone spends its copy of the allowance at a third reader, which
    // has not heard of the phone: 550, 50 more than the account had left.
    // (A clone paying what the phone paid, in the same second, would make
    // the phone's very token: a replay, which is not charged twice.)
    site.pay("clone", "r3", 250, "c1");
    site.pay("clone", "r3", 300, "c2");
    site.sync("r3");
    let account = site.account();
    assert_eq!(account["balance"], -50, "{account}");
    assert_eq!(account["account"]["state"], "suspended", "{account}");
    let why = account["account"]["state_reason"].as_str().unwrap_or("");
    assert!(why.contains("debt"), "{why}");
    let renew = site.s.run(&["wallet", "renew", "--dir", "w"]);
    assert_eq!(renew.status.code(), Some(1));
    assert!(
        crate::util::stderr(&renew).contains("account_suspended"),
        "{}",
        crate::util::stderr(&renew)
    );
    // The evidence: the clearing rules flagged the reused counters.
    let report = site.operator(&["hub", "report", "--data", "hub", "--json"]);
    assert!(report.contains("counter_reused"), "{report}");
    // And every reader learns to decline the phone at its next sync.
    site.sync("r1");
    site.s.ok(&[
        "wallet", "pay", "--dir", "w", "--amount", "100", "--out", "t3",
    ]);
    let declined = site.s.run(&["reader", "accept", "--data", "r1", "t3"]);
    assert_eq!(declined.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&declined.stdout).contains("wallet_denied"),
        "{}",
        String::from_utf8_lossy(&declined.stdout)
    );
}

#[test]
fn issue18_a_rider_enrols_renews_pays_and_a_clone_runs_into_debt() {
    rider_pays_and_a_clone_runs_into_debt(None);
}

#[test]
fn issue18_a_rider_enrols_renews_pays_and_a_clone_runs_into_debt_on_postgresql() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    rider_pays_and_a_clone_runs_into_debt(Some(server.url("postgres")));
}

/// What the phone endpoints answer a party without a wallet key: the same
/// refusal whatever it sends, and nothing over the size limit is read.
#[test]
fn issue18_phone_endpoints_refuse_strangers_alike_and_bound_bodies() {
    let site = Rider::new(None);
    let url = site.url();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let post = |path: &str, body: &[u8]| {
        let mut answer = agent
            .post(&format!("{url}{path}"))
            .header("Content-Type", "application/octet-stream")
            .send(body)
            .expect("an answer");
        let status = answer.status().as_u16();
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    };
    let garbage = post("/v1/wallet/renew", b"not a request at all");
    let empty = post("/v1/wallet/statement", b"");
    assert_eq!(garbage.0, 401);
    assert_eq!(garbage, (empty.0, empty.1.clone()), "one answer for all");
    let (status, _) = post("/v1/wallet/enrol", &[0u8; 4096]);
    assert_eq!(status, 413);
}
