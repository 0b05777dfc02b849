//! Go-style durations ("300ms", "1.5h", "2h45m"), as Kubernetes objects and
//! CEL's `duration()` spell them, and the same with a leading whole number of
//! days ("30d", "1d12h") for long spans such as SLO windows.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// Longest duration Go, and so Kubernetes and CEL, can hold: `i64::MAX`
/// nanoseconds, about 292 years. [`parse_duration`] rejects anything longer,
/// so whatever it accepts the API server accepts too.
pub const MAX_DURATION: Duration = Duration::from_nanos(MAX_NANOS);
const MAX_NANOS: u64 = i64::MAX as u64;

/// Why a duration string was rejected. Every message quotes the input.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    /// The string is empty.
    #[error(r#"invalid duration "": empty; write it like "10s", "500ms" or "1m30s""#)]
    Empty,
    /// A negative, non-zero duration.
    #[error("invalid duration {input:?}: durations must be non-negative")]
    Negative {
        /// The whole input.
        input: String,
    },
    /// A number without a unit, other than a bare `0`.
    #[error(r#"invalid duration {input:?}: missing unit; write it like "10s", "500ms" or "1m30s""#)]
    MissingUnit {
        /// The whole input.
        input: String,
    },
    /// A unit other than `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m` and `h`.
    #[error("invalid duration {input:?}: unknown unit {unit:?}; use ns, us, µs, ms, s, m or h")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unrecognized unit.
        unit: String,
    },
    /// Something other than a number where one was due.
    #[error(
        r#"invalid duration {input:?}: expected a number at byte {at}; write it like "10s", "500ms" or "1m30s""#
    )]
    Malformed {
        /// The whole input.
        input: String,
        /// Byte offset of the offending text.
        at: usize,
    },
    /// In [`parse_duration_days`]: a unit other than `d` and Go's.
    #[error(
        "invalid duration {input:?}: unknown unit {unit:?}; use d (whole days, first), h, m, s, ms, us, µs or ns"
    )]
    UnknownUnitOrDays {
        /// The whole input.
        input: String,
        /// The unrecognized unit.
        unit: String,
    },
    /// In [`parse_duration_days`]: days after another unit, or a fraction of a day.
    #[error(
        r#"invalid duration {input:?}: days must come first, as a whole number; write it like "30d" or "1d12h""#
    )]
    MisplacedDays {
        /// The whole input.
        input: String,
    },
    /// Longer than [`MAX_DURATION`].
    #[error(
        "invalid duration {input:?}: longer than the maximum of 2562047h47m16.854775807s (about 292 years)"
    )]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// Parses a non-negative duration in Go's `time.ParseDuration` syntax.
///
/// That is one or more decimal numbers, each with an optional fraction and a
/// unit among `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m` and
/// `h`: "300ms", "1.5h", "2h45m", ".5s". A bare "0" needs no unit, and a
/// leading `+` is allowed. Fractions are truncated to whole nanoseconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let (negative, body) = match s.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        Some(_) => (false, s),
    };
    let nanos = if body == "0" {
        Ok(0)
    } else {
        parse_nanos(s, s.len() - body.len())
    };
    match nanos {
        // Go accepts "-0s", and it is no negative duration.
        Ok(0) => Ok(Duration::ZERO),
        Ok(_) | Err(DurationError::Overflow { .. }) if negative => Err(DurationError::Negative {
            input: s.to_owned(),
        }),
        Ok(nanos) => Ok(Duration::from_nanos(nanos)),
        Err(e) => Err(e),
    }
}

