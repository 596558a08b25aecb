//! Site peers over UDP: announce every accept to the site's other readers at
//! once, and learn theirs, so that a token replayed at the next gate is
//! declined `replayed` (the message is `sonotap_protocol::site`; the
//! decision reads what was learned from the store).
//!
//! Nothing here can stop a gate: an announcement is one non-blocking
//! datagram per peer, sent after the record is committed, and a send that
//! fails is counted and dropped. A dead or partitioned peer only widens the
//! window in which a replay can slip through; the hub's clearing catches
//! what slips (a token charged at two readers). A reader that starts
//! announces its own recent charges again (those committed just before a
//! crash may never have left) and says hello, and each peer sends it again
//! what it accepted within the replay window, so a restart does not forget
//! the recent past.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::daemon::metrics::Histogram;
use crate::store::{OwnCharge, ReaderDb, SiteAccept};
use sonotap_protocol::policy;
use sonotap_protocol::site::{MAX_SITE_MESSAGE, SiteBody, SiteMessage};

/// A peer answers one hello per this long at most, and never the same
/// hello twice (its nonce), so that a recorded hello played again, or a
/// peer gone mad, cannot make it resend its history in a loop.
const HELLO_REPLY_EVERY: Duration = Duration::from_secs(1);

/// Announcements sent again go out in bursts of this many, with a pause
/// between: a peer's receive buffer holds a few hundred datagrams.
const RESEND_BURST: usize = 64;
/// The pause between two bursts.
const RESEND_PAUSE: Duration = Duration::from_millis(5);

/// Datagram hashes remembered for dropping exact repeats; cleared when full
/// (a repeat after that costs its signature checks, nothing else).
const SEEN_AT_MOST: usize = 65_536;

/// Per peer, datagrams whose signatures are checked: a burst of this many
/// (a restarted peer's resend is at most 5,000), refilled at
/// [`PEER_RATE_PER_SEC`]. A compromised peer flooding new, validly signed
/// datagrams costs at most this much of a core, not all of it.
const PEER_BURST: f64 = 10_000.0;
/// Refill rate of a peer's budget: a station's gate line taps a few a
/// second; this is two orders of magnitude more.
const PEER_RATE_PER_SEC: f64 = 2_000.0;

/// A token bucket: `take` at `now` spends one token if there is one.
#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn full(now: Instant) -> Self {
        Self {
            tokens: PEER_BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PEER_RATE_PER_SEC;
        self.tokens = (self.tokens + refill).min(PEER_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The most charges sent again to a peer that said hello: a busy gate's
/// hour, far more than a freshness window of minutes holds.
const RESEND_AT_MOST: u32 = 5_000;

/// How often the listener looks at the stop flag while the site is quiet.
const POLL: Duration = Duration::from_millis(200);

/// One other reader of the site, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SitePeer {
    /// Its reader id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its reader public key: its announcements must verify under it.
    pub key: VerifyingKey,
}

/// The site this reader belongs to, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteConfig {
    /// The site's id; announcements from another site are ignored.
    pub id: String,
    /// Where this reader listens for its peers (UDP).
    pub listen: SocketAddr,
    /// The other readers.
    pub peers: Vec<SitePeer>,
}

/// What the site link did, for the metrics.
#[derive(Debug, Default)]
pub struct SiteStats {
    /// Announcement datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams the OS refused to send (dropped; the gate went on).
    pub send_errors: AtomicU64,
    /// Accepts learned from peers (new ones).
    pub learned: AtomicU64,
    /// Announcements already known (idempotent repeats).
    pub repeats: AtomicU64,
    /// Datagrams refused: malformed, another site, unknown peer, bad
    /// signature, a token that does not authenticate.
    pub refused: AtomicU64,
    /// From a peer's send to this reader's store (same-host clocks in tests;
    /// on a site, as good as the readers' time sync).
    pub delay: Histogram,
}

/// Sends this reader's announcements. Cheap to clone; sends never block.
#[derive(Clone)]
pub struct SiteSender {
    socket: Arc<UdpSocket>,
    site: String,
    reader: String,
    key: SigningKey,
    peers: Vec<SitePeer>,
    stats: Arc<SiteStats>,
}

