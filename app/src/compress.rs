//! Response compression: gzip and brotli, computed once per cached body (tower-http's layer
//! would compress every response again), and the choice of encoding from `Accept-Encoding`.

use std::io::Write;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};

/// Bodies smaller than this are sent as they are: the gain would not pay for the work.
pub const MIN_SIZE: usize = 256;

/// brotli quality 5 and gzip level 6: most of the gain at a small part of the cost of the
/// highest settings (the miss path pays it once per entry).
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Brotli => Some("br"),
        }
    }

    /// The suffix this encoding adds inside an ETag's quotes: each encoding is its own
    /// representation, so it gets its own strong validator (RFC 9110 §8.8.3.3).
    pub fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Gzip => "-gz",
            Encoding::Brotli => "-br",
        }
    }
}

pub fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::new(6),
    );
    enc.write_all(body).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < body.len()).then(|| out.into())
}

pub fn brotli(body: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 3);
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, BROTLI_QUALITY, BROTLI_WINDOW);
        w.write_all(body).ok()?;
        w.flush().ok()?;
    }
    (out.len() < body.len()).then(|| out.into())
}

/// The q-value the client gives `coding` (`*` counts for codings not named), 0 if none.
fn quality(headers: &HeaderMap, coding: &str) -> f32 {
    let mut star = None;
    let mut named = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if name.eq_ignore_ascii_case(coding) {
                named = Some(q);
            } else if name == "*" {
                star = Some(q);
            }
        }
    }
    named.or(star).unwrap_or(0.0)
}

/// The best encoding the client accepts: brotli, then gzip, else identity.
pub fn negotiate(headers: &HeaderMap) -> Encoding {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return Encoding::Identity;
    }
    let br = quality(headers, "br");
    let gz = quality(headers, "gzip");
    if br > 0.0 && br >= gz {
        Encoding::Brotli
    } else if gz > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Read;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(v).expect("valid"),
        );
        h
    }

    #[test]
    fn negotiation_follows_q_values() {
        assert_eq!(negotiate(&HeaderMap::new()), Encoding::Identity);
        assert_eq!(negotiate(&accept("gzip, deflate, br")), Encoding::Brotli);
        assert_eq!(negotiate(&accept("gzip")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("br;q=0, gzip")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("br;q=0.5, gzip;q=0.9")), Encoding::Gzip);
        assert_eq!(negotiate(&accept("*")), Encoding::Brotli);
        assert_eq!(negotiate(&accept("identity")), Encoding::Identity);
        assert_eq!(negotiate(&accept("*;q=0, identity")), Encoding::Identity);
    }

    #[test]
    fn compressed_bodies_round_trip() {
        let body = "<p>hello, world</p>".repeat(100);
        let gz = gzip(body.as_bytes()).expect("smaller");
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .expect("gunzip");
        assert_eq!(out, body);
        let br = brotli(body.as_bytes()).expect("smaller");
        let mut out = String::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_string(&mut out)
            .expect("unbrotli");
        assert_eq!(out, body);
    }
}
