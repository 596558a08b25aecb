//! The Qibixx MDB Pi HAT / MDB USB adapter's ASCII protocol in cashless-device
//! mode: all of its syntax is here, so another adapter is another module and
//! another profile.
//!
//! To the adapter (each line ends with `\n`): `C,1` enable the cashless
//! device, `C,START,<funds>` begin a session with the funds available,
//! `C,VEND,<price>` approve the vend requested, `C,STOP` deny it / end the
//! session. From the adapter: `c,STATUS,INACTIVE|DISABLED|ENABLED` (what the
//! vending machine made of the reader), `c,STATUS,IDLE[,<funds>]` (session
//! open), `c,STATUS,VEND,<price>,<item>` (vend request), `c,VEND,SUCCESS` or
//! `c,VEND,<anything else>` (dispense result), `c,ERR,<text>` (an error).
//! Amounts are decimal with the profile's number of places.
//!
//! Checked against Qibixx's public tutorials (docs.qibixx.com, "Cashless
//! Device – Accept a Vend Request from VMC in Always Idle" and "Vending
//! Sessions Examples"): `c,STATUS,VEND,1.00,2` → `C,VEND,1.00` or `C,STOP`,
//! then `c,VEND,SUCCESS` / `c,STATUS,IDLE` / `c,STATUS,ENABLED`, or
//! `c,ERR,VEND 3` when the product failed to dispense.

use super::{AdapterLine, format_amount, parse_amount};

/// Line ending the adapter expects.
const EOL: &str = "\n";

/// Enable the cashless device on the bus.
pub fn enable() -> Vec<u8> {
    format!("C,1{EOL}").into_bytes()
}

/// Begin a session with `funds` (minor units) available.
pub fn begin_session(funds: u32, decimals: u8) -> Vec<u8> {
    format!("C,START,{}{EOL}", format_amount(funds, decimals)).into_bytes()
}

/// Approve the vend at `price` (minor units).
pub fn approve(price: u32, decimals: u8) -> Vec<u8> {
    format!("C,VEND,{}{EOL}", format_amount(price, decimals)).into_bytes()
}

/// Deny the vend requested (this adapter ends the session with it).
pub fn deny() -> Vec<u8> {
    format!("C,STOP{EOL}").into_bytes()
}

/// End the session (session complete).
pub fn end_session() -> Vec<u8> {
    format!("C,STOP{EOL}").into_bytes()
}

/// Reads one line from the adapter.
pub fn parse(line: &str, decimals: u8) -> AdapterLine {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    match fields.as_slice() {
        ["c", "STATUS", "INACTIVE", ..] => AdapterLine::Inactive,
        ["c", "STATUS", "DISABLED", ..] => AdapterLine::Disabled,
        ["c", "STATUS", "ENABLED", ..] => AdapterLine::Enabled,
        ["c", "STATUS", "IDLE", ..] => AdapterLine::SessionIdle,
        ["c", "STATUS", "VEND", price, item] => {
            match (parse_amount(price, decimals), item.parse::<u16>()) {
                (Some(price), Ok(item)) => AdapterLine::VendRequest { price, item },
                _ => AdapterLine::Unknown(format!(
                    "a vend request with an unreadable price or item: {line:?}"
                )),
            }
        }
        ["c", "VEND", "SUCCESS", ..] => AdapterLine::VendSuccess,
        ["c", "VEND", rest @ ..] => AdapterLine::VendFailure(rest.join(",")),
        ["c", "ERR", rest @ ..] => AdapterLine::Error(rest.join(",")),
        _ => AdapterLine::Unknown(format!("an unknown line: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_adapters() {
        assert_eq!(enable(), b"C,1\n");
        assert_eq!(begin_session(250, 2), b"C,START,2.50\n");
        assert_eq!(approve(125, 2), b"C,VEND,1.25\n");
        assert_eq!(approve(125, 0), b"C,VEND,125\n");
        assert_eq!(deny(), b"C,STOP\n");
        assert_eq!(end_session(), b"C,STOP\n");
    }

    #[test]
    fn lines_are_read_into_events() {
        assert_eq!(parse("c,STATUS,ENABLED", 2), AdapterLine::Enabled);
        assert_eq!(parse("c,STATUS,DISABLED", 2), AdapterLine::Disabled);
        assert_eq!(parse("c,STATUS,INACTIVE", 2), AdapterLine::Inactive);
        assert_eq!(parse("c,STATUS,IDLE,2.50", 2), AdapterLine::SessionIdle);
        assert_eq!(
            parse("c,STATUS,VEND,1.25,12", 2),
            AdapterLine::VendRequest {
                price: 125,
                item: 12
            }
        );
        assert_eq!(parse("c,VEND,SUCCESS", 2), AdapterLine::VendSuccess);
        assert_eq!(
            parse("c,VEND,FAIL", 2),
            AdapterLine::VendFailure("FAIL".into())
        );
        assert_eq!(
            parse("c,ERR,VEND 3", 2),
            AdapterLine::Error("VEND 3".into())
        );
        assert!(matches!(
            parse("c,STATUS,VEND,x,1", 2),
            AdapterLine::Unknown(_)
        ));
        assert!(matches!(
            parse("c,STATUS,VEND,1.256,1", 2),
            AdapterLine::Unknown(_)
        ));
        assert!(matches!(parse("hello", 2), AdapterLine::Unknown(_)));
        assert!(matches!(parse("C,1", 2), AdapterLine::Unknown(_)));
    }
}
