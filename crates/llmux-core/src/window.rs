//! Periods and windows: when a resource's counter starts and ends.
//!
//! Calendar periods (`daily` and longer) follow the wall clock of an IANA zone, so a day is 23 or
//! 25 hours long across a DST change and a month ends at local midnight of the 1st.
//! `secondly`/`minutely` are aligned to the epoch; `hourly` to the local hour. `custom` windows
//! last `ttl` seconds from the moment a counter (re)starts.
//!
//! Invariant: `window_at(p, tz, now)` contains `now` (`start <= now < end`). Pure in time.

use crate::time::Timestamp;
use jiff::tz::TimeZone;
use jiff::ToSpan;
use std::fmt;
use std::str::FromStr;

/// How long a resource's window lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Secondly,
    Minutely,
    Hourly,
    Daily,
    /// ISO weeks: Monday 00:00 local to the next Monday.
    Weekly,
    Monthly,
    Quarterly,
    Yearly,
    /// A window of `ttl_secs` seconds starting when the counter (re)starts.
    Custom {
        ttl_secs: u64,
    },
}

impl Period {
    /// The names accepted in config, `custom` last.
    pub const NAMES: [&'static str; 9] = [
        "secondly",
        "minutely",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "quarterly",
        "yearly",
        "custom",
    ];

    /// Parse a period name; `custom` needs `ttl_secs`.
    pub fn parse(name: &str, ttl_secs: Option<u64>) -> Result<Period, PeriodError> {
        Ok(match name {
            "secondly" => Period::Secondly,
            "minutely" => Period::Minutely,
            "hourly" => Period::Hourly,
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "quarterly" => Period::Quarterly,
            "yearly" => Period::Yearly,
            "custom" => match ttl_secs {
                Some(t) if t > 0 => Period::Custom { ttl_secs: t },
                _ => return Err(PeriodError::CustomNeedsTtl),
            },
            _ => return Err(PeriodError::Unknown(name.to_string())),
        })
    }

    /// The length of every window of this period, for the periods whose windows all last
    /// the same (up to an hour): a day can last 23 or 25 hours across a DST change.
    pub fn fixed_secs(&self) -> Option<u64> {
        match self {
            Period::Secondly => Some(1),
            Period::Minutely => Some(60),
            Period::Hourly => Some(3600),
            Period::Custom { ttl_secs } => Some(*ttl_secs),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Period::Secondly => "secondly",
            Period::Minutely => "minutely",
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Quarterly => "quarterly",
            Period::Yearly => "yearly",
            Period::Custom { .. } => "custom",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Custom { ttl_secs } => write!(f, "custom({ttl_secs}s)"),
            p => f.write_str(p.name()),
        }
    }
}

impl FromStr for Period {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::parse(s, None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("unknown period {0:?}; expected one of {names}", names = Period::NAMES.join(", "))]
    Unknown(String),
    #[error("period \"custom\" needs `ttl` (seconds, greater than 0)")]
    CustomNeedsTtl,
}

/// A half-open interval of UTC instants `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Window {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Window {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }
}

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// The window of `period` in zone `tz` that contains `now`.
pub fn window_at(period: Period, tz: &TimeZone, now: Timestamp) -> Window {
    let fixed = |len: i64, offset_ms: i64| {
        let local = now.0 + offset_ms;
        let start = local.div_euclid(len) * len - offset_ms;
        Window {
            start: Timestamp(start),
            end: Timestamp(start + len),
        }
    };
    match period {
        Period::Secondly => fixed(SECOND, 0),
        Period::Minutely => fixed(MINUTE, 0),
        Period::Custom { ttl_secs } => Window {
            start: now,
            end: now.plus_millis(crate::time::secs_to_millis(ttl_secs)),
        },
        Period::Hourly => hourly(tz, now).unwrap_or_else(|| fixed(HOUR, 0)),
        Period::Daily | Period::Weekly | Period::Monthly | Period::Quarterly | Period::Yearly => {
            calendar_window(period, tz, now).unwrap_or_else(|| fixed(24 * HOUR, 0))
        }
    }
}

