//! The `/capmesh/rpc/1.0.0` codec's frames (`capmesh-net::codec`).

use capmesh_net::codec::{DEFAULT_MAX_FRAME, read_frame, write_frame};
use futures::{executor::block_on, io::Cursor};

use crate::split;

/// A byte stream as a peer would send it, read as frames until it fails or ends. The first
/// byte picks the cap (the default 1 MiB, or a small one). Every frame read is within the cap,
/// and writing the frames read gives back exactly the bytes consumed (the length prefix has one
/// form); what the writer writes, the reader reads back.
pub fn rpc_frame(data: &[u8]) {
    let Some((pick, stream)) = split(data, 4) else { return };
    let max = [DEFAULT_MAX_FRAME, 0, 1, 200][usize::from(pick)];
    let mut input = Cursor::new(stream);
    let mut written = Vec::new();
    // At most as many frames as bytes: every frame takes at least its length byte.
    for _ in 0..=stream.len() {
        let Ok(frame) = block_on(read_frame(&mut input, max)) else { break };
        assert!(frame.len() <= max, "a frame over the cap was read");
        let mut one = Vec::new();
        block_on(write_frame(&mut one, &frame, max)).expect("a frame read can be written");
        let back = block_on(read_frame(&mut Cursor::new(&one), max)).expect("and read back");
        assert_eq!(back, frame);
        written.extend_from_slice(&one);
    }
    let consumed = usize::try_from(input.position()).expect("within the input");
    // A failed read may have consumed part of a frame; the frames read are a prefix of that.
    assert_eq!(&stream[..written.len()], written.as_slice(), "frames re-encode to their bytes");
    assert!(written.len() <= consumed);
}
