//! Decoding a chunked body (RFC 9112 §7.1) from the connection's buffer:
//! each call takes what the buffer holds of the next piece, handing data
//! on without a copy (a slice of the buffer's own allocation).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The longest chunk-size line (with its extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;

/// The most bytes of trailer fields accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes of it to come.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, before the trailer fields and final CRLF.
    Trailers,
    /// The body is complete.
    Done,
}

/// What one step gave.
#[derive(Debug)]
pub(super) enum Piece {
    /// Body data.
    Data(Bytes),
    /// The trailer fields (the body is complete after them).
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// The buffer holds nothing more to decode: read more.
    More,
}

impl Chunked {
    /// Decodes the next piece of `buf` (consuming what it used).
    pub(super) fn step(&mut self, buf: &mut BytesMut) -> Result<Piece, &'static str> {
        loop {
            match *self {
                Chunked::Size => {
                    let window = &buf[..buf.len().min(MAX_SIZE_LINE)];
                    let Some(end) = window.iter().position(|&b| b == b'\n') else {
                        if buf.len() >= MAX_SIZE_LINE {
                            return Err("its chunk-size line is too long");
                        }
                        return Ok(Piece::More);
                    };
                    let size = parse_size(&buf[..end])?;
                    buf.advance(end + 1);
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    let take = (buf.len() as u64).min(left);
                    *self = if take == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take)
                    };
                    return Ok(Piece::Data(buf.split_to(take as usize).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Piece::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("a chunk is longer than its size says");
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunked::Done;
                        return Ok(Piece::End);
                    }
                    if buf.len() < 2 {
                        return Ok(Piece::More);
                    }
                    return match trailers(buf)? {
                        Some(fields) => {
                            *self = Chunked::Done;
                            Ok(Piece::Trailers(fields))
                        }
                        None => Ok(Piece::More),
                    };
                }
                Chunked::Done => return Ok(Piece::End),
            }
        }
    }
}

/// A chunk-size line without its LF: hex digits, optional whitespace and
/// extensions (ignored), then CR.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    const BAD: &str = "its chunk-size line is not valid";
    let line = line.strip_suffix(b"\r").ok_or(BAD)?;
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    // Leading zeros are allowed; what is left must fit in 64 bits.
    let zeros = line[..digits].iter().take_while(|&&d| d == b'0').count();
    if digits == 0 || digits - zeros > 16 {
        return Err(BAD);
    }
    // Extensions are ignored, but must be text: no CR or other control
    // bytes that a server downstream could read as a line end.
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BAD);
    }
    if rest.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(BAD);
    }
    let mut size = 0u64;
    for &d in &line[zeros..digits] {
        let v = (d as char).to_digit(16).ok_or(BAD)?;
        size = size.checked_mul(16).ok_or(BAD)? | u64::from(v);
    }
    Ok(size)
}

/// The trailer fields at the start of `buf` and the blank line after them,
/// consumed; `None` until they are all there.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, &'static str> {
    let mut lines = [httparse::EMPTY_HEADER; 100];
    let (len, fields) = match httparse::parse_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete((len, fields))) => (len, fields),
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
            return Err("its trailer fields are larger than 16 KiB");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("its trailer fields are not valid"),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| "a trailer name is not valid")?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| "a trailer value is not valid")?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed `step` bytes at a time: the data, the trailers,
    /// and whether the end was reached.
    fn decode(
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), &'static str> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match state.step(&mut buf)? {
                Piece::Data(bytes) => data.extend_from_slice(&bytes),
                Piece::Trailers(map) => trailers = Some(map),
                Piece::End => return Ok((data, trailers, true)),
                Piece::More if fed == wire.len() => return Ok((data, trailers, false)),
                Piece::More => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunks_decode_to_their_data_however_the_bytes_arrive() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA  ;x\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers, ended) = decode(wire, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "fed {step} at a time");
            assert!(trailers.is_none());
            assert!(ended);
        }
    }

    #[test]
    fn trailer_fields_come_after_the_last_chunk() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 9\r\nx-more: 1\r\n\r\n";
        for step in [1, 4, wire.len()] {
            let (data, trailers, ended) = decode(wire, step).unwrap();
            assert_eq!(data, b"abc");
            let trailers = trailers.unwrap();
            assert_eq!(trailers["x-checksum"], "9");
            assert_eq!(trailers["x-more"], "1");
            assert!(ended);
        }
    }

    #[test]
    fn leading_zeros_in_a_size_are_only_zeros() {
        let (data, _, ended) = decode(b"00000000000000000005\r\nhello\r\n000\r\n\r\n", 3).unwrap();
        assert_eq!(data, b"hello");
        assert!(ended);
    }

    #[test]
    fn a_cut_off_body_does_not_end() {
        let (data, _, ended) = decode(b"5\r\nhel", 2).unwrap();
        assert_eq!(data, b"hel");
        assert!(!ended);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"-1\r\n",
            b"5 junk\r\nhello\r\n",
            b"3\r\nabcd\r\n",
            b"11111111111111111\r\n",
            b"5;a=\rb\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode(wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'0'; MAX_SIZE_LINE + 1];
        assert!(decode(&long, long.len()).is_err());
    }
}
