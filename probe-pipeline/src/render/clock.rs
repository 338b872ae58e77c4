//! Event times (CLOCK_MONOTONIC, as the kernel stamps them) as a time of day. The offsets
//! between the clocks are read by whoever runs the pipeline (probe-user asks the kernel), so
//! this crate does no system calls.

/// Converts CLOCK_MONOTONIC event times to the local time of day and to UTC. Recordings store
/// the one of the machine that traced, so a replay prints the times the events happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns.
    pub realtime_minus_monotonic_ns: i64,
    /// Local time − UTC, in seconds (the time zone's offset).
    pub utc_offset_s: i64,
}

impl Clock {
    /// Nanoseconds since the Unix epoch.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        monotonic_ns as i128 + i128::from(self.realtime_minus_monotonic_ns)
    }

    /// RFC 3339 in UTC with nanoseconds: `2026-12-01T09:22:16.123456789Z`.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        let ns = self.unix_ns(monotonic_ns);
        let secs = ns.div_euclid(1_000_000_000);
        let frac = ns.rem_euclid(1_000_000_000);
        let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60
        )
    }

    /// `HH:MM:SS.uuuuuu` in local time.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let real = self.unix_ns(monotonic_ns);
        let secs = real.div_euclid(1_000_000_000) + i128::from(self.utc_offset_s);
        let micros = real.rem_euclid(1_000_000_000) / 1000;
        let of_day = secs.rem_euclid(86_400);
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            micros
        )
    }
}

/// (year, month, day) of a day count since 1970-01-01 (the proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_from_offsets() {
        // 1970-01-02 01:02:03.000004 UTC, shown two hours east of UTC.
        let clock = Clock {
            realtime_minus_monotonic_ns: 86_400_000_000_000,
            utc_offset_s: 7200,
        };
        let mono = (3600 + 2 * 60 + 3) * 1_000_000_000 + 4_000;
        assert_eq!(clock.time_of_day(mono), "03:02:03.000004");
        let west = Clock {
            utc_offset_s: -7200,
            ..clock
        };
        assert_eq!(west.time_of_day(mono), "23:02:03.000004");
        assert_eq!(clock.rfc3339(mono), "1970-01-02T01:02:03.000004000Z");
    }

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
