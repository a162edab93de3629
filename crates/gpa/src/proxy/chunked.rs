//! The chunked transfer coding (RFC 9112 §7.1) as a pure, resumable decoder: the proxy uses it to read
//! chunked request bodies (which it re-encodes) and to find the end of chunked responses (which it relays
//! byte for byte).
//!
//! Strict where a lenient reader could disagree with the host about where a body ends: hex sizes of at most 16
//! digits, only `BWS ;` before an extension, CRLF everywhere (a bare LF is an error), bounded extension and
//! trailer lines. This decoder must never panic, buffer, or accept a body another reader would end elsewhere.

use std::ops::Range;

use super::limits::{MAX_CHUNK_LINE, MAX_TRAILERS};

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size is not 1 to 16 hex digits")]
    Size,
    #[error("malformed or oversized chunk extension")]
    Extension,
    #[error("chunk line not ended by CRLF")]
    LineEnding,
    #[error("trailer section too large")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size {
        digits: u8,
        value: u64,
    },
    /// After the size: `BWS` until `;`, then the extension until CR.
    Ext {
        semicolon: bool,
    },
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// What one [`ChunkedDecoder::decode`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input used; the rest belongs to a later call (or, when `done`, to the next message).
    pub consumed: usize,
    /// Body bytes found, as a range of the input (possibly empty).
    pub data: Range<usize>,
    /// The last chunk and the trailer section are complete.
    pub done: bool,
}

/// A resumable chunked-body decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk whose size line is being read.
    size: u64,
    line: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            size: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` until it finds body bytes, finishes, or runs out of input.
    pub fn decode(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                State::Size { digits, value } => match hex_value(b) {
                    Some(h) => {
                        if digits >= 16 {
                            return Err(ChunkError::Size);
                        }
                        self.state = State::Size {
                            digits: digits + 1,
                            value: (value << 4) | u64::from(h),
                        };
                    }
                    None if digits == 0 => return Err(ChunkError::Size),
                    None => {
                        self.size = value;
                        self.line = 0;
                        self.state = State::Ext { semicolon: false };
                        continue; // the same byte starts the extension part
                    }
                },
                State::Ext { semicolon } => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError::Extension);
                    }
                    match b {
                        b'\r' => {
                            self.state = State::SizeLf;
                        }
                        b'\n' => return Err(ChunkError::LineEnding),
                        b';' => self.state = State::Ext { semicolon: true },
                        b' ' | b'\t' => {}
                        _ if semicolon && (b >= 0x21 && b != 0x7f) => {}
                        _ => return Err(ChunkError::Extension),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::LineEnding);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                }
                State::Data(remaining) => {
                    let available = (input.len() - i) as u64;
                    let n = remaining.min(available);
                    let end = i + usize::try_from(n).unwrap_or(usize::MAX);
                    self.state = if n == remaining {
                        State::DataCr
                    } else {
                        State::Data(remaining - n)
                    };
                    return Ok(Progress {
                        consumed: end,
                        data: i..end,
                        done: false,
                    });
                }
                State::DataCr => self.expect(b, b'\r', State::DataLf)?,
                State::DataLf => self.expect(
                    b,
                    b'\n',
                    State::Size {
                        digits: 0,
                        value: 0,
                    },
                )?,
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err(ChunkError::LineEnding),
                    _ => {
                        self.line = 0;
                        self.trailer_byte()?;
                        self.state = State::Trailer;
                    }
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError::LineEnding),
                    _ => self.trailer_byte()?,
                },
                State::TrailerLf => self.expect(b, b'\n', State::TrailerStart)?,
                State::EndLf => {
                    self.expect(b, b'\n', State::Done)?;
                    return Ok(Progress {
                        consumed: i + 1,
                        data: i + 1..i + 1,
                        done: true,
                    });
                }
                State::Done => break,
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            data: i..i,
            done: self.state == State::Done,
        })
    }

    fn expect(&mut self, b: u8, want: u8, next: State) -> Result<(), ChunkError> {
        if b == want {
            self.state = next;
            Ok(())
        } else {
            Err(ChunkError::LineEnding)
        }
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        self.trailers += 1;
        if self.line > MAX_CHUNK_LINE || self.trailers > MAX_TRAILERS {
            Err(ChunkError::Trailers)
        } else {
            Ok(())
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body and the bytes consumed.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut at = 0;
        let mut fed = 0;
        while !d.is_done() {
            fed = (fed + step).min(input.len());
            let p = d.decode(&input[at..fed])?;
            body.extend_from_slice(&input[at..fed][p.data.clone()]);
            at += p.consumed;
            if p.consumed == 0 && fed == input.len() {
                break;
            }
        }
        Ok((body, at))
    }

    #[test]
    fn decodes_in_any_split() {
        let wire = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (body, used) = decode_all(wire, step).unwrap();
            assert_eq!(body, b"hello0123456789", "step {step}");
            assert_eq!(&wire[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn refuses_what_readers_could_disagree_on() {
        let bad: [(&[u8], ChunkError); 8] = [
            (b"\r\n", ChunkError::Size),
            (b"x\r\n", ChunkError::Size),
            (b"11111111111111111\r\n", ChunkError::Size),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::LineEnding),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::LineEnding),
            (b"5 x\r\nhello\r\n", ChunkError::Extension),
            (b"0\r\n\n", ChunkError::LineEnding),
            (b"0\r\nX: 1\n\r\n", ChunkError::LineEnding),
        ];
        for (wire, want) in bad {
            assert_eq!(
                decode_all(wire, 64).unwrap_err(),
                want,
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE], b"\r\n"].concat();
        assert_eq!(
            decode_all(&long_ext, 4096).unwrap_err(),
            ChunkError::Extension
        );
    }

    #[test]
    fn sixteen_hex_digits_are_accepted_as_a_size() {
        let mut d = ChunkedDecoder::default();
        let p = d.decode(b"000000000000000A\r\n0123456789").unwrap();
        assert_eq!(p.data.len(), 10);
    }
}