/// Sums the `number unit` components of `input[start..]`, in nanoseconds.
fn parse_nanos(input: &str, start: usize) -> Result<u64, DurationError> {
    let bytes = input.as_bytes();
    let digits_from = |i: usize| {
        bytes[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| i + n)
    };
    let malformed = |at| DurationError::Malformed {
        input: input.to_owned(),
        at,
    };
    if start == bytes.len() {
        return Err(malformed(start));
    }
    let mut total = 0u64;
    let mut i = start;
    while i < bytes.len() {
        let whole_end = digits_from(i);
        let whole = &input[i..whole_end];
        let (fraction, number_end) = if bytes.get(whole_end) == Some(&b'.') {
            let end = digits_from(whole_end + 1);
            (&input[whole_end + 1..end], end)
        } else {
            ("", whole_end)
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(malformed(i));
        }
        let unit_end = bytes[number_end..]
            .iter()
            .position(|b| b.is_ascii_digit() || *b == b'.')
            .map_or(bytes.len(), |n| number_end + n);
        let scale = match &input[number_end..unit_end] {
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                });
            }
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            unit => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        total = component_nanos(whole, fraction, scale)
            .and_then(|n| total.checked_add(n))
            .filter(|&t| t <= MAX_NANOS)
            .ok_or_else(|| DurationError::Overflow {
                input: input.to_owned(),
            })?;
        i = unit_end;
    }
    Ok(total)
}

const SECS_PER_DAY: u64 = 86_400;
const NANOS_PER_DAY: u64 = SECS_PER_DAY * 1_000_000_000;

/// Parses a duration like [`parse_duration`], or a whole number of days with
/// the unit `d` followed by an optional Go-style remainder: "30d", "7d",
/// "1d12h", "36h".
///
/// Days must come first and be whole, so every accepted string is a day count
/// plus something Go (and CEL's `duration()`) reads; the CRD schema checks
/// the same grammar with a regular expression. The maximum is
/// [`MAX_DURATION`], as for Go durations.
pub fn parse_duration_days(s: &str) -> Result<Duration, DurationError> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || s.as_bytes().get(digits) != Some(&b'd') {
        return parse_duration(s).map_err(|e| match e {
            // "-1d": Go's parser stops at the unit before it sees the sign matter.
            DurationError::UnknownUnit { input, unit } if unit == "d" && input.starts_with('-') => {
                DurationError::Negative { input }
            }
            other => with_days_hint(other),
        });
    }
    let overflow = || DurationError::Overflow {
        input: s.to_owned(),
    };
    let rest_from = digits + 1;
    let rest = &s[rest_from..];
    if rest.starts_with(|c: char| !c.is_ascii_digit() && c != '.') {
        // "30days", "1dh": a unit where the remainder's number is due.
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.');
        return Err(DurationError::UnknownUnitOrDays {
            input: s.to_owned(),
            unit: s[digits..rest_from + unit_len.unwrap_or(rest.len())].to_owned(),
        });
    }
    let rest_nanos = if rest.is_empty() {
        0
    } else {
        parse_nanos(s, rest_from).map_err(with_days_hint)?
    };
    let days: u64 = s[..digits].parse().map_err(|_| overflow())?;
    days.checked_mul(NANOS_PER_DAY)
        .and_then(|n| n.checked_add(rest_nanos))
        .filter(|&n| n <= MAX_NANOS)
        .map(Duration::from_nanos)
        .ok_or_else(overflow)
}

/// Rewrites a unit error of Go's grammar for the grammar with days.
fn with_days_hint(e: DurationError) -> DurationError {
    match e {
        DurationError::UnknownUnit { input, unit } if unit == "d" => {
            DurationError::MisplacedDays { input }
        }
        DurationError::UnknownUnit { input, unit } => {
            DurationError::UnknownUnitOrDays { input, unit }
        }
        other => other,
    }
}

/// Formats `d` in the syntax [`parse_duration_days`] reads: whole days first,
/// then the rest as [`format_duration`] writes it ("30d", "1d12h", "36m").
pub fn format_duration_days(d: Duration) -> String {
    let days = d.as_secs() / SECS_PER_DAY;
    if days == 0 {
        return format_duration(d);
    }
    let rest = d - Duration::from_secs(days * SECS_PER_DAY);
    if rest.is_zero() {
        format!("{days}d")
    } else {
        format!("{days}d{}", Formatted(rest))
    }
}

