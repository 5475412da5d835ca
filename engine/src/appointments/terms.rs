//! What a provider publishes, in the words people write it (`mon-fri
//! 09:00-17:00`, `24h=100%,2h=50%`) and in the contract's terms, and the
//! free slots those terms leave: pure functions, shared by the CLI, the
//! server and the web page.

use std::collections::HashSet;

use cohort_ledger_bridge::alloy::primitives::B256;
use cohort_ledger_bridge::contracts::Appointments;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const DAY: u64 = 86_400;
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// A search spans at most this many days.
pub const MAX_SEARCH_DAYS: u64 = 400;
/// A search answers at most this many slots.
pub const MAX_SLOTS: usize = 50_000;

/// A provider's weekly hours, local time (UTC plus `utc_offset_secs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hours {
    /// Local time's offset from UTC, in seconds.
    pub utc_offset_secs: i32,
    /// The length of one slot, in seconds.
    pub slot_secs: u32,
    /// Opening, in seconds after local midnight, Monday first.
    pub opens: [u32; 7],
    /// Closing (equal to opening: closed that day).
    pub closes: [u32; 7],
}

fn clock(field: &str, text: &str) -> Result<u32> {
    let bad = || Error::Invalid(format!("{field}: `{text}` is not a time of day like 09:30"));
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 3_600 + m * 60)
}

fn weekday(field: &str, text: &str) -> Result<usize> {
    WEEKDAYS
        .iter()
        .position(|d| text.trim().eq_ignore_ascii_case(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{field}: `{text}` is not a weekday (mon, tue, wed, thu, fri, sat, sun)"
            ))
        })
}

/// A duration like `30m`, `2h`, `1d` or `90s`, in seconds.
pub fn parse_duration(field: &str, text: &str) -> Result<u64> {
    let text = text.trim();
    let bad = || {
        Error::Invalid(format!(
            "{field}: `{text}` is not a duration like 30m, 2h or 1d"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => DAY,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// A time: `2026-12-07 09:30` (UTC), RFC 3339 (`2026-12-07T09:30:00+01:00`)
/// or unix seconds.
pub fn parse_time(field: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return u64::try_from(at.timestamp())
            .map_err(|_| Error::Invalid(format!("{field}: `{text}` is before 1970")));
    }
    for format in ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(at) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return u64::try_from(at.and_utc().timestamp())
                .map_err(|_| Error::Invalid(format!("{field}: `{text}` is before 1970")));
        }
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return u64::try_from(
            day.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp(),
        )
        .map_err(|_| Error::Invalid(format!("{field}: `{text}` is before 1970")));
    }
    Err(Error::Invalid(format!(
        "{field}: `{text}` is not a time like \"2026-12-07 09:30\" (UTC), RFC 3339 or unix seconds"
    )))
}

/// A UTC offset like `+01:00`, `-05:30` or `0`, in seconds.
pub fn parse_offset(text: &str) -> Result<i32> {
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", rest)) => (1, rest),
        Some(("-", rest)) => (-1, rest),
        _ => {
            return Err(Error::Invalid(format!(
                "utc offset: `{text}` is not like +01:00 or -05:30"
            )));
        }
    };
    let secs = clock("utc offset", rest)? as i32;
    if secs > 14 * 3_600 {
        return Err(Error::Invalid(format!(
            "utc offset: `{text}` is beyond ±14:00"
        )));
    }
    Ok(sign * secs)
}

