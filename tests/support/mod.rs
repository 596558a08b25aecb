//! Fixtures shared by the integration tests (`tests/integration`, through
//! `util`) and the daemon bench (`benches/daemon.rs`), each of which
//! includes this file with `#[path = …] mod support;`: `reader init`'s
//! arguments, a wallet with a credential, a payment's token bytes, a camera frame showing a token,
//! the clock and a FIFO.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sonotap_hub::{Hub, IssueRequest};
use sonotap_protocol::token::Scope;
use sonotap_wallet::{PayRequest, Wallet};

/// The wall clock, Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The arguments of `reader init --data DIR --id ID --trust hub/issuer.pub
/// EXTRA…`: a reader trusting the hub in `hub`.
pub fn reader_init_args<'a>(dir: &'a str, id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "reader",
        "init",
        "--data",
        dir,
        "--id",
        id,
        "--trust",
        "hub/issuer.pub",
    ];
    args.extend_from_slice(extra);
    args
}

/// A new wallet in `root/dir` holding a credential from the hub in
/// `root/hub` for `scope` (limit `offline_limit`, 300 per payment, valid
/// from an hour before `now` for 48 h), kept in `root/dir.cred`.
pub fn issued_wallet(root: &Path, dir: &str, scope: Scope, offline_limit: u32, now: u64) -> Wallet {
    let mut hub = Hub::open(&root.join("hub")).expect("hub");
    let mut w = Wallet::create(&root.join(dir)).expect("wallet");
    let request = IssueRequest {
        scope,
        currency: 978,
        offline_limit,
        per_payment_cap: 300,
        valid_from: (now - 3600) as u32,
        valid_hours: 48,
    };
    let credential = hub.issue(&w.public_key(), request, now).expect("issue");
    let path = root.join(format!("{dir}.cred"));
    std::fs::write(&path, credential.encode()).expect("write");
    w.add_credential(&path).expect("credential");
    w
}

/// The bytes of `w`'s token paying `amount` at `at`.
pub fn pay_token(w: &mut Wallet, amount: u32, at: u64) -> Vec<u8> {
    w.pay(PayRequest {
        amount,
        at: at as u32,
        reader_tag: 0,
        gate: None,
    })
    .expect("pay")
    .token
    .encode()
    .to_vec()
}

/// A 1280x720 Y8 frame with the token's QR code in the middle.
pub fn qr_frame(token: &[u8]) -> Vec<u8> {
    let (w, h) = (1280usize, 720usize);
    let code = sonotap_qr::render_token(token, 6, 4).expect("render");
    let mut frame = vec![200u8; w * h];
    let (cw, ch) = (code.width(), code.height());
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    for y in 0..ch {
        frame[(y0 + y) * w + x0..(y0 + y) * w + x0 + cw]
            .copy_from_slice(&code.data()[y * cw..(y + 1) * cw]);
    }
    frame
}

/// Makes a FIFO (mode 0600) at `path`.
pub fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path and a mode; no memory is shared.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}
