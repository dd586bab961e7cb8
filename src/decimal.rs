//! Exact decimal numbers as canonical text.
//!
//! Exchanges send prices as JSON numbers or strings with up to 30+ digits. Nothing on the path
//! from the socket to the database may round them, so the recorder never goes through `f64`
//! or a fixed-precision type: a [`Dec`] is the exchange's digits in one canonical spelling
//! (no exponent, no sign on zero, no leading or trailing zeros). PostgreSQL receives that text
//! and casts it to `NUMERIC`; SQLite gets a number when the number is exact (see `store::sqlite`).

use std::fmt;

use compact_str::CompactString;

/// Longest canonical text accepted; bounds memory for hostile exponents like `1e999999`.
const MAX_LEN: usize = 120;

/// Equality is numeric equality, since the spelling is canonical; ordering is numeric too.
/// Held inline up to 24 bytes (every price and quantity a venue sends in practice), so
/// parsing one allocates nothing; longer spellings go to the heap.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dec(CompactString);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecError {
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    #[error("decimal number too long: {0} characters")]
    TooLong(usize),
}

impl Dec {
    /// Parses a decimal in JSON-number syntax (also `+x`, `.5`, `5.`), keeping every digit.
    pub fn parse(text: &str) -> Result<Dec, DecError> {
        if text.len() <= MAX_LEN {
            if is_canonical(text) {
                return Ok(Dec(CompactString::new(text)));
            }
            if let Some(d) = strip_zeros(text) {
                return Ok(d);
            }
        }
        Dec::parse_general(text)
    }

    /// Any spelling, exponents included.
    fn parse_general(text: &str) -> Result<Dec, DecError> {
        let syntax = || DecError::Syntax(text.chars().take(64).collect());
        let (neg, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(i) => {
                let e = &body[i + 1..];
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty()
                    || digits.len() > 4
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(syntax());
                }
                let v: i64 = e.parse().map_err(|_| syntax())?;
                (&body[..i], v)
            }
            None => (body, 0),
        };
        let (int_part, frac_part) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if int_part.len() + frac_part.len() == 0
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(syntax());
        }
        // value = 0.<digits> * 10^point
        let mut digits: Vec<u8> = Vec::with_capacity(int_part.len() + frac_part.len());
        digits.extend_from_slice(int_part.as_bytes());
        digits.extend_from_slice(frac_part.as_bytes());
        let mut point = int_part.len() as i64 + exp;
        let leading = digits.iter().take_while(|&&b| b == b'0').count();
        digits.drain(..leading);
        point -= leading as i64;
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Dec(CompactString::const_new("0")));
        }
        let rendered_len = digits.len() as i64 + point.unsigned_abs() as i64 + 3;
        if rendered_len > MAX_LEN as i64 {
            return Err(DecError::TooLong(rendered_len as usize));
        }
        let mut out = CompactString::with_capacity(rendered_len as usize);
        if neg {
            out.push('-');
        }
        let n = digits.len() as i64;
        // digits are ASCII, checked above
        let d = std::str::from_utf8(&digits).map_err(|_| syntax())?;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(d);
        } else if point >= n {
            out.push_str(d);
            out.extend(std::iter::repeat_n('0', (point - n) as usize));
        } else {
            out.push_str(&d[..point as usize]);
            out.push('.');
            out.push_str(&d[point as usize..]);
        }
        Ok(Dec(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Heap bytes this value owns (0 for the inline common case).
    pub fn heap_bytes(&self) -> usize {
        if self.0.is_heap_allocated() {
            self.0.capacity()
        } else {
            0
        }
    }

    pub fn is_zero(&self) -> bool {
        &*self.0 == "0"
    }

    /// Nearest `f64` (correctly rounded); for display and SQL, never for storage decisions alone.
    pub fn to_f64(&self) -> f64 {
        // canonical text is always valid float syntax
        self.0.parse().unwrap_or(f64::NAN)
    }

    /// The value as SQLite should hold it for numeric SQL, and whether that holding is exact
    /// (the canonical text can be recovered from it).
    pub fn to_sqlite_number(&self) -> SqliteNumber {
        if !self.0.contains('.')
            && let Ok(i) = self.0.parse::<i64>()
        {
            return SqliteNumber::Integer(i);
        }
        let f = self.to_f64();
        // Up to 15 significant digits (DBL_DIG) within a modest magnitude, distinct decimals
        // are distinct doubles, so the double's shortest spelling is this one: no need to
        // print it. Longer ones are printed and compared: Rust prints an f64 in its shortest
        // round-trip form, which is canonical `Dec` spelling (no exponent, no trailing zeros).
        let exact = if self.0.len() <= 32 && self.significant_digits() <= 15 {
            true
        } else {
            f.is_finite() && format!("{f}") == self.0.as_str()
        };
        SqliteNumber::Real { value: f, exact }
    }

    /// The decimal whose shortest round-trip spelling is `f`'s (None for NaN/inf).
    pub fn from_f64_shortest(f: f64) -> Option<Dec> {
        if !f.is_finite() {
            return None;
        }
        Dec::parse(&format!("{f}")).ok()
    }

    /// Count of significant digits (16+ digits do not fit an f64).
    pub fn significant_digits(&self) -> usize {
        // canonical: no leading zeros but "0." before a fraction, no trailing fraction zeros
        let b = self.0.as_bytes();
        let first = b.iter().position(|c| matches!(c, b'1'..=b'9'));
        let Some(first) = first else { return 1 };
        let digits = b[first..].iter().filter(|c| c.is_ascii_digit());
        if b.contains(&b'.') {
            digits.count()
        } else {
            let last = b
                .iter()
                .rposition(|c| matches!(c, b'1'..=b'9'))
                .unwrap_or(first);
            b[first..=last].len()
        }
    }
}

/// Fast path: `-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?`, not `-0`: already canonical.
fn is_canonical(t: &str) -> bool {
    let b = t.strip_prefix('-').unwrap_or(t).as_bytes();
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) || (int.len() > 1 && int[0] == b'0') {
        return false;
    }
    match frac {
        None => !(t.starts_with('-') && int == b"0"),
        Some(f) => !f.is_empty() && f.iter().all(u8::is_ascii_digit) && f.last() != Some(&b'0'),
    }
}

