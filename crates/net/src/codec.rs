//! The `/capmesh/rpc/1.0.0` codec: one frame per direction, an unsigned-varint length then that
//! many bytes (one envelope). The length is checked against the cap before the body is read,
//! so an oversized frame costs the reader nothing. A zero-length response is an
//! acknowledgement (protocol.md §10.1); what the bytes mean is the caller's business.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The rpc protocol name.
pub const PROTOCOL_NAME: StreamProtocol = StreamProtocol::new("/capmesh/rpc/1.0.0");

/// Largest frame body accepted by default (1 MiB, the envelope cap).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Length-prefixed frames with a size cap. Not libp2p's cbor codec: that one decodes into serde
/// types with its own limits, while envelopes must be checked on the exact bytes received.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_frame: usize,
}

impl Codec {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

/// Reads one frame: refuses a length over `max` before reading the body, and a stream that ends
/// early.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let len = read_length(io).await?;
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TooLarge: frame of {len} bytes, at most {max}"),
        ));
    }
    let mut buf = vec![0; len as usize];
    io.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::UnexpectedEof, "Malformed: stream ended inside a frame")
        } else {
            e
        }
    })?;
    Ok(buf)
}

/// An unsigned-varint length as protocol.md §10.1 has it (multiformats: minimal, at most 9
/// bytes), read a byte at a time: one encoding per value, so a length in more bytes than it
/// needs (a last byte of zero) or in more than 9 bytes is Malformed. (unsigned-varint 0.8 also
/// reads a tenth byte, dropping the bits past 64: nine `80` then `02` came out as a length of 0.)
async fn read_length<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u64> {
    let malformed = |why: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("Malformed: frame length: {why}"))
    };
    let mut value = 0u64;
    for i in 0..9u32 {
        let mut byte = [0u8];
        io.read_exact(&mut byte).await?;
        let b = byte[0];
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(malformed("not minimal"));
            }
            return Ok(value);
        }
    }
    Err(malformed("more than 9 bytes"))
}

/// Writes one frame. Refuses to send what the other side must refuse.
pub async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    body: &[u8],
    max: usize,
) -> io::Result<()> {
    if body.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TooLarge: frame of {} bytes, at most {max}", body.len()),
        ));
    }
    let mut len = unsigned_varint::encode::u64_buffer();
    io.write_all(unsigned_varint::encode::u64(body.len() as u64, &mut len)).await?;
    io.write_all(body).await?;
    io.flush().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.max_frame).await?;
        if frame.is_empty() {
            // A zero-length frame is only an acknowledgement, never a request.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "Malformed: empty request"));
        }
        Ok(frame)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_frame).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_frame).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_frame).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip_including_the_empty_ack() {
        for body in [vec![], vec![7u8], vec![1u8; 300], vec![9u8; DEFAULT_MAX_FRAME]] {
            let mut out = Vec::new();
            block_on(write_frame(&mut out, &body, DEFAULT_MAX_FRAME)).unwrap();
            let back = block_on(read_frame(&mut Cursor::new(out), DEFAULT_MAX_FRAME)).unwrap();
            assert_eq!(back, body);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_is_read() {
        // Only the length prefix exists: a reader that tried to read the body would report
        // the stream ending early instead of TooLarge.
        let mut buf = unsigned_varint::encode::u64_buffer();
        let prefix = unsigned_varint::encode::u64(DEFAULT_MAX_FRAME as u64 + 1, &mut buf).to_vec();
        let err = block_on(read_frame(&mut Cursor::new(prefix), DEFAULT_MAX_FRAME)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().starts_with("TooLarge"), "{err}");
    }

    #[test]
    fn a_short_stream_and_a_bad_varint_are_malformed() {
        let short = vec![5u8, 1, 2];
        let err = block_on(read_frame(&mut Cursor::new(short), 100)).unwrap_err();
        assert!(err.to_string().starts_with("Malformed"), "{err}");
        // A non-minimal varint (0x80 0x00 encodes 0 in two bytes) is refused.
        let err = block_on(read_frame(&mut Cursor::new(vec![0x80u8, 0x00]), 100)).unwrap_err();
        assert!(err.to_string().starts_with("Malformed"), "{err}");
        // So is one in more than 9 bytes: nine 0x80 then 0x02 is not a length of 0 (found by the
        // rpc_frame fuzz target).
        for last in [0x01u8, 0x02, 0x7f] {
            let mut long = vec![0x80u8; 9];
            long.push(last);
            let err = block_on(read_frame(&mut Cursor::new(long), 100)).unwrap_err();
            assert!(err.to_string().contains("more than 9 bytes"), "{err}");
        }
        // The largest 9-byte length still reads (and is then too large).
        let mut buf = unsigned_varint::encode::u64_buffer();
        let max = unsigned_varint::encode::u64(u64::MAX >> 1, &mut buf).to_vec();
        assert_eq!(max.len(), 9);
        let err = block_on(read_frame(&mut Cursor::new(max), 100)).unwrap_err();
        assert!(err.to_string().starts_with("TooLarge"), "{err}");
    }

    #[test]
    fn an_empty_request_is_refused_and_an_oversized_write_never_leaves() {
        let mut codec = Codec::default();
        let mut io = Cursor::new(vec![0u8]);
        let err = block_on(libp2p::request_response::Codec::read_request(
            &mut codec,
            &PROTOCOL_NAME,
            &mut io,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("empty request"));
        let mut out = Vec::new();
        assert!(block_on(write_frame(&mut out, &[0u8; 11], 10)).is_err());
        assert!(out.is_empty());
    }
}