/// `whole.fraction` (ASCII digits) times `scale`, truncated; `None` on overflow.
fn component_nanos(whole: &str, fraction: &str, scale: u64) -> Option<u64> {
    let whole = whole.bytes().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    // Exact for any number of digits: from the last digit on, the carry stays
    // below `scale`, and floor((d * scale + x) / 10) = floor((d * scale +
    // floor(x)) / 10) for integers d, scale.
    let fraction = fraction
        .bytes()
        .rev()
        .fold(0, |carry, d| (u64::from(d - b'0') * scale + carry) / 10);
    whole.checked_mul(scale)?.checked_add(fraction)
}

/// Formats `d` compactly in the syntax [`parse_duration`] reads: "1h30m",
/// "1m30.5s", "250ms", "2.5µs", "0s".
///
/// Zero components are left out, and below a second the largest of ms, µs
/// and ns that fits is used. `parse_duration(&format_duration(d)) == Ok(d)`
/// for every `d` up to [`MAX_DURATION`].
pub fn format_duration(d: Duration) -> String {
    Formatted(d).to_string()
}

/// [`format_duration`] without the intermediate `String`.
struct Formatted(Duration);

impl fmt::Display for Formatted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if secs == 0 {
            return match nanos {
                0 => f.write_str("0s"),
                1..1_000 => write!(f, "{nanos}ns"),
                1_000..1_000_000 => decimal(f, nanos / 1_000, nanos % 1_000, 3, "µs"),
                _ => decimal(f, nanos / 1_000_000, nanos % 1_000_000, 6, "ms"),
            };
        }
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if seconds > 0 || nanos > 0 {
            decimal(f, seconds, nanos, 9, "s")?;
        }
        Ok(())
    }
}

/// Writes `whole.fraction` (the fraction `digits` wide, trailing zeros dropped) and `unit`.
fn decimal(
    f: &mut fmt::Formatter<'_>,
    whole: impl fmt::Display,
    fraction: u32,
    digits: usize,
    unit: &str,
) -> fmt::Result {
    write!(f, "{whole}")?;
    if fraction > 0 {
        let padded = format!("{fraction:0digits$}");
        write!(f, ".{}", padded.trim_end_matches('0'))?;
    }
    f.write_str(unit)
}

/// Serde adapter for a [`Duration`] field written as a Go-style string:
/// `#[serde(with = "ringwarden_core::duration::serde_duration")]`.
///
/// Deserialization errors carry the [`DurationError`] message.
pub mod serde_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    use super::{Formatted, parse_duration};

    /// Writes `d` as [`format_duration`](super::format_duration) would.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Formatted(*d))
    }

    /// Reads a string with [`parse_duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    pub(super) struct DurationVisitor;

    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a duration string like "10s", "500ms" or "1m30s""#)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
}

/// Serde adapter for an `Option<Duration>` field written as a Go-style string
/// or null: `#[serde(with = "ringwarden_core::duration::serde_duration_opt")]`.
///
/// Add `#[serde(default)]` to let the field be left out.
pub mod serde_duration_opt {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    use super::Formatted;
    use super::serde_duration::{self, DurationVisitor};

    /// Writes `Some(d)` as [`format_duration`](super::format_duration) would, `None` as null.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serializer.serialize_some(&Formatted(*d).to_string()),
            None => serializer.serialize_none(),
        }
    }

    /// Reads null as `None` and a string with
    /// [`parse_duration`](super::parse_duration).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> de::Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"null or a duration string like "10s", "500ms" or "1m30s""#)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            serde_duration::deserialize(d).map(Some)
        }

        // Formats that do not mark presence hand over the string itself.
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            de::Visitor::visit_str(DurationVisitor, s).map(Some)
        }
    }
}

/// Serde adapter for a [`Duration`] field written with optional leading days
/// ("30d", "1d12h", "6h"):
/// `#[serde(with = "ringwarden_core::duration::serde_duration_days")]`.
pub mod serde_duration_days {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    use super::{format_duration_days, parse_duration_days};