/// Second path: plain `[+-]?digits[.digits]` with extra leading or trailing zeros, as servers
/// pad amounts (`0.2690300000000000`); no allocation when the result is short. None for
/// anything else.
fn strip_zeros(t: &str) -> Option<Dec> {
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.len() + frac.len() == 0
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        return Some(Dec(CompactString::const_new("0")));
    }
    let int = if int.is_empty() { "0" } else { int };
    let len = neg as usize + int.len() + if frac.is_empty() { 0 } else { frac.len() + 1 };
    let mut s = CompactString::with_capacity(len);
    if neg {
        s.push('-');
    }
    s.push_str(int);
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    Some(Dec(s))
}

/// How a decimal is held in a SQLite cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SqliteNumber {
    Integer(i64),
    Real { value: f64, exact: bool },
}

impl Ord for Dec {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let (an, a) = split_sign(&self.0);
        let (bn, b) = split_sign(&other.0);
        match (an, bn) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => cmp_magnitude(a, b),
            (true, true) => cmp_magnitude(b, a),
        }
    }
}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn split_sign(s: &str) -> (bool, &str) {
    match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    }
}

/// Compares two canonical non-negative spellings by value.
fn cmp_magnitude(a: &str, b: &str) -> std::cmp::Ordering {
    let (ai, af) = a.split_once('.').unwrap_or((a, ""));
    let (bi, bf) = b.split_once('.').unwrap_or((b, ""));
    // no leading zeros in canonical integer parts, so longer means larger
    ai.len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(bi))
        .then_with(|| af.cmp(bf))
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dec({})", self.0)
    }
}

impl std::str::FromStr for Dec {
    type Err = DecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dec::parse(s)
    }
}

impl From<rust_decimal::Decimal> for Dec {
    fn from(d: rust_decimal::Decimal) -> Self {
        // Decimal's Display is plain decimal syntax; normalize() drops trailing zeros.
        Dec::parse(&d.normalize().to_string())
            .unwrap_or_else(|_| Dec(CompactString::const_new("0")))
    }
}