impl Hours {
    /// Hours from `mon-fri=09:00-17:00,sat=09:00-12:00` (days not named
    /// are closed), the slot length and the UTC offset.
    pub fn parse(spec: &str, slot: &str, utc_offset: &str) -> Result<Hours> {
        let slot_secs = parse_duration("slot", slot)?;
        if !(300..=DAY).contains(&slot_secs) {
            return Err(Error::Invalid(format!(
                "slot: `{slot}` must be between 5 minutes and a day"
            )));
        }
        let mut hours = Hours {
            utc_offset_secs: parse_offset(utc_offset)?,
            slot_secs: slot_secs as u32,
            opens: [0; 7],
            closes: [0; 7],
        };
        for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (days, times) = part.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("hours: `{part}` is not like mon-fri=09:00-17:00"))
            })?;
            let (from, to) = times.split_once('-').ok_or_else(|| {
                Error::Invalid(format!("hours: `{times}` is not like 09:00-17:00"))
            })?;
            let (open, close) = (clock("hours", from)?, clock("hours", to)?);
            if open >= close {
                return Err(Error::Invalid(format!(
                    "hours: `{times}` closes before it opens"
                )));
            }
            let (first, last) = match days.split_once('-') {
                Some((a, b)) => (weekday("hours", a)?, weekday("hours", b)?),
                None => (weekday("hours", days)?, weekday("hours", days)?),
            };
            if first > last {
                return Err(Error::Invalid(format!(
                    "hours: `{days}` runs backwards (write mon-fri, not fri-mon)"
                )));
            }
            for d in first..=last {
                hours.opens[d] = open;
                hours.closes[d] = close;
            }
        }
        if hours.opens == hours.closes {
            return Err(Error::Invalid(
                "hours: no day is open (write e.g. mon-fri=09:00-17:00)".into(),
            ));
        }
        Ok(hours)
    }

    /// The contract's form.
    pub fn to_chain(&self) -> Appointments::Hours {
        Appointments::Hours {
            utcOffset: self.utc_offset_secs,
            slotSeconds: self.slot_secs,
            opens: self.opens,
            closes: self.closes,
        }
    }

    /// Whether `start` begins a slot on an open day (the contract's rule).
    pub fn is_slot(&self, closed: &HashSet<u32>, start: u64) -> bool {
        let local = start as i64 + i64::from(self.utc_offset_secs);
        if local < 0 || self.slot_secs == 0 {
            return false;
        }
        let (day, second) = (local as u64 / DAY, (local as u64 % DAY) as u32);
        if closed.contains(&(day as u32)) {
            return false;
        }
        let w = ((day + 3) % 7) as usize;
        second >= self.opens[w]
            && second + self.slot_secs <= self.closes[w]
            && (second - self.opens[w]).is_multiple_of(self.slot_secs)
    }

    /// `mon 09:00-17:00, tue ...`, every 30 min, UTC+01:00.
    pub fn describe(&self) -> String {
        let hm = |s: u32| format!("{:02}:{:02}", s / 3_600, s % 3_600 / 60);
        let days: Vec<String> = (0..7)
            .filter(|&d| self.opens[d] < self.closes[d])
            .map(|d| {
                format!(
                    "{} {}-{}",
                    WEEKDAYS[d],
                    hm(self.opens[d]),
                    hm(self.closes[d])
                )
            })
            .collect();
        let off = self.utc_offset_secs;
        format!(
            "{}; {}-minute slots; UTC{}{}",
            days.join(", "),
            self.slot_secs / 60,
            if off < 0 { '-' } else { '+' },
            hm(off.unsigned_abs())
        )
    }

    /// The local day number (days since 1970-01-01, local time) of a
    /// `YYYY-MM-DD` date.
    pub fn local_day(date: &str) -> Result<u32> {
        let d = chrono::NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
            .map_err(|_| Error::Invalid(format!("date: `{date}` is not a date like 2026-12-24")))?;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
        u32::try_from((d - epoch).num_days())
            .map_err(|_| Error::Invalid(format!("date: `{date}` is before 1970")))
    }
}

/// A local day number as a date (`2026-12-24`).
pub fn day_text(day: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

/// The free slots of `hours` starting in `[from, to)`, after `now`, on days
/// not `closed`, not `taken`: at most [`MAX_SLOTS`].
pub fn free_slots(
    hours: &Hours,
    closed: &HashSet<u32>,
    taken: &HashSet<u64>,
    now: u64,
    from: u64,
    to: u64,
) -> Vec<u64> {
    let mut out = Vec::new();
    let off = i64::from(hours.utc_offset_secs);
    let slot = u64::from(hours.slot_secs);
    if slot == 0 {
        return out;
    }
    let first_day = ((from as i64 + off).max(0) as u64) / DAY;
    let last_day = ((to as i64 + off).max(0) as u64) / DAY;
    for day in first_day..=last_day {
        if closed.contains(&(day as u32)) {
            continue;
        }
        let w = ((day + 3) % 7) as usize;
        let (open, close) = (u64::from(hours.opens[w]), u64::from(hours.closes[w]));
        let mut second = open;
        while second + slot <= close {
            let start = (day * DAY + second) as i64 - off;
            second += slot;
            if start < 0 {
                continue;
            }
            let start = start as u64;
            if start < from || start >= to || start <= now || taken.contains(&start) {
                continue;
            }
            out.push(start);
            if out.len() >= MAX_SLOTS {
                return out;
            }
        }
    }
    out
}

/// A provider's terms (the contract's `Policy`), in percentages and hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Share of the copay paid at booking, in basis points (10000: all).
    pub deposit_bps: u16,
    /// No-shows from which the deposit rises (0: never).
    pub no_show_threshold: u16,
    /// The deposit, in basis points, asked from those patients.
    pub threshold_deposit_bps: u16,
    /// Seconds after booking the provider has to confirm.
    pub confirm_window_secs: u32,
    /// Seconds after the start before a no-show may be marked.
    pub no_show_grace_secs: u32,
    /// Refund tiers: (notice in seconds, basis points), longest first.
    pub refunds: Vec<(u32, u16)>,
}

