//! Times on the wire: RFC 3339 in UTC, always with milliseconds and a `Z`
//! (`2026-01-01T12:00:00.250Z`, as JavaScript's `toISOString()` writes
//! them). The store keeps milliseconds, so a time cut there reads the same
//! whether it comes from a live event or from a replay.

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use serde::Serializer;

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// `t` as the API writes it.
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.format(FORMAT).to_string()
}

/// `#[serde(serialize_with)]` for a time (or a reference to one).
pub fn serialize<S: Serializer, T: Borrow<DateTime<Utc>>>(t: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.borrow().format(FORMAT))
}

/// `#[serde(serialize_with)]` for an optional time.
pub fn serialize_opt<S: Serializer, T: Borrow<DateTime<Utc>>>(
    t: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_always_and_cut_not_rounded() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        assert_eq!(
            rfc3339(&at("2026-11-27T21:29:54.159762836+00:00")),
            "2026-11-27T21:29:54.159Z"
        );
        assert_eq!(
            rfc3339(&at("2026-11-27T21:29:54Z")),
            "2026-11-27T21:29:54.000Z"
        );
        assert_eq!(
            rfc3339(&at("2026-11-27T23:29:54.9999+02:00")),
            "2026-11-27T21:29:54.999Z"
        );
        #[derive(serde::Serialize)]
        struct W(
            #[serde(serialize_with = "serialize")] DateTime<Utc>,
            #[serde(serialize_with = "serialize_opt")] Option<DateTime<Utc>>,
        );
        let t = at("2026-01-01T00:00:01.5Z");
        let v = serde_json::to_value(W(t, Some(t))).unwrap();
        assert_eq!(
            v,
            serde_json::json!(["2026-01-01T00:00:01.500Z", "2026-01-01T00:00:01.500Z"])
        );
        let v = serde_json::to_value(W(t, None)).unwrap();
        assert_eq!(v[1], serde_json::Value::Null);
    }
}
