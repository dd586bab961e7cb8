//! Frame decompression: gzip (magic `1f 8b`), zlib, or plain JSON, with a size cap.
//!
//! One [`Inflater`] lives per connection and reuses its decompressors and output buffer:
//! a fresh `GzDecoder` per frame would allocate ~32 KB of window each time.

use flate2::{Decompress, FlushDecompress, Status};

use crate::venue::DecodeError;

pub struct Inflater {
    /// Raw deflate, for gzip members (we parse the gzip header and trailer ourselves).
    raw: Decompress,
    zlib: Decompress,
    buf: Vec<u8>,
    limit: usize,
}

impl Inflater {
    pub fn new(limit: usize) -> Inflater {
        Inflater {
            raw: Decompress::new(false),
            zlib: Decompress::new(true),
            buf: Vec::with_capacity(16 * 1024),
            limit,
        }
    }

    /// The JSON bytes of a binary frame: inflated gzip or zlib, or the frame itself when it
    /// is already plain JSON.
    pub fn inflate<'a>(&'a mut self, data: &'a [u8]) -> Result<&'a [u8], DecodeError> {
        if data.starts_with(&[0x1f, 0x8b]) {
            let body = gzip_body(data)?;
            self.raw.reset(false);
            let used = run(&mut self.raw, body, &mut self.buf, self.limit)?;
            let t = body
                .get(used..used + 8)
                .ok_or_else(|| DecodeError::Corrupt("gzip trailer missing".into()))?;
            let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
            let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
            if crc32fast::hash(&self.buf) != crc {
                return Err(DecodeError::Corrupt("gzip CRC mismatch".into()));
            }
            if self.buf.len() as u32 != size {
                return Err(DecodeError::Corrupt("gzip length mismatch".into()));
            }
            Ok(&self.buf)
        } else if matches!(data.first(), Some(b'{') | Some(b'[')) {
            if data.len() > self.limit {
                return Err(DecodeError::TooLarge { limit: self.limit });
            }
            Ok(data)
        } else {
            self.zlib.reset(true);
            run(&mut self.zlib, data, &mut self.buf, self.limit)?;
            Ok(&self.buf)
        }
    }
}

/// Splits a gzip member into its deflate body; the trailer follows the body.
fn gzip_body(data: &[u8]) -> Result<&[u8], DecodeError> {
    let bad = |m: &str| DecodeError::Corrupt(format!("gzip header: {m}"));
    if data.len() < 18 {
        return Err(bad("frame too short"));
    }
    if data[2] != 8 {
        return Err(bad("compression method is not deflate"));
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return Err(bad("reserved flags set"));
    }
    let mut pos = 10usize;
    if flags & 0x04 != 0 {
        let xlen = u16::from_le_bytes([
            *data.get(pos).ok_or_else(|| bad("truncated extra field"))?,
            *data
                .get(pos + 1)
                .ok_or_else(|| bad("truncated extra field"))?,
        ]) as usize;
        pos += 2 + xlen;
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            let end = data
                .get(pos..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
                .ok_or_else(|| bad("unterminated name or comment"))?;
            pos += end + 1;
        }
    }
    if flags & 0x02 != 0 {
        pos += 2;
    }
    data.get(pos..).ok_or_else(|| bad("truncated"))
}

/// Inflates `input` into `out` (cleared first), at most `limit` bytes. Returns input bytes used.
fn run(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, DecodeError> {
    out.clear();
    let start_in = d.total_in();
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            let grow = out.capacity().max(4096).min(limit + 1 - out.len());
            out.reserve(grow);
        }
        let used = (d.total_in() - start_in) as usize;
        let before = (used, out.len());
        let status = d
            .decompress_vec(&input[used..], out, FlushDecompress::Finish)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        let used_now = (d.total_in() - start_in) as usize;
        match status {
            Status::StreamEnd => return Ok(used_now),
            Status::Ok | Status::BufError => {
                if (used_now, out.len()) == before && out.len() < out.capacity() {
                    return Err(DecodeError::Corrupt("truncated compressed stream".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_zlib_plain_and_reuse() {
        let mut inf = Inflater::new(1 << 20);
        let a = br#"{"ping":1621418174969}"#;
        let b = br#"{"channel":"market_btcusdt_trade_ticker","tick":{"data":[]}}"#;
        assert_eq!(inf.inflate(&gzip(a)).unwrap(), a);
        assert_eq!(inf.inflate(&zlib(b)).unwrap(), b);
        assert_eq!(inf.inflate(&gzip(b)).unwrap(), b);
        assert_eq!(inf.inflate(a).unwrap(), a);
        // a frame larger than the initial buffer
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(100_000));
        assert_eq!(inf.inflate(&gzip(big.as_bytes())).unwrap(), big.as_bytes());
    }

    #[test]
    fn bomb_is_rejected_and_inflater_recovers() {
        let mut inf = Inflater::new(64 * 1024);
        let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            inf.inflate(&bomb),
            Err(DecodeError::TooLarge { limit: 64 * 1024 })
        );
        assert_eq!(inf.inflate(&gzip(b"{}")).unwrap(), b"{}");
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let mut inf = Inflater::new(1 << 20);
        let good = gzip(br#"{"ping":1}"#);
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 8] ^= 0xff; // CRC
        assert!(matches!(
            inf.inflate(&flipped),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            inf.inflate(&good[..good.len() - 6]),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            inf.inflate(&good[..12]),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            inf.inflate(b"\x00\x01garbage"),
            Err(DecodeError::Corrupt(_))
        ));
        assert_eq!(inf.inflate(&good).unwrap(), br#"{"ping":1}"#);
    }
}
