//! A point in the log as a person gives it on the command line (`--at`, `--since`): a stream
//! sequence or a UTC time.

use rbee_bus::Code;
use rbee_projections::history::Until;

use crate::error::{CliError, CliResult};

/// Parses `--at`: a stream sequence (`1234`) or a UTC time (`2026-11-22T00:10:00Z`, fraction optional).
pub fn parse(at: Option<&str>) -> CliResult<Until> {
    let Some(at) = at else { return Ok(Until::End) };
    if let Ok(seq) = at.parse::<u64>() {
        return Ok(Until::Seq(seq));
    }
    parse_utc_ms(at).map(Until::TimeMs).ok_or_else(|| {
        let shown: String = at.chars().take(40).flat_map(char::escape_default).collect();
        CliError::new(
            Code::InvalidArgument,
            format!("--at must be a sequence number or a UTC time like 2026-11-22T00:10:00Z, got \"{shown}\""),
        )
    })
}

fn parse_utc_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3
        || t.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || t[0] > 23
        || t[1] > 59
        || t[2] > 60
    {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let millis: i64 = format!("{:0<3}", &frac.chars().take(3).collect::<String>()).parse().ok()?;
    let ms = ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + millis;
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_points_parse_sequences_and_utc_times() {
        assert_eq!(parse(None).unwrap(), Until::End);
        assert_eq!(parse(Some("42")).unwrap(), Until::Seq(42));
        assert_eq!(parse(Some("1970-01-01T00:00:01Z")).unwrap(), Until::TimeMs(1000));
        assert_eq!(parse(Some("2026-11-22T00:10:00.5Z")).unwrap(), Until::TimeMs(1_795_306_200_500));
        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-22 00:10:00", "-1", "\u{7}"] {
            let err = parse(Some(bad)).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument);
            assert!(!err.message.contains('\u{7}'));
        }
    }
}
