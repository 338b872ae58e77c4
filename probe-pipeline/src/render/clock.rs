//! Event times (CLOCK_MONOTONIC, as the kernel stamps them) as a time of day. The offsets
//! between the clocks are read by whoever runs the pipeline (probe-user asks the kernel), so
//! this crate does no system calls.

/// Converts CLOCK_MONOTONIC event times to the local time of day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns.
    pub realtime_minus_monotonic_ns: i128,
    /// Local time − UTC, in seconds (the time zone's offset).
    pub utc_offset_s: i64,
}

impl Clock {
    /// `HH:MM:SS.uuuuuu` in local time.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let real = monotonic_ns as i128 + self.realtime_minus_monotonic_ns;
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
    }
}
