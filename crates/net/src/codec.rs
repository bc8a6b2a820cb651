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
    let len = unsigned_varint::aio::read_u64(&mut *io).await.map_err(|e| match e {
        unsigned_varint::io::ReadError::Io(e) => e,
        other => {
            io::Error::new(io::ErrorKind::InvalidData, format!("Malformed: frame length: {other}"))
        }
    })?;
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
