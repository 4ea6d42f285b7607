//! Durations as people type them: `500ms`, `30s`, `5m`, `2h`, `1d`, and
//! sums of them such as `1h30m`.

use std::time::Duration;

/// Parses a duration: one or more `<integer><unit>` parts, with units `ms`,
/// `s`, `m`, `h` and `d`. A bare number is refused, because `30` could mean
/// seconds or minutes.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let help = "use a number and a unit: 500ms, 30s, 5m, 2h, 1d or 1h30m";
    if text.is_empty() {
        return Err(format!("empty duration; {help}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration; {help}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => return Err(format!("{text:?} has no unit; {help}")),
            other => return Err(format!("unknown unit {other:?} in {text:?}; {help}")),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    Ok(total)
}

/// Formats a duration for people, to the precision that matters: `850ms`,
/// `12s`, `4m05s`, `2h13m`, `3d04h`.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// [`human`] for a signed duration from the database: `in 12s` or
/// `12s ago`.
pub(crate) fn human_signed(ms: i64) -> String {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        human(d)
    } else {
        format!("{} ago", human(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn accepts_sums() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn refuses_what_is_ambiguous_or_malformed() {
        for bad in [
            "", "30", "s", "1.5s", "-1s", "5 m", "5min", "1h30", "ms500", " 5s",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains("500ms") || err.contains("too long"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn refuses_overflow() {
        assert!(
            parse("99999999999999999999s")
                .unwrap_err()
                .contains("too long")
        );
        assert!(parse("4294967296s").unwrap_err().contains("too long"));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(12)), "12s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 13 * 60)), "2h13m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
        assert_eq!(human_signed(-12_000), "12s ago");
        assert_eq!(human_signed(3_000), "3s");
    }
}
