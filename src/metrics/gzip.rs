//! The compressed form in which the exposition is cached.
//!
//! Each cached piece of text is a [`Chunk`]: one gzip member (header, deflate data, CRC-32
//! and length trailer) and the length of the text it holds. Concatenated, the chunks of a
//! scrape are one valid multi-member gzip stream (RFC 1952 §2.2), which `/metrics` sends as
//! is to a client that accepts gzip; any other client gets it decompressed while it is sent
//! ([`TextReader`]), so both encodings come from one cache.

use bytes::{Buf, Bytes};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};

/// The gzip level of every cached chunk: the fastest level that still compresses the
/// per-key text well (measurements in BENCHMARKS.md, "/metrics scrape").
pub(crate) const GZIP_LEVEL: u32 = 2;

/// Text is rendered into a buffer of about this size, then handed to the compressor.
pub(crate) const RENDER_BUFFER: usize = 64 * 1024;

/// A piece of the exposition compressed on its own (see the module doc).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    /// One gzip member; empty for empty text.
    deflate: Bytes,
    text_len: u64,
}

impl Chunk {
    /// Compresses `text` into one chunk.
    pub(crate) fn compress(text: &[u8]) -> Chunk {
        let mut deflater = Deflater::new();
        deflater.write(text);
        deflater.finish()
    }

    /// Bytes of the text it holds.
    pub(crate) fn text_len(&self) -> u64 {
        self.text_len
    }

    /// Its compressed bytes (shared).
    #[cfg(test)]
    pub(crate) fn deflate(&self) -> &Bytes {
        &self.deflate
    }

    /// Bytes of its compressed form.
    #[cfg(test)]
    pub(crate) fn deflate_len(&self) -> u64 {
        self.deflate.len() as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.text_len == 0
    }
}

/// Text handed over piece by piece, compressed into one gzip member.
struct Deflater {
    encoder: GzEncoder<Vec<u8>>,
    text_len: u64,
}

impl Deflater {
    fn new() -> Deflater {
        Deflater {
            encoder: GzEncoder::new(Vec::new(), Compression::new(GZIP_LEVEL)),
            text_len: 0,
        }
    }

    fn write(&mut self, text: &[u8]) {
        if text.is_empty() {
            return;
        }
        self.text_len += text.len() as u64;
        self.encoder
            .write_all(text)
            .expect("compressing into a Vec cannot fail");
    }

    fn finish(self) -> Chunk {
        if self.text_len == 0 {
            return Chunk::default();
        }
        let mut gzip = self
            .encoder
            .finish()
            .expect("compressing into a Vec cannot fail");
        gzip.shrink_to_fit();
        Chunk {
            deflate: Bytes::from(gzip),
            text_len: self.text_len,
        }
    }
}

/// Renders text into one chunk through a bounded buffer: the whole text never exists at
/// once.
pub(crate) struct ChunkWriter {
    text: String,
    deflater: Deflater,
}

impl ChunkWriter {
    pub(crate) fn new() -> ChunkWriter {
        ChunkWriter {
            text: String::with_capacity(RENDER_BUFFER + 1024),
            deflater: Deflater::new(),
        }
    }

    /// The buffer to append text to; call [`ChunkWriter::spill`] after each line.
    pub(crate) fn buffer(&mut self) -> &mut String {
        &mut self.text
    }

    /// Compresses the buffer once it is full.
    pub(crate) fn spill(&mut self) {
        if self.text.len() >= RENDER_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.deflater.write(self.text.as_bytes());
        self.text.clear();
    }

    pub(crate) fn finish(mut self) -> Chunk {
        self.flush();
        self.deflater.finish()
    }
}

/// One rendered scrape: chunks to send in order (shared, not copied).
#[derive(Debug, Clone, Default)]
pub(crate) struct Exposition {
    chunks: Vec<Chunk>,
}

impl Exposition {
    pub(crate) fn new(chunks: Vec<Chunk>) -> Exposition {
        Exposition { chunks }
    }

    #[cfg(test)]
    pub(crate) fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Bytes of the gzip stream.
    #[cfg(test)]
    pub(crate) fn gzip_len(&self) -> u64 {
        self.chunks.iter().map(Chunk::deflate_len).sum()
    }

    /// Bytes of the text it decompresses to.
    pub(crate) fn text_len(&self) -> u64 {
        self.chunks.iter().map(Chunk::text_len).sum()
    }

    /// The gzip stream, as the chunks' shared bytes to send in order.
    pub(crate) fn gzip_parts(&self) -> Vec<Bytes> {
        self.chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.deflate.clone())
            .collect()
    }

    /// Reads the text by decompressing the gzip stream as it goes.
    pub(crate) fn text_reader(&self) -> TextReader {
        TextReader::new(self.gzip_parts())
    }

    /// The whole body as one string.
    #[cfg(test)]
    pub(crate) fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.text_len() as usize);
        self.text_reader()
            .read_to_string(&mut text)
            .expect("the cached chunks decompress to UTF-8 text");
        text
    }
}

/// The text of a multi-member gzip stream held as shared pieces, decompressed as it is
/// read.
pub(crate) struct TextReader {
    decoder: Option<flate2::bufread::MultiGzDecoder<ChunkReader>>,
}

impl TextReader {
    fn new(parts: Vec<Bytes>) -> TextReader {
        let chunks: VecDeque<Bytes> = parts.into_iter().filter(|c| !c.is_empty()).collect();
        TextReader {
            // An empty input is no gzip stream (not even a header): it is empty text.
            decoder: (!chunks.is_empty())
                .then(|| flate2::bufread::MultiGzDecoder::new(ChunkReader { chunks })),
        }
    }
}

impl Read for TextReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.decoder {
            Some(decoder) => decoder.read(buf),
            None => Ok(0),
        }
    }
}

/// `BufRead` over shared chunks, without copying them into one buffer.
struct ChunkReader {
    chunks: VecDeque<Bytes>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(self.chunks.front().map(|c| &c[..]).unwrap_or(&[]))
    }

    fn consume(&mut self, amount: usize) {
        if let Some(front) = self.chunks.front_mut() {
            front.advance(amount);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}