impl serde::Serialize for Dec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Dec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Dec::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_spellings_live_inline_long_ones_on_the_heap() {
        for t in [
            "86650.65",
            "0.2690300000000000",
            "23311.6243695",
            "-0.00000001",
            "1e-8",
        ] {
            assert!(!Dec::parse(t).unwrap().0.is_heap_allocated(), "{t}");
        }
        let long = "12345678901234567890.123456789012345678";
        let d = Dec::parse(long).unwrap();
        assert!(d.0.is_heap_allocated());
        assert_eq!(d.as_str(), long);
        assert_eq!(std::mem::size_of::<Dec>(), 24);
    }

    #[test]
    fn canonical_spellings() {
        let table = [
            ("9744.2500000000000000", "9744.25"),
            ("472.07373000000000000000000000000000", "472.07373"),
            ("0.0010000000000000", "0.001"),
            ("000123", "123"),
            ("-0.000", "0"),
            ("+1.5", "1.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e-8", "0.00000001"),
            ("1.5E3", "1500"),
            (
                "12345678901234567890.123456789012345678",
                "12345678901234567890.123456789012345678",
            ),
            ("-86691.94", "-86691.94"),
            ("100", "100"),
            ("0", "0"),
        ];
        for (input, want) in table {
            assert_eq!(Dec::parse(input).unwrap().as_str(), want, "input {input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "-", ".", "1.2.3", "abc", "1e", "1e99999", "0x10", "1,5", " 1", "NaN", "1e-",
        ] {
            assert!(Dec::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(matches!(Dec::parse("1e900"), Err(DecError::TooLong(_))));
    }

    #[test]
    fn sqlite_number_knows_when_f64_is_exact() {
        assert_eq!(
            Dec::parse("42").unwrap().to_sqlite_number(),
            SqliteNumber::Integer(42)
        );
        match Dec::parse("86691.94").unwrap().to_sqlite_number() {
            SqliteNumber::Real { value, exact } => {
                assert!(exact);
                assert_eq!(value, 86691.94);
            }
            other => panic!("{other:?}"),
        }
        match Dec::parse("21340.087950400000000123")
            .unwrap()
            .to_sqlite_number()
        {
            SqliteNumber::Real { exact, .. } => assert!(!exact),
            other => panic!("{other:?}"),
        }
        // too large for i64: a REAL, not exact
        match Dec::parse("99999999999999999999999")
            .unwrap()
            .to_sqlite_number()
        {
            SqliteNumber::Real { exact, .. } => assert!(!exact),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exactness_without_printing_agrees_with_printing() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..200_000 {
            let int: String = (0..rng.usize(0..12)).map(|_| rng.digit(10)).collect();
            let frac: String = (0..rng.usize(0..14)).map(|_| rng.digit(10)).collect();
            let sign = if rng.bool() { "-" } else { "" };
            let Ok(d) = Dec::parse(&format!("{sign}{int}0.{frac}1")) else {
                continue;
            };
            let printed = {
                let f = d.to_f64();
                f.is_finite() && format!("{f}") == d.as_str()
            };
            match d.to_sqlite_number() {
                SqliteNumber::Real { exact, value } => {
                    assert_eq!(exact, printed, "{d}");
                    assert_eq!(value, d.to_f64());
                }
                SqliteNumber::Integer(_) => unreachable!("{d} has a fraction"),
            }
        }
    }

    #[test]
    fn fast_paths_agree_with_the_general_parser() {
        let mut rng = fastrand::Rng::with_seed(9);
        let alphabet = b"0000123456789..-+eE";
        for _ in 0..200_000 {
            let n = rng.usize(1..12);
            let t: String = (0..n)
                .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                .collect();
            assert_eq!(Dec::parse(&t), Dec::parse_general(&t), "input {t:?}");
        }
    }

    #[test]
    fn numeric_order() {
        let mut v: Vec<Dec> = [
            "10",
            "9.99",
            "-1",
            "0",
            "0.5",
            "0.51",
            "-0.5",
            "100.000001",
            "-10",
        ]
        .iter()
        .map(|s| Dec::parse(s).unwrap())
        .collect();
        v.sort();
        let got: Vec<&str> = v.iter().map(Dec::as_str).collect();
        assert_eq!(
            got,
            [
                "-10",
                "-1",
                "-0.5",
                "0",
                "0.5",
                "0.51",
                "9.99",
                "10",
                "100.000001"
            ]
        );
    }

    #[test]
    fn significant_digits() {
        assert_eq!(Dec::parse("0.00012345").unwrap().significant_digits(), 5);
        assert_eq!(Dec::parse("1200").unwrap().significant_digits(), 2);
        assert_eq!(
            Dec::parse("21340.0879504000000001")
                .unwrap()
                .significant_digits(),
            21
        );
    }
}
