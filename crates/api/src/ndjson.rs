//! Splitting a byte stream into newline-delimited lines, with a bound on line length.

/// Longest line accepted (1 MiB, without its newline).
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;

/// A line longer than [`MAX_LINE_BYTES`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LineTooLong;

/// Bytes received and not yet returned as lines.
#[derive(Debug)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    max: usize,
}

impl Default for Lines {
    fn default() -> Self {
        Self::with_max(MAX_LINE_BYTES)
    }
}

impl Lines {
    /// Lines of at most `max` bytes.
    pub(crate) fn with_max(max: usize) -> Self {
        Self { buf: Vec::new(), scanned: 0, max }
    }

    /// The longest line taken.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its `\n` (and without a `\r` before it), if one arrived.
    pub(crate) fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if end > self.max {
                    return Err(LineTooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max { Err(LineTooLong) } else { Ok(None) }
            }
        }
    }

    /// What is left after the last newline, once the stream has ended.
    pub(crate) fn rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_chunks() {
        let mut lines = Lines::default();
        lines.push(b"{\"a\"");
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b":1}\n{\"b\":2}\r\n\n{\"c\"");
        assert_eq!(lines.next_line(), Ok(Some(b"{\"a\":1}".to_vec())));
        assert_eq!(lines.next_line(), Ok(Some(b"{\"b\":2}".to_vec())));
        assert_eq!(lines.next_line(), Ok(Some(Vec::new())));
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b":3}");
        assert_eq!(lines.next_line(), Ok(None));
        assert_eq!(lines.rest(), b"{\"c\":3}");
    }

    #[test]
    fn long_lines_are_refused() {
        let mut lines = Lines::default();
        lines.push(&vec![b'x'; MAX_LINE_BYTES]);
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"x");
        assert_eq!(lines.next_line(), Err(LineTooLong));

        let mut lines = Lines::default();
        let mut chunk = vec![b'x'; MAX_LINE_BYTES + 1];
        chunk.push(b'\n');
        lines.push(&chunk);
        assert_eq!(lines.next_line(), Err(LineTooLong));

        let mut lines = Lines::default();
        let mut chunk = vec![b'x'; MAX_LINE_BYTES];
        chunk.push(b'\n');
        lines.push(&chunk);
        assert_eq!(lines.next_line().unwrap().unwrap().len(), MAX_LINE_BYTES);
    }
}
