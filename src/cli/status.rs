//! `sonotap status`: queue, sync, devices and recent declines for an
//! operator on site; read-only, so it runs beside the daemon.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;

use super::output::ago;
use sonotap_reader::status::{DaemonHealth, StatusReport};

/// Exit 0 when healthy, 1 when something needs attention, 2 (by error) when
/// the data directory or database cannot be read.
pub(super) fn run(data: &Path, json: bool, now: u64) -> Result<ExitCode> {
    let report = StatusReport::gather(data, now)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        print_text(&mut out, &report)?;
    }
    Ok(match report.healthy() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

fn time(at: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at)).to_string()
}

fn print_text(out: &mut impl Write, r: &StatusReport) -> io::Result<()> {
    let when = |at: Option<u64>| match at {
        Some(at) => format!("{} ({})", time(at), ago(r.now, at)),
        None => "never".into(),
    };
    writeln!(
        out,
        "reader {} in {}",
        r.reader_id.as_deref().unwrap_or("?"),
        r.data.display()
    )?;
    writeln!(
        out,
        "queue:    {} records, {} unsynced ({} minor units), oldest unsynced {}",
        r.queue.records,
        r.queue.unsynced,
        r.queue.unsynced_amount,
        match r.queue.oldest_unsynced_at {
            Some(at) => when(Some(at)),
            None => "-".into(),
        }
    )?;
    let s = &r.sync;
    writeln!(
        out,
        "sync:     last success {}, last attempt {}, clock offset {} ms, deny list v{}, key set v{}",
        when(s.state.last_sync_at),
        when(s.last_attempt_at),
        s.state.clock_offset_ms,
        s.state.deny_version,
        s.state.keyset_version
    )?;
    if let Some(error) = &s.state.last_error {
        writeln!(out, "          last error: {error}")?;
    }
    match &r.daemon {
        DaemonHealth::Running { status } => {
            writeln!(
                out,
                "daemon:   running, pid {}, up since {}, config {}, updated {}",
                status.pid,
                time(status.started_at),
                status.config,
                ago(r.now, status.updated_at)
            )?;
            for d in &status.devices {
                let state = if d.ok { "ok" } else { "FAILING" };
                writeln!(out, "  {:<8} {state:<8} {}", d.name, d.detail)?;
            }
            if let Some(link) = &status.sync {
                let state = if link.ok { "ok" } else { "FAILING" };
                writeln!(
                    out,
                    "  {:<8} {state:<8} {} ({})",
                    "uplink", link.hub, link.detail
                )?;
            }
        }
        DaemonHealth::NotRunning => writeln!(out, "daemon:   not running")?,
        DaemonHealth::Stale { status, why } => writeln!(
            out,
            "daemon:   not running (last seen {}, {why})",
            time(status.updated_at)
        )?,
        DaemonHealth::Unreadable { detail } => writeln!(out, "daemon:   unknown: {detail}")?,
    }
    if r.declines.is_empty() {
        writeln!(out, "declines: none logged")?;
    } else {
        writeln!(out, "declines: the last {}, newest first", r.declines.len())?;
        for d in &r.declines {
            writeln!(
                out,
                "  {}  {:<26} wallet {:<16} amount {:>6}  {}",
                time(d.at),
                d.reason,
                d.wallet.as_deref().unwrap_or("-"),
                d.amount.map_or("-".into(), |a| a.to_string()),
                d.detail
            )?;
        }
    }
    if r.healthy() {
        writeln!(out, "status:   ok")?;
    } else {
        writeln!(out, "status:   needs attention")?;
        for item in &r.attention {
            writeln!(out, "  - {item}")?;
        }
    }
    Ok(())
}
