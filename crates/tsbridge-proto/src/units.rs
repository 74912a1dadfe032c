//! The two unit notations users write: durations (`"5s"`, `"500ms"`,
//! `"1m30s"`, or a bare number of milliseconds in a request) and sizes
//! (`"16MiB"`, `"1GiB"`, `"512KB"`, or a bare number of bytes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A notation that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseUnitError {
    #[error(
        "invalid duration {0:?}: expected e.g. \"500ms\", \"5s\", \"2m\", \"1h30m\" or a number of milliseconds"
    )]
    Duration(String),
    #[error(
        "invalid size {0:?}: expected e.g. \"512KiB\", \"16MiB\", \"1GiB\" or a number of bytes"
    )]
    Size(String),
}

/// A duration as written in config (`"5s"`) or in a request (`5000` ms or `"5s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    pub fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl From<Duration> for DurationSpec {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for DurationSpec {
    type Err = ParseUnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h30m"`, `"3d"`, or a bare
/// integer of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseUnitError> {
    let err = || ParseUnitError::Duration(s.to_owned());
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = rest[unit_end..].trim_start();
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86400.0,
            _ => return Err(err()),
        };
        total += n * secs;
    }
    if !total.is_finite() || !(0.0..=1e12).contains(&total) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way the config writes it (`"1500ms"`, `"5s"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            F(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(Self::from_millis(ms)),
            // `try_`: a number past Duration's range (1e23 ms) is an error,
            // never a panic in the request handler.
            Raw::F(f) => Duration::try_from_secs_f64(f / 1000.0)
                .map(Self)
                .map_err(|_| serde::de::Error::custom(ParseUnitError::Duration(f.to_string()))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A size in bytes, as written in config (`"16MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseUnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseUnitError::Size(s.to_owned());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        if split == 0 {
            return Err(err());
        }
        let n: f64 = t[..split].parse().map_err(|_| err())?;
        let mult: u64 = match t[split..].trim() {
            "" | "B" | "b" => 1,
            "K" | "KB" | "kB" | "k" => 1000,
            "KiB" | "Ki" => 1 << 10,
            "M" | "MB" => 1000 * 1000,
            "MiB" | "Mi" => 1 << 20,
            "G" | "GB" => 1000 * 1000 * 1000,
            "GiB" | "Gi" => 1 << 30,
            "T" | "TB" => 1000u64.pow(4),
            "TiB" | "Ti" => 1 << 40,
            _ => return Err(err()),
        };
        let v = n * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Self(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("1500"), Duration::from_millis(1500));
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in ["", "s", "5x", "-1s", "5 s s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let v: DurationSpec = serde_json::from_str("2500").unwrap();
        assert_eq!(v.0, Duration::from_millis(2500));
        let v: DurationSpec = serde_json::from_str("\"2s\"").unwrap();
        assert_eq!(v.0, Duration::from_secs(2));
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"2s\"");
        assert!(serde_json::from_str::<DurationSpec>("\"soon\"").is_err());
        // Out of Duration's range, negative or not a number: errors, not panics.
        for bad in ["1e23", "-5", "-0.5", "1e400"] {
            assert!(serde_json::from_str::<DurationSpec>(bad).is_err(), "{bad}");
        }
        let v: DurationSpec = serde_json::from_str("1.5").unwrap();
        assert_eq!(v.0, Duration::from_micros(1500));
    }

    #[test]
    fn sizes() {
        let s = |x: &str| x.parse::<ByteSize>().unwrap().0;
        assert_eq!(s("16MiB"), 16 << 20);
        assert_eq!(s("1GiB"), 1 << 30);
        assert_eq!(s("512KB"), 512_000);
        assert_eq!(s("100"), 100);
        assert_eq!(s("1.5KiB"), 1536);
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("12XB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(16 << 20).to_string(), "16MiB");
        let v: ByteSize = serde_json::from_str("\"256MiB\"").unwrap();
        assert_eq!(v.0, 256 << 20);
    }
}
