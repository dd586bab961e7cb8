//! Numbers as venues send them: JSON numbers or strings, read from their raw text into an
//! exact [`Dec`] or `i64`, never through `f64` (19-digit ids stay exact).

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::decimal::Dec;

/// A decimal sent as a JSON number or a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Num(pub Dec);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = unquote(raw).map_err(serde::de::Error::custom)?;
        Dec::parse(&text).map(Num).map_err(serde::de::Error::custom)
    }
}

/// An integer (id, timestamp) sent as a JSON number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = unquote(raw).map_err(serde::de::Error::custom)?;
        parse_int(&text).map(Int).map_err(serde::de::Error::custom)
    }
}

/// Raw JSON text of a number or string value, without quotes.
pub fn unquote(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    let t = raw.get();
    if t.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(t).map_err(|e| e.to_string())
    } else if t.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        Ok(Cow::Borrowed(t))
    } else {
        Err(format!(
            "expected a number or a numeric string, got {}",
            short(t)
        ))
    }
}

/// An integer, also from `1.79e12` or `"123.0"` spellings, exactly.
pub fn parse_int(text: &str) -> Result<i64, String> {
    if let Ok(v) = text.parse::<i64>() {
        return Ok(v);
    }
    let d = Dec::parse(text).map_err(|e| e.to_string())?;
    if d.as_str().contains('.') {
        return Err(format!("expected an integer, got {}", short(text)));
    }
    d.as_str()
        .parse::<i64>()
        .map_err(|_| format!("integer out of range: {}", short(text)))
}

pub fn short(t: &str) -> String {
    t.chars().take(48).collect()
}