    /// Writes `d` as [`format_duration_days`] would.
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration_days(*d))
    }

    /// Reads a string with [`parse_duration_days`].
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DaysVisitor)
    }

    struct DaysVisitor;

    impl de::Visitor<'_> for DaysVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a duration string like "30d", "1d12h" or "6h""#)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration_days(s).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as ValueError, StrDeserializer, UnitDeserializer};

    fn nanos(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn valid_durations_parse_to_the_expected_value() {
        let cases = [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0.000h", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("+5s", Duration::from_secs(5)),
            ("00010s", Duration::from_secs(10)),
            ("300ms", Duration::from_millis(300)),
            ("1.5h", Duration::from_secs(5_400)),
            ("2h45m", Duration::from_secs(9_900)),
            ("1m30s", Duration::from_secs(90)),
            ("1h1h", Duration::from_secs(7_200)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("100ns", nanos(100)),
            ("1us", nanos(1_000)),
            ("1µs", nanos(1_000)),
            ("1μs", nanos(1_000)),
            ("2.5µs", nanos(2_500)),
            ("1h1m1s1ms1us1ns", nanos(3_661_001_001_001)),
            ("0.000000001s", nanos(1)),
            // Truncated, not rounded, to whole nanoseconds.
            ("0.0000000019s", nanos(1)),
            ("1.0000000000000000000000000009s", Duration::from_secs(1)),
            // Just above a third of an hour: exactly 20 minutes, no float error.
            (
                "0.33333333333333333333333333334h",
                Duration::from_secs(1_200),
            ),
            ("9223372036854775807ns", MAX_DURATION),
            ("2562047h47m16.854775807s", MAX_DURATION),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn invalid_durations_are_rejected_with_a_helpful_message() {
        let cases = [
            (
                "",
                r#"invalid duration "": empty; write it like "10s", "500ms" or "1m30s""#,
            ),
            (
                "10",
                r#"invalid duration "10": missing unit; write it like "10s", "500ms" or "1m30s""#,
            ),
            ("1h30", r#"invalid duration "1h30": missing unit; "#),
            ("1.2.3s", r#"invalid duration "1.2.3s": missing unit; "#),
            (
                "-1s",
                r#"invalid duration "-1s": durations must be non-negative"#,
            ),
            (
                "-0.5ms",
                r#"invalid duration "-0.5ms": durations must be non-negative"#,
            ),
            (
                "-99999999999999h",
                r#"invalid duration "-99999999999999h": durations must be non-negative"#,
            ),
            (
                "10sec",
                r#"invalid duration "10sec": unknown unit "sec"; use ns, us, µs, ms, s, m or h"#,
            ),
            ("10S", r#"unknown unit "S""#),
            ("1d", r#"unknown unit "d""#),
            ("5s ", r#"unknown unit "s ""#),
            ("1h 30m", r#"unknown unit "h ""#),
            (
                "s",
                r#"invalid duration "s": expected a number at byte 0; write it like "10s", "500ms" or "1m30s""#,
            ),
            (".", "expected a number at byte 0"),
            (".s", "expected a number at byte 0"),
            ("-", r#"invalid duration "-": expected a number at byte 1"#),
            ("--1s", "expected a number at byte 1"),
            (" 5s", "expected a number at byte 0"),
            ("µs", "expected a number at byte 0"),
            (
                "9223372036854775808ns",
                r#"invalid duration "9223372036854775808ns": longer than the maximum of 2562047h47m16.854775807s (about 292 years)"#,
            ),
            ("2562048h", "longer than the maximum"),
            ("99999999999999999999s", "longer than the maximum"),
            ("2562047h47m16.854775808s", "longer than the maximum"),
        ];
        for (input, message) in cases {
            let error = parse_duration(input).expect_err(input).to_string();
            assert!(
                error.contains(message),
                "{input:?}: {error:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn errors_carry_the_input_and_the_offending_part() {
        assert_eq!(
            parse_duration("3 h"),
            Err(DurationError::UnknownUnit {
                input: "3 h".into(),
                unit: " h".into(),
            })
        );
        assert_eq!(
            parse_duration("1m.x"),
            Err(DurationError::Malformed {
                input: "1m.x".into(),
                at: 2,
            })
        );
    }

    #[test]
    fn durations_format_compactly() {
        let cases = [
            (Duration::ZERO, "0s"),
            (nanos(1), "1ns"),
            (nanos(999), "999ns"),
            (nanos(1_000), "1µs"),
            (nanos(2_500), "2.5µs"),
            (nanos(1_000_001), "1.000001ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1_500), "1.5s"),
            (nanos(1_000_000_001), "1.000000001s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(60_500), "1m0.5s"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::from_secs(3_601), "1h1s"),
            (Duration::from_secs(5_400), "1h30m"),
            (Duration::from_millis(3_600_250), "1h0.25s"),
            (Duration::from_secs(86_400), "24h"),
            (MAX_DURATION, "2562047h47m16.854775807s"),
        ];
        for (d, expected) in cases {
            assert_eq!(format_duration(d), expected, "{d:?}");
        }
    }

    #[test]
    fn serde_duration_writes_and_reads_the_string_form() {
        struct Written(Duration);
        impl fmt::Display for Written {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                serde_duration::serialize(&self.0, f)
            }
        }
        assert_eq!(Written(Duration::from_secs(90)).to_string(), "1m30s");

        let read = |s| serde_duration::deserialize(StrDeserializer::<ValueError>::new(s));
        assert_eq!(read("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            read("10").unwrap_err().to_string(),
            r#"invalid duration "10": missing unit; write it like "10s", "500ms" or "1m30s""#
        );
    }

    #[test]
    fn serde_duration_rejects_non_strings() {
        let error =
            serde_duration::deserialize(IntoDeserializer::<ValueError>::into_deserializer(42u64))
                .unwrap_err()
                .to_string();
        assert!(
            error.contains(r#"expected a duration string like "10s""#),
            "{error}"
        );
    }

    #[test]
    fn serde_duration_opt_reads_null_and_strings() {
        let none = serde_duration_opt::deserialize(UnitDeserializer::<ValueError>::new());
        assert_eq!(none, Ok(None));
        let read = |s| serde_duration_opt::deserialize(StrDeserializer::<ValueError>::new(s));
        assert_eq!(read("250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(
            read("-1s").unwrap_err().to_string(),
            r#"invalid duration "-1s": durations must be non-negative"#
        );
    }

    #[test]
    fn leading_whole_days_parse_to_the_expected_value() {
        let day = Duration::from_secs(86_400);
        let cases = [
            ("30d", day * 30),
            ("1d", day),
            ("0d", Duration::ZERO),
            ("007d", day * 7),
            ("1d12h", day + Duration::from_secs(12 * 3_600)),
            ("1d1.5h", day + Duration::from_secs(5_400)),
            ("2d30m15s", day * 2 + Duration::from_secs(1_815)),
            ("1d0s", day),
            ("1d.5s", day + Duration::from_millis(500)),
            // Without days it is exactly parse_duration.
            ("36h", Duration::from_secs(36 * 3_600)),
            ("0", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            ("-0s", Duration::ZERO),
            ("106751d23h47m16.854775807s", MAX_DURATION),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration_days(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn misplaced_or_unknown_units_with_days_are_rejected_with_a_helpful_message() {
        let misplaced =
            r#"days must come first, as a whole number; write it like "30d" or "1d12h""#;
        let cases = [
            ("1h1d", misplaced),
            ("1.5d", misplaced),
            ("1d1d", misplaced),
            ("1d2h3d", misplaced),
            (
                "30days",
                r#"invalid duration "30days": unknown unit "days"; use d (whole days, first), h, m, s, ms, us, µs or ns"#,
            ),
            ("1dh", r#"unknown unit "dh"; use d (whole days"#),
            ("30x", r#"unknown unit "x"; use d (whole days"#),
            ("1d5x", r#"unknown unit "x"; use d (whole days"#),
            ("1d12", "missing unit"),
            ("d", "expected a number at byte 0"),
            ("", "empty"),
            ("-1d", "non-negative"),
            ("1d-1h", r#"unknown unit "d-""#),
            ("106752d", "longer than the maximum"),
            ("106751d23h47m16.854775808s", "longer than the maximum"),
            ("99999999999999999999d", "longer than the maximum"),
        ];
        for (input, message) in cases {
            let error = parse_duration_days(input).expect_err(input).to_string();
            assert!(
                error.contains(message),
                "{input:?}: {error:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn durations_with_days_format_days_first() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::from_secs(86_399), "23h59m59s"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(30 * 86_400), "30d"),
            (Duration::from_secs(86_400 + 12 * 3_600), "1d12h"),
            (Duration::from_millis(86_400_500), "1d500ms"),
            (MAX_DURATION, "106751d23h47m16.854775807s"),
        ];
        for (d, expected) in cases {
            assert_eq!(format_duration_days(d), expected, "{d:?}");
        }
    }

    #[test]
    fn serde_duration_days_writes_and_reads_the_string_form() {
        struct Written(Duration);
        impl fmt::Display for Written {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                serde_duration_days::serialize(&self.0, f)
            }
        }
        assert_eq!(Written(Duration::from_secs(30 * 86_400)).to_string(), "30d");
        let read = |s| serde_duration_days::deserialize(StrDeserializer::<ValueError>::new(s));
        assert_eq!(read("1d12h"), Ok(Duration::from_secs(129_600)));
        assert!(
            read("1h1d")
                .unwrap_err()
                .to_string()
                .contains("days must come first")
        );
    }

    /// Durations made of round components, as people write them.
    fn round_duration() -> impl Strategy<Value = Duration> {
        (
            0u64..1_000,
            0u64..60,
            0u64..60,
            prop_oneof![Just(0u32), (0u32..1_000).prop_map(|ms| ms * 1_000_000)],
        )
            .prop_map(|(h, m, s, nanos)| Duration::new(h * 3_600 + m * 60 + s, nanos))
    }

    proptest! {
        #[test]
        fn formatted_durations_parse_back_exactly(n in 0..=MAX_NANOS) {
            let d = nanos(n);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn formatted_round_durations_parse_back_exactly(d in round_duration()) {
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn concatenated_durations_parse_to_their_sum(a in round_duration(), b in round_duration()) {
            let joined = format!("{}{}", format_duration(a), format_duration(b));
            prop_assert_eq!(parse_duration(&joined), Ok(a + b));
        }

        #[test]
        fn days_formatted_durations_parse_back_exactly(n in 0..=MAX_NANOS) {
            let d = nanos(n);
            prop_assert_eq!(parse_duration_days(&format_duration_days(d)), Ok(d));
        }

        #[test]
        fn day_counts_add_to_go_durations(days in 0u64..10_000, d in round_duration()) {
            let rest = format_duration(d);
            let expected = Duration::from_secs(days * 86_400) + d;
            prop_assert_eq!(parse_duration_days(&format!("{days}d{rest}")), Ok(expected));
        }

        #[test]
        fn without_days_both_parsers_agree(s in "\\PC{0,12}|[0-9.+-]{0,8}[nuµμmsh]{0,2}") {
            if !s.contains('d') {
                prop_assert_eq!(parse_duration_days(&s).ok(), parse_duration(&s).ok());
            }
        }

        #[test]
        fn parsing_arbitrary_text_with_days_never_panics(s in "[0-9]{0,6}d?[0-9.dhms]{0,8}") {
            if let Ok(d) = parse_duration_days(&s) {
                prop_assert!(d <= MAX_DURATION);
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics_or_exceeds_the_maximum(s in "\\PC{0,12}|[0-9.+-]{0,8}[nuµμmsh]{0,2}") {
            if let Ok(d) = parse_duration(&s) {
                prop_assert!(d <= MAX_DURATION);
            }
        }
    }
}