fn percent(field: &str, text: &str) -> Result<u16> {
    let t = text.trim().trim_end_matches('%');
    let p: f64 = t
        .parse()
        .map_err(|_| Error::Invalid(format!("{field}: `{text}` is not a percentage")))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(Error::Invalid(format!(
            "{field}: `{text}` is not between 0% and 100%"
        )));
    }
    Ok((p * 100.0).round() as u16)
}

impl Default for Policy {
    /// The whole copay at booking; twice absent, the same; a day to
    /// confirm; 15 minutes' grace; all back a day ahead, half two hours
    /// ahead, nothing later.
    fn default() -> Policy {
        Policy {
            deposit_bps: 10_000,
            no_show_threshold: 2,
            threshold_deposit_bps: 10_000,
            confirm_window_secs: DAY as u32,
            no_show_grace_secs: 900,
            refunds: vec![(DAY as u32, 10_000), (7_200, 5_000)],
        }
    }
}

impl Policy {
    /// Refund tiers from `24h=100%,2h=50%` (at most three, longest notice
    /// first; a notice shorter than every tier refunds nothing).
    pub fn parse_refunds(text: &str) -> Result<Vec<(u32, u16)>> {
        let mut tiers = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (notice, share) = part
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("refunds: `{part}` is not like 24h=100%")))?;
            let notice = parse_duration("refunds", notice)?;
            let notice = u32::try_from(notice)
                .map_err(|_| Error::Invalid(format!("refunds: `{part}` is too long a notice")))?;
            tiers.push((notice, percent("refunds", share)?));
        }
        if tiers.len() > 3 {
            return Err(Error::Invalid("refunds: at most three tiers".into()));
        }
        for w in tiers.windows(2) {
            if w[1].0 > w[0].0 || w[1].1 > w[0].1 {
                return Err(Error::Invalid(
                    "refunds: list tiers from the longest notice down, each refunding no more than the one before"
                        .into(),
                ));
            }
        }
        Ok(tiers)
    }

    /// Parses a percentage (`50%`) into basis points.
    pub fn parse_percent(field: &str, text: &str) -> Result<u16> {
        percent(field, text)
    }

    /// The contract's form.
    pub fn to_chain(&self) -> Result<Appointments::Policy> {
        if self.confirm_window_secs == 0 {
            return Err(Error::Invalid(
                "confirm window: the provider needs some time to confirm".into(),
            ));
        }
        let mut notice = [0u32; 3];
        let mut refund = [0u16; 3];
        for (i, (n, b)) in self.refunds.iter().enumerate().take(3) {
            notice[i] = *n;
            refund[i] = *b;
        }
        Ok(Appointments::Policy {
            depositBps: self.deposit_bps,
            noShowThreshold: self.no_show_threshold,
            thresholdDepositBps: self.threshold_deposit_bps,
            confirmWindow: self.confirm_window_secs,
            noShowGrace: self.no_show_grace_secs,
            notice,
            refundBps: refund,
        })
    }

    /// The follower's JSON form of a published policy.
    pub fn from_mirror(json: &serde_json::Value) -> Policy {
        let n = |k: &str| json[k].as_u64().unwrap_or(0);
        let arr = |k: &str| -> Vec<u64> {
            json[k]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default()
        };
        let refunds = arr("notice")
            .into_iter()
            .zip(arr("refund_bps"))
            .filter(|(_, b)| *b > 0)
            .map(|(n, b)| (n as u32, b as u16))
            .collect();
        Policy {
            deposit_bps: n("deposit_bps") as u16,
            no_show_threshold: n("no_show_threshold") as u16,
            threshold_deposit_bps: n("threshold_deposit_bps") as u16,
            confirm_window_secs: n("confirm_window") as u32,
            no_show_grace_secs: n("no_show_grace") as u32,
            refunds,
        }
    }

    /// `deposit 100%; refunds 24h=100%, 2h=50%, later none; ...`.
    pub fn describe(&self) -> String {
        let pct = |b: u16| format!("{}%", f64::from(b) / 100.0);
        let dur = |s: u32| {
            if s.is_multiple_of(86_400) && s > 0 {
                format!("{}d", s / 86_400)
            } else if s.is_multiple_of(3_600) && s > 0 {
                format!("{}h", s / 3_600)
            } else {
                format!("{}m", s / 60)
            }
        };
        let mut tiers: Vec<String> = self
            .refunds
            .iter()
            .map(|(n, b)| format!("{} ahead {}", dur(*n), pct(*b)))
            .collect();
        tiers.push("later none".into());
        let threshold = if self.no_show_threshold > 0 {
            format!(
                "; after {} no-shows, a deposit of {}",
                self.no_show_threshold,
                pct(self.threshold_deposit_bps)
            )
        } else {
            String::new()
        };
        format!(
            "deposit {} of the copay at booking{threshold}; confirmed within {}; refunds: {}; a no-show may be marked {} after the start",
            pct(self.deposit_bps),
            dur(self.confirm_window_secs),
            tiers.join(", "),
            dur(self.no_show_grace_secs)
        )
    }
}

