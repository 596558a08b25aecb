//! Which hub URLs a wallet talks to, and what an operator hands a rider to
//! enrol with: a bare code, or a link to the hub's wallet page carrying it
//! (`https://hub.example/wallet/#enrol=ABCD-EFGH-JKLM-NPQR`).

use std::net::IpAddr;

use sonotap_protocol::wire::normalise_enrol_code;

/// What the rider gave to enrol: the code, canonical, and the hub's base
/// URL if it came as a link.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolInput {
    /// The hub's base URL, checked ([`check_hub_url`]), from a link.
    pub hub: Option<String>,
    /// The enrolment code, canonical.
    pub code: String,
}

impl std::fmt::Debug for EnrolInput {
    // The code is a one-time secret until it is used: never in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolInput")
            .field("hub", &self.hub)
            .field("code", &"(hidden)")
            .finish()
    }
}

/// The path of a hub's wallet page, which enrolment links point into.
const WALLET_PAGE: &str = "/wallet";

/// Checks a hub's base URL and returns it without a trailing `/`:
/// `https://`, or plain `http://` only to a loopback address (the hub
/// serves plain HTTP on loopback only); a host, no user name or password,
/// no query or fragment.
pub fn check_hub_url(url: &str) -> Result<String, String> {
    let uri = url
        .parse::<ureq::http::Uri>()
        .map_err(|e| format!("not a URL: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err("no host (write it as https://HOST[:PORT])".into());
    };
    if authority.as_str().contains('@') {
        return Err("a user name or password does not belong in a hub URL".into());
    }
    let host = authority.host();
    if host.is_empty() {
        return Err("no host (write it as https://HOST[:PORT])".into());
    }
    if url.contains('?') || url.contains('#') {
        return Err("a hub URL has no query (?) or fragment (#)".into());
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err(format!(
                "plain http:// is only for a hub on this machine (loopback); use https://{}",
                authority.as_str()
            ));
        }
        _ => return Err("the scheme must be https:// (or http:// to loopback)".into()),
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads what a rider typed or pasted to enrol: a code (`ABCD-EFGH-JKLM-NPQR`,
/// any case, dashes or spaces between groups), or the operator's link
/// `HUB/wallet/#enrol=CODE`, whose hub base URL is returned beside the code.
pub fn parse_enrol_input(text: &str) -> Result<EnrolInput, String> {
    let text = text.trim();
    if !text.contains("://") {
        let code = normalise_enrol_code(text)?;
        return Ok(EnrolInput { hub: None, code });
    }
    let not_link = || {
        "a link from the operator looks like https://HUB/wallet/#enrol=CODE; \
         this one does not"
            .to_string()
    };
    let (page, fragment) = text.split_once('#').ok_or_else(not_link)?;
    let code = fragment
        .split('&')
        .find_map(|pair| pair.strip_prefix("enrol="))
        .ok_or_else(not_link)?;
    let page = page.split_once('?').map_or(page, |(page, _)| page);
    let base = page
        .trim_end_matches('/')
        .strip_suffix(WALLET_PAGE)
        .ok_or_else(not_link)?;
    let hub = check_hub_url(base).map_err(|e| format!("the link's hub {base}: {e}"))?;
    let code = normalise_enrol_code(code)?;
    Ok(EnrolInput {
        hub: Some(hub),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_plain_http_only_to_loopback() {
        for ok in [
            "https://hub.example",
            "https://hub.example:8443/",
            "https://10.0.0.1:8443/transit",
            "http://127.0.0.1:8443",
            "http://127.9.9.9",
            "http://localhost:9/",
            "http://[::1]:8443",
        ] {
            let checked = check_hub_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!checked.ends_with('/'), "{checked}");
        }
        for (bad, why) in [
            ("http://hub.example", "loopback"),
            ("http://10.0.0.1:8443", "loopback"),
            ("http://[::2]:8443", "loopback"),
            ("ftp://hub.example", "scheme"),
            ("hub.example", "scheme"),
            ("https://user:pw@hub.example", "password"),
            ("https://hub.example/?x=1", "query"),
            ("https://hub.example/#enrol=X", "fragment"),
            ("https://", "URL"),
        ] {
            let e = check_hub_url(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_code_alone_or_in_the_operators_link_is_read_with_the_links_hub() {
        let bare = parse_enrol_input(" abcd-efgh jklm-npqr\n").expect("bare");
        assert_eq!(bare.hub, None);
        assert_eq!(bare.code, "ABCDEFGHJKLMNPQR");
        let link = parse_enrol_input("https://hub.example:8443/wallet/#enrol=ABCD-EFGH-JKLM-NPQR")
            .expect("link");
        assert_eq!(link.hub.as_deref(), Some("https://hub.example:8443"));
        assert_eq!(link.code, "ABCDEFGHJKLMNPQR");
        let prefixed =
            parse_enrol_input("http://127.0.0.1:9/transit/wallet#enrol=abcdefghjklmnpqr")
                .expect("prefixed");
        assert_eq!(prefixed.hub.as_deref(), Some("http://127.0.0.1:9/transit"));
        assert!(!format!("{prefixed:?}").contains("ABCD"), "code not logged");
    }

    #[test]
    fn a_mistyped_code_or_a_link_elsewhere_is_refused_with_the_reason() {
        for (bad, why) in [
            ("ABCD-EFGH-JKLM", "16 letters"),
            ("ABCD-EFGH-JKLM-NPQ1", "'1'"),
            ("https://hub.example/wallet/", "#enrol=CODE"),
            (
                "https://hub.example/other/#enrol=ABCDEFGHJKLMNPQR",
                "#enrol=CODE",
            ),
            (
                "http://hub.example/wallet/#enrol=ABCDEFGHJKLMNPQR",
                "loopback",
            ),
            ("https://hub.example/wallet/#enrol=ABC", "16 letters"),
        ] {
            let e = parse_enrol_input(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