impl std::fmt::Debug for SiteSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteSender")
            .field("site", &self.site)
            .field("reader", &self.reader)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl SiteSender {
    /// A sender for reader `reader` signing with `key`, from an ephemeral
    /// port on the listening address's interface.
    pub fn new(
        config: &SiteConfig,
        reader: &str,
        key: SigningKey,
        stats: Arc<SiteStats>,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(config.listen.ip(), 0))?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: Arc::new(socket),
            site: config.id.clone(),
            reader: reader.to_string(),
            key,
            peers: config.peers.clone(),
            stats,
        })
    }

    /// Tells every peer that record `seq` (decided at reader time `at`)
    /// charged `token`, the credential's running total now `running_total`.
    /// One signature, one datagram per peer; best effort, never blocks.
    pub fn announce(&self, seq: u64, at: u64, running_total: u64, token: &[u8]) {
        let body = SiteBody::Accept {
            seq,
            at,
            running_total,
            token: token.to_vec(),
        };
        if let Some(datagram) = self.sign(body) {
            for peer in &self.peers {
                self.send(peer, &datagram);
            }
        }
    }

    /// Asks every peer to send again what it accepted recently.
    pub fn hello(&self) {
        let mut nonce = [0u8; 8];
        if getrandom::fill(&mut nonce).is_err() {
            nonce = unix_us().to_be_bytes();
        }
        if let Some(datagram) = self.sign(SiteBody::Hello { nonce }) {
            for peer in &self.peers {
                self.send(peer, &datagram);
            }
        }
    }

    fn sign(&self, body: SiteBody) -> Option<Vec<u8>> {
        let message = SiteMessage {
            site: self.site.clone(),
            reader: self.reader.clone(),
            sent_us: unix_us(),
            body,
        };
        match message.sign(&self.key) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("site: cannot encode an announcement: {e}");
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn send(&self, peer: &SitePeer, datagram: &[u8]) {
        match self.socket.send_to(datagram, peer.addr) {
            Ok(_) => self.stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(peer = %peer.id, "site: send failed (dropped): {e}");
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Announces `charges` to `to` (every peer when `None`), paced so that
    /// a burst does not overflow the peers' receive buffers.
    fn announce_again(&self, charges: Vec<OwnCharge>, to: Option<&SitePeer>) {
        for (i, c) in charges.into_iter().enumerate() {
            if i > 0 && i % RESEND_BURST == 0 {
                std::thread::sleep(RESEND_PAUSE);
            }
            let body = SiteBody::Accept {
                seq: c.seq,
                at: c.at,
                running_total: c.running_total,
                token: c.token,
            };
            let Some(datagram) = self.sign(body) else {
                continue;
            };
            match to {
                Some(peer) => self.send(peer, &datagram),
                None => self.peers.iter().for_each(|p| self.send(p, &datagram)),
            }
        }
    }
}

/// Receives the peers' announcements into the reader's store until `stop`.
pub struct SiteListener {
    socket: UdpSocket,
    config: SiteConfig,
    reader: String,
    db: ReaderDb,
    sender: SiteSender,
    skew_secs: u64,
    /// Per peer: when its last hello was answered, and that hello's nonce.
    replied: HashMap<String, (Instant, [u8; 8])>,
    /// Hashes of datagrams already handled: an exact copy (a recording of
    /// the LAN played again) is dropped before any signature is checked.
    seen: HashSet<[u8; 32]>,
    /// Per peer, how many more datagrams may have their signatures checked.
    budgets: HashMap<String, Budget>,
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    Malformed(String),
    OtherSite(String),
    UnknownPeer(String),
    WrongSource(String),
    Repeated,
    OverBudget(String),
    BadSignature(String),
    BadToken(String),
    Stale,
}

impl SiteListener {
    /// Binds `config.listen` and opens the store at `db_path` on its own
    /// connection. A learned accept is kept while its token is fresh here
    /// (its timestamp within `skew_secs` of this reader's clock).
    pub fn bind(
        config: &SiteConfig,
        reader: &str,
        db_path: &Path,
        sender: SiteSender,
        skew_secs: u64,
    ) -> Result<Self, String> {
        let socket = UdpSocket::bind(config.listen)
            .map_err(|e| format!("site: cannot listen on {}: {e}", config.listen))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| format!("site: {e}"))?;
        let db = ReaderDb::open(db_path).map_err(|e| e.to_string())?;
        // Learned accepts are not money: a power cut that loses the last
        // few only reopens the window the hub covers, so this connection's
        // commits skip the fsync (the acceptor's keep synchronous=FULL).
        db.relax_durability().map_err(|e| e.to_string())?;
        Ok(Self {
            socket,
            config: config.clone(),
            reader: reader.to_string(),
            db,
            sender,
            skew_secs,
            replied: HashMap::new(),
            seen: HashSet::new(),
            budgets: HashMap::new(),
        })
    }

    /// This reader's time: the system clock corrected by the hub's offset,
    /// the clock every decision uses.
    fn now(&self) -> u64 {
        let system = unix_us() / 1_000_000;
        self.db.reader_time(system).unwrap_or(system)
    }

    /// The window in which a token accepted at `at` may still be replayed
    /// (reader time), for announcing again.
    fn window_start(&self) -> u64 {
        self.now().saturating_sub(2 * self.skew_secs + 60)
    }

    /// Announces this reader's recent charges again (those committed just
    /// before a crash may never have left), asks the peers for theirs, then
    /// serves datagrams until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) {
        match self.db.charges_since(self.window_start(), RESEND_AT_MOST) {
            Ok(charges) => self.sender.announce_again(charges, None),
            Err(e) => tracing::warn!("site: cannot read our recent charges: {e}"),
        }
        self.sender.hello();
        let mut buf = vec![0u8; MAX_SITE_MESSAGE + 1];
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::warn!("site: receive failed: {e}");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            if let Err(refused) = self.handle(&buf[..n], from) {
                let stats = &self.sender.stats;
                match refused {
                    Refused::Repeated => stats.repeats.fetch_add(1, Ordering::Relaxed),
                    _ => stats.refused.fetch_add(1, Ordering::Relaxed),
                };
                tracing::debug!(%from, "site: datagram not taken: {refused:?}");
            }
        }
    }

    fn handle(&mut self, datagram: &[u8], from: SocketAddr) -> Result<(), Refused> {
        if datagram.len() > MAX_SITE_MESSAGE {
            return Err(Refused::Malformed(format!(
                "more than {MAX_SITE_MESSAGE} bytes"
            )));
        }
        // Cheap checks first: the parse, the site, the peer and its address,
        // an exact repeat; the signatures only then.
        let parsed = SiteMessage::parse(datagram).map_err(|e| Refused::Malformed(e.to_string()))?;
        let (site, claimed) = parsed.sender();
        if site != self.config.id {
            return Err(Refused::OtherSite(site.to_string()));
        }
        let peer = self
            .config
            .peers
            .iter()
            .find(|p| p.id == claimed && p.id != self.reader)
            .ok_or_else(|| Refused::UnknownPeer(claimed.to_string()))?
            .clone();
        if from.ip() != peer.addr.ip() {
            return Err(Refused::WrongSource(format!("{} from {from}", peer.id)));
        }
        let digest: [u8; 32] = Sha256::digest(datagram).into();
        if self.seen.contains(&digest) {
            return Err(Refused::Repeated);
        }
        let now = Instant::now();
        let budget = self
            .budgets
            .entry(peer.id.clone())
            .or_insert_with(|| Budget::full(now));
        if !budget.take(now) {
            return Err(Refused::OverBudget(peer.id.clone()));
        }
        let message = parsed
            .verify(&peer.key)
            .map_err(|e| Refused::BadSignature(e.to_string()))?;
        if self.seen.len() >= SEEN_AT_MOST {
            self.seen.clear();
        }
        self.seen.insert(digest);
        match message.body {
            SiteBody::Accept {
                seq,
                at,
                running_total,
                token,
            } => {
                let keys = self
                    .db
                    .trusted_keys()
                    .map_err(|e| Refused::BadToken(e.to_string()))?;
                let token = policy::authenticate(&token, &keys)
                    .map_err(|d| Refused::BadToken(format!("{}: {}", d.reason, d.detail)))?;
                let now = self.now();
                let stale_after =
                    u64::from(token.token().payment.timestamp).saturating_add(self.skew_secs);
                if stale_after < now {
                    return Err(Refused::Stale);
                }
                let accept = SiteAccept {
                    reader: peer.id.clone(),
                    seq,
                    at,
                    running_total,
                    stale_after,
                    sent_us: message.sent_us,
                    token,
                };
                let now_us = unix_us();
                match self.db.learn_site_accept(&accept, now_us, now) {
                    Ok(true) => {
                        let stats = &self.sender.stats;
                        stats.learned.fetch_add(1, Ordering::Relaxed);
                        stats.delay.observe(Duration::from_micros(
                            now_us.saturating_sub(message.sent_us),
                        ));
                        tracing::debug!(
                            peer = %peer.id,
                            seq,
                            delay_us = now_us.saturating_sub(message.sent_us),
                            "site: learned an accept"
                        );
                    }
                    Ok(false) => {
                        self.sender.stats.repeats.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(peer = %peer.id, seq, "site: cannot store: {e}"),
                }
                Ok(())
            }
            SiteBody::Hello { nonce } => {
                self.resend_to(&peer, nonce);
                Ok(())
            }
        }
    }

    /// Sends `peer` (at its configured address, never the datagram's
    /// source) this reader's charges of the replay window, once per hello.
    fn resend_to(&mut self, peer: &SitePeer, nonce: [u8; 8]) {
        let now = Instant::now();
        if let Some((answered, last)) = self.replied.get(&peer.id)
            && (*last == nonce || now.duration_since(*answered) < HELLO_REPLY_EVERY)
        {
            return;
        }
        self.replied.insert(peer.id.clone(), (now, nonce));
        match self.db.charges_since(self.window_start(), RESEND_AT_MOST) {
            Ok(charges) => {
                tracing::info!(
                    peer = %peer.id,
                    charges = charges.len(),
                    "site: a peer said hello; sending it our recent accepts"
                );
                self.sender.announce_again(charges, Some(peer));
            }
            Err(e) => tracing::warn!("site: cannot read our recent charges: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_budget_allows_a_burst_then_its_rate_and_refills() {
        let start = Instant::now();
        let mut b = Budget::full(start);
        let burst = (0..20_000).take_while(|_| b.take(start)).count();
        assert_eq!(burst, PEER_BURST as usize);
        assert!(!b.take(start), "empty");
        // Half a second later: half a second's worth.
        let later = start + Duration::from_millis(500);
        let refilled = (0..20_000).take_while(|_| b.take(later)).count();
        assert_eq!(refilled, (PEER_RATE_PER_SEC / 2.0) as usize);
        // Long idle refills to the burst, never beyond.
        let much_later = later + Duration::from_secs(3600);
        let again = (0..20_000).take_while(|_| b.take(much_later)).count();
        assert_eq!(again, PEER_BURST as usize);
    }
}