/// A visit type's on-chain word: its name, lowercase ASCII letters,
/// digits and `-`, at most 31 bytes, right-padded with zeros.
pub fn visit_type(name: &str) -> Result<B256> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 31
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "visit type `{name}`: 1 to 31 lowercase letters, digits or `-` (e.g. checkup)"
        )));
    }
    Ok(B256::right_padding_from(name.as_bytes()))
}

/// The name a visit type's word holds.
pub fn visit_type_name(word: B256) -> String {
    let bytes: Vec<u8> = word.iter().copied().take_while(|b| *b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekdays() -> Hours {
        Hours::parse("mon-fri=09:00-17:00,sat=09:00-12:00", "30m", "+01:00").unwrap()
    }

    #[test]
    fn hours_parse_and_refuse_what_is_wrong() {
        let h = weekdays();
        assert_eq!(h.opens[0], 9 * 3_600);
        assert_eq!(h.closes[5], 12 * 3_600);
        assert_eq!(h.opens[6], h.closes[6]);
        assert_eq!(h.utc_offset_secs, 3_600);
        assert!(
            h.describe().starts_with("mon 09:00-17:00"),
            "{}",
            h.describe()
        );
        for (spec, slot, off, says) in [
            ("mon-fri=17:00-09:00", "30m", "0", "closes before it opens"),
            ("fri-mon=09:00-17:00", "30m", "0", "runs backwards"),
            ("funday=09:00-17:00", "30m", "0", "not a weekday"),
            ("mon=9-17", "30m", "0", "not a time of day"),
            ("mon=09:00-17:00", "1m", "0", "between 5 minutes and a day"),
            ("mon=09:00-17:00", "30m", "+15:00", "beyond"),
            ("", "30m", "0", "no day is open"),
        ] {
            let e = Hours::parse(spec, slot, off).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn free_slots_follow_the_hours_the_offset_and_the_closed_days() {
        let h = weekdays();
        // Monday 2026-12-07, local 09:00 = 08:00 UTC.
        let monday = Hours::local_day("2026-12-07").unwrap() as u64 * DAY;
        let nine_local = monday + 8 * 3_600;
        let week = free_slots(
            &h,
            &HashSet::new(),
            &HashSet::new(),
            0,
            monday,
            monday + 7 * DAY,
        );
        assert_eq!(week.len(), 5 * 16 + 6);
        assert_eq!(week[0], nine_local);
        assert!(week.iter().all(|s| h.is_slot(&HashSet::new(), *s)));
        // Taken, past and closed slots are left out.
        let taken: HashSet<u64> = [nine_local].into();
        let closed: HashSet<u32> = [(monday / DAY + 1) as u32].into();
        let left = free_slots(
            &h,
            &closed,
            &taken,
            nine_local + 1_800,
            monday,
            monday + 7 * DAY,
        );
        assert_eq!(left.len(), 4 * 16 + 6 - 2);
        assert!(!left.contains(&(nine_local + 1_800)));
        assert!(!h.is_slot(&HashSet::new(), nine_local + 60));
    }

    #[test]
    fn times_parse_in_every_documented_form() {
        let at = 1_796_635_800; // 2026-12-07 09:30 UTC
        assert_eq!(parse_time("at", "2026-12-07 09:30").unwrap(), at);
        assert_eq!(parse_time("at", "2026-12-07T10:30:00+01:00").unwrap(), at);
        assert_eq!(parse_time("at", &at.to_string()).unwrap(), at);
        assert_eq!(
            parse_time("at", "2026-12-07").unwrap(),
            at - 9 * 3_600 - 1_800
        );
        assert!(
            parse_time("at", "next tuesday")
                .unwrap_err()
                .to_string()
                .contains("not a time")
        );
    }

    #[test]
    fn policies_and_visit_types_parse() {
        let tiers = Policy::parse_refunds("24h=100%,2h=50%").unwrap();
        assert_eq!(tiers, vec![(86_400, 10_000), (7_200, 5_000)]);
        assert!(Policy::parse_refunds("2h=50%,24h=100%").is_err());
        assert!(Policy::parse_refunds("24h=150%").is_err());
        assert_eq!(Policy::parse_percent("deposit", "20%").unwrap(), 2_000);
        assert!(Policy::default().describe().contains("1d ahead 100%"));
        let word = visit_type("checkup").unwrap();
        assert_eq!(visit_type_name(word), "checkup");
        assert!(visit_type("Check Up").is_err());
        assert!(visit_type(&"x".repeat(32)).is_err());
    }
}