/// The local hour containing `now`. A UTC-offset change inside an hour (a DST shift of 30
/// minutes, say) is a window boundary too, so hours still tile time.
fn hourly(tz: &TimeZone, now: Timestamp) -> Option<Window> {
    let ts = jiff::Timestamp::from_millisecond(now.0).ok()?;
    let offset = tz.to_offset(ts).seconds() as i64 * SECOND;
    let start = (now.0 + offset).div_euclid(HOUR) * HOUR - offset;
    let mut w = Window {
        start: Timestamp(start),
        end: Timestamp(start + HOUR),
    };
    let after = jiff::Timestamp::from_millisecond(now.0 + 1).ok()?;
    if let Some(t) = tz.preceding(after).next() {
        w.start = w.start.max(Timestamp(t.timestamp().as_millisecond()));
    }
    if let Some(t) = tz.following(ts).next() {
        w.end = w.end.min(Timestamp(t.timestamp().as_millisecond()));
    }
    Some(w)
}

fn calendar_window(period: Period, tz: &TimeZone, now: Timestamp) -> Option<Window> {
    let zdt = jiff::Timestamp::from_millisecond(now.0)
        .ok()?
        .to_zoned(tz.clone());
    let date = zdt.date();
    let (start, next) = match period {
        Period::Daily => (date, date.tomorrow().ok()?),
        Period::Weekly => {
            let back = date.weekday().to_monday_zero_offset() as i64;
            let start = date.checked_sub(back.days()).ok()?;
            (start, start.checked_add(7.days()).ok()?)
        }
        Period::Monthly => {
            let start = date.first_of_month();
            (start, start.checked_add(1.month()).ok()?)
        }
        Period::Quarterly => {
            let m = (date.month() - 1) / 3 * 3 + 1;
            let start = jiff::civil::Date::new(date.year(), m, 1).ok()?;
            (start, start.checked_add(3.months()).ok()?)
        }
        Period::Yearly => {
            let start = date.first_of_year();
            (start, start.checked_add(1.year()).ok()?)
        }
        _ => return None,
    };
    let s = start.to_zoned(tz.clone()).ok()?.start_of_day().ok()?;
    let e = next.to_zoned(tz.clone()).ok()?.start_of_day().ok()?;
    Some(Window {
        start: Timestamp(s.timestamp().as_millisecond()),
        end: Timestamp(e.timestamp().as_millisecond()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp(s.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    #[test]
    fn monthly_ends_at_local_midnight_of_the_first() {
        let tz = TimeZone::get("Europe/Warsaw").unwrap();
        let w = window_at(Period::Monthly, &tz, ts("2026-03-15T12:00:00Z"));
        assert_eq!(w.start, ts("2026-02-28T23:00:00Z")); // CET, +01:00
        assert_eq!(w.end, ts("2026-03-31T22:00:00Z")); // CEST, +02:00
    }

    #[test]
    fn dst_day_is_23_hours() {
        let tz = TimeZone::get("Europe/Warsaw").unwrap();
        let w = window_at(Period::Daily, &tz, ts("2026-03-29T10:00:00Z"));
        assert_eq!(w.end.0 - w.start.0, 23 * HOUR);
    }

    #[test]
    fn minutely_aligns_to_the_minute() {
        let w = window_at(Period::Minutely, &TimeZone::UTC, Timestamp(61_500));
        assert_eq!((w.start, w.end), (Timestamp(60_000), Timestamp(120_000)));
    }

    #[test]
    fn custom_needs_ttl_and_unknown_names_are_named() {
        assert_eq!(
            Period::parse("custom", None),
            Err(PeriodError::CustomNeedsTtl)
        );
        let e = Period::parse("montly", None).unwrap_err().to_string();
        assert!(e.contains("\"montly\"") && e.contains("monthly"), "{e}");
    }

    #[test]
    fn leap_years_months_and_quarters() {
        let w = window_at(Period::Monthly, &TimeZone::UTC, ts("2028-02-29T23:59:59Z"));
        assert_eq!(
            (w.start, w.end),
            (ts("2028-02-01T00:00:00Z"), ts("2028-03-01T00:00:00Z"))
        );
        let w = window_at(Period::Monthly, &TimeZone::UTC, ts("2027-02-15T00:00:00Z"));
        assert_eq!(w.end, ts("2027-03-01T00:00:00Z"));
        let w = window_at(
            Period::Quarterly,
            &TimeZone::UTC,
            ts("2026-12-31T23:59:59.999Z"),
        );
        assert_eq!(
            (w.start, w.end),
            (ts("2026-10-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        let w = window_at(
            Period::Quarterly,
            &TimeZone::UTC,
            ts("2027-04-01T00:00:00Z"),
        );
        assert_eq!(w.start, ts("2027-04-01T00:00:00Z"));
        let w = window_at(
            Period::Yearly,
            &TimeZone::get("Asia/Tokyo").unwrap(),
            ts("2026-12-31T15:00:00Z"),
        );
        assert_eq!(w.start, ts("2026-12-31T15:00:00Z")); // 2027-01-01 00:00 +09:00
    }

    #[test]
    fn lord_howe_half_hour_dst_shift_keeps_hours_tiling() {
        // 2026-10-04 02:00 +10:30 -> 02:30 +11:00 (15:30Z on the 3rd).
        let tz = TimeZone::get("Australia/Lord_Howe").unwrap();
        let before = window_at(Period::Hourly, &tz, ts("2026-10-03T15:20:00Z"));
        assert_eq!(
            (before.start, before.end),
            (ts("2026-10-03T14:30:00Z"), ts("2026-10-03T15:30:00Z"))
        );
        let after = window_at(Period::Hourly, &tz, ts("2026-10-03T15:31:00Z"));
        assert_eq!(
            (after.start, after.end),
            (ts("2026-10-03T15:30:00Z"), ts("2026-10-03T16:00:00Z"))
        );
        let day = window_at(Period::Daily, &tz, ts("2026-10-03T20:00:00Z"));
        assert_eq!(day.end.0 - day.start.0, 23 * HOUR + 30 * MINUTE);
    }

    #[test]
    fn weekly_starts_monday() {
        let w = window_at(Period::Weekly, &TimeZone::UTC, ts("2026-11-26T09:00:00Z"));
        assert_eq!(w.start, ts("2026-11-23T00:00:00Z"));
        assert_eq!(w.end, ts("2026-11-30T00:00:00Z"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        const ZONES: [&str; 9] = [
            "UTC",
            "Europe/Warsaw",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Pacific/Chatham",
            "America/Sao_Paulo",
            "Pacific/Apia",
        ];

        fn any_period() -> impl Strategy<Value = Period> {
            prop_oneof![
                Just(Period::Secondly),
                Just(Period::Minutely),
                Just(Period::Hourly),
                Just(Period::Daily),
                Just(Period::Weekly),
                Just(Period::Monthly),
                Just(Period::Quarterly),
                Just(Period::Yearly),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn windows_tile_time(p in any_period(), z in 0..ZONES.len(), t in 0i64..4_102_444_800_000) {
                let tz = TimeZone::get(ZONES[z]).unwrap();
                let w = window_at(p, &tz, Timestamp(t));
                prop_assert!(w.start <= Timestamp(t) && Timestamp(t) < w.end, "{p} {} {w:?} at {t}", ZONES[z]);
                prop_assert_eq!(window_at(p, &tz, w.end).start, w.end, "next window starts at our end");
                prop_assert_eq!(window_at(p, &tz, w.start), w, "a window's start maps to itself");
                let len = w.end.0 - w.start.0;
                let max = match p {
                    Period::Secondly => SECOND,
                    Period::Minutely => MINUTE,
                    Period::Hourly => HOUR,
                    Period::Daily => 26 * HOUR,
                    Period::Weekly => 7 * 26 * HOUR,
                    Period::Monthly => 32 * 26 * HOUR,
                    Period::Quarterly => 93 * 26 * HOUR,
                    _ => 367 * 26 * HOUR,
                };
                prop_assert!(len > 0 && len <= max, "{p}: {len} ms");
            }

            #[test]
            fn dst_days_are_23_or_25_hours_in_europe(t in 0i64..4_102_444_800_000) {
                let tz = TimeZone::get("Europe/Warsaw").unwrap();
                let w = window_at(Period::Daily, &tz, Timestamp(t));
                let h = (w.end.0 - w.start.0) / HOUR;
                prop_assert!([23, 24, 25].contains(&h));
            }
        }
    }
}
