//! ISO 4217 currency codes: tokens carry the numeric code, people type the letters.

/// Common currencies by alphabetic code; any numeric code 1..=999 is accepted too.
const KNOWN: &[(&str, u16)] = &[
    ("AUD", 36),
    ("BRL", 986),
    ("CAD", 124),
    ("CHF", 756),
    ("CNY", 156),
    ("EUR", 978),
    ("GBP", 826),
    ("HKD", 344),
    ("INR", 356),
    ("JPY", 392),
    ("KRW", 410),
    ("SEK", 752),
    ("SGD", 702),
    ("USD", 840),
];

/// Parses `EUR`, `eur` or `978` into the numeric code.
pub fn parse(text: &str) -> Result<u16, String> {
    if let Ok(code) = text.parse::<u16>() {
        return match code {
            1..=999 => Ok(code),
            _ => Err(format!("currency code {code} is outside 1..=999")),
        };
    }
    KNOWN
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            format!("unknown currency {text:?}: give an ISO 4217 numeric code (e.g. 978) or one of the common letter codes")
        })
}

/// `EUR` for 978, the number itself for codes not in the short list.
pub fn name(code: u16) -> String {
    KNOWN
        .iter()
        .find(|(_, c)| *c == code)
        .map_or_else(|| format!("{code:03}"), |(name, _)| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_numbers_both_parse() {
        assert_eq!(parse("EUR"), Ok(978));
        assert_eq!(parse("usd"), Ok(840));
        assert_eq!(parse("36"), Ok(36));
        assert!(parse("0").is_err());
        assert!(parse("1000").is_err());
        assert!(parse("XYZ").is_err());
        assert_eq!(name(978), "EUR");
        assert_eq!(name(999), "999");
    }
}
