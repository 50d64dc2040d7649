//! The compressed form in which the exposition is cached, and how one gzip stream is
//! stitched from it at scrape time.
//!
//! Each cached piece of text is a [`Chunk`]: raw deflate blocks (no zlib or gzip wrapper)
//! that end with a full flush, so the chunk ends on a byte boundary, sets no final-block
//! bit and refers back to nothing outside itself; with it, the CRC-32 and length of its
//! text. Chunks compressed apart can then be laid end to end inside ONE gzip member:
//!
//! ```text
//! gzip header | chunk | chunk | ... | empty final block | CRC-32 of all text | ISIZE
//! ```
//!
//! The CRC-32 of the whole text is combined from the chunks' own (no pass over the text),
//! so a scrape costs a few bytes of header and trailer around the shared cached bytes. A
//! single member matters: curl, Go's gzip reader without multistream and many proxies stop
//! after the first member of a multi-member stream.
//!
//! Clients that do not take gzip get the same stream decompressed while it is sent
//! ([`TextReader`]), so both encodings come from one cache.

use bytes::{Buf, Bytes};
use flate2::{Compress, Compression, FlushCompress};
use std::collections::VecDeque;
use std::io::{BufRead, Read};

/// The deflate level of every cached chunk: the fastest level that still compresses the
/// per-key text well (measurements in BENCHMARKS.md, "/metrics scrape").
pub(crate) const GZIP_LEVEL: u32 = 2;

/// Text is rendered into a buffer of about this size, then handed to the compressor.
pub(crate) const RENDER_BUFFER: usize = 64 * 1024;

/// The gzip member header: deflate, no flags, no modification time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// An empty fixed-Huffman block with the final-block bit set: it ends the deflate stream
/// after the chunks, whose own blocks are never final.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// The bytes after the chunks: the final block, the CRC-32 and the length mod 2^32.
const TRAILER_LEN: usize = FINAL_BLOCK.len() + 8;

/// A piece of the exposition compressed on its own (see the module doc).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    /// Raw deflate blocks ending with a full flush; empty for empty text.
    deflate: Bytes,
    /// CRC-32 of the text.
    crc: u32,
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

    /// Its deflate blocks (shared).
    #[cfg(test)]
    pub(crate) fn deflate(&self) -> &Bytes {
        &self.deflate
    }

    /// Bytes of its deflate blocks.
    #[cfg(test)]
    pub(crate) fn deflate_len(&self) -> u64 {
        self.deflate.len() as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.text_len == 0
    }
}

/// Raw deflate of text handed over piece by piece, with its CRC-32 and length.
struct Deflater {
    compress: Compress,
    out: Vec<u8>,
    crc: crc32fast::Hasher,
    text_len: u64,
}

impl Deflater {
    fn new() -> Deflater {
        Deflater {
            compress: Compress::new(Compression::new(GZIP_LEVEL), false),
            out: Vec::new(),
            crc: crc32fast::Hasher::new(),
            text_len: 0,
        }
    }

    fn write(&mut self, text: &[u8]) {
        if text.is_empty() {
            return;
        }
        self.crc.update(text);
        self.text_len += text.len() as u64;
        self.deflate(text, FlushCompress::None);
    }

    /// Feeds `input` to the compressor until it has taken all of it and, for a flush, until
    /// it has room left over (zlib's sign that the flush is complete).
    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) {
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(input.len() / 4 + 4096);
            }
            let before = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut self.out, flush)
                .expect("deflating into a Vec cannot fail");
            let taken = (self.compress.total_in() - before) as usize;
            input = &input[taken..];
            if input.is_empty() && self.out.len() < self.out.capacity() {
                return;
            }
        }
    }

    /// Ends the chunk with a full flush (byte-aligned, not final).
    fn finish(mut self) -> Chunk {
        if self.text_len == 0 {
            return Chunk::default();
        }
        self.deflate(&[], FlushCompress::Full);
        self.out.shrink_to_fit();
        Chunk {
            deflate: Bytes::from(self.out),
            crc: self.crc.finalize(),
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
    pub fn new() -> ChunkWriter {
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

/// One rendered scrape: chunks to send in order (shared, not copied), as one gzip member.
#[derive(Debug, Clone, Default)]
pub(crate) struct Exposition {
    chunks: Vec<Chunk>,
}

impl Exposition {
    pub fn new(chunks: Vec<Chunk>) -> Exposition {
        Exposition { chunks }
    }

    #[cfg(test)]
    pub(crate) fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Bytes of the gzip stream.
    #[cfg(test)]
    pub(crate) fn gzip_len(&self) -> u64 {
        let chunks: u64 = self.chunks.iter().map(Chunk::deflate_len).sum();
        (GZIP_HEADER.len() + TRAILER_LEN) as u64 + chunks
    }

    /// Bytes of the text it decompresses to.
    pub(crate) fn text_len(&self) -> u64 {
        self.chunks.iter().map(Chunk::text_len).sum()
    }

    /// The gzip stream (one member), as pieces to send in order: the header, the chunks'
    /// shared bytes and the trailer.
    pub(crate) fn gzip_parts(&self) -> Vec<Bytes> {
        let mut parts = Vec::with_capacity(self.chunks.len() + 2);
        parts.push(Bytes::from_static(&GZIP_HEADER));
        parts.extend(
            self.chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| c.deflate.clone()),
        );
        parts.push(Bytes::copy_from_slice(&self.trailer()));
        parts
    }

    /// The final block, then the CRC-32 of the whole text (combined from the chunks') and
    /// its length mod 2^32, both little-endian (RFC 1952 §2.3.1).
    fn trailer(&self) -> [u8; TRAILER_LEN] {
        let mut crc = crc32fast::Hasher::new();
        for chunk in &self.chunks {
            crc.combine(&crc32fast::Hasher::new_with_initial_len(
                chunk.crc,
                chunk.text_len,
            ));
        }
        let mut trailer = [0; TRAILER_LEN];
        trailer[..2].copy_from_slice(&FINAL_BLOCK);
        trailer[2..6].copy_from_slice(&crc.finalize().to_le_bytes());
        trailer[6..].copy_from_slice(&(self.text_len() as u32).to_le_bytes());
        trailer
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

/// The text of a single-member gzip stream held as shared pieces, decompressed as it is
/// read (and checked against its CRC-32 at the end).
pub(crate) struct TextReader {
    decoder: flate2::bufread::GzDecoder<ChunkReader>,
}

impl TextReader {
    fn new(parts: Vec<Bytes>) -> TextReader {
        let chunks: VecDeque<Bytes> = parts.into_iter().filter(|c| !c.is_empty()).collect();
        TextReader {
            decoder: flate2::bufread::GzDecoder::new(ChunkReader { chunks }),
        }
    }
}

impl Read for TextReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.decoder.read(buf)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip_single_member(parts: &[Bytes]) -> Vec<u8> {
        let stream: Vec<u8> = parts.concat();
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&stream[..])
            .read_to_end(&mut text)
            .expect("one valid gzip member");
        text
    }

    #[test]
    fn chunks_compressed_apart_make_one_gzip_member() {
        let text: Vec<u8> = (0..30_000)
            .flat_map(|i| format!("series_{i}{{label=\"v\"}} {i}\n").into_bytes())
            .collect();
        let pieces = [&text[..1], &text[1..100_000], &[][..], &text[100_000..]];
        let exposition = Exposition::new(pieces.iter().map(|p| Chunk::compress(p)).collect());
        assert_eq!(exposition.text_len(), text.len() as u64);
        let parts = exposition.gzip_parts();
        assert_eq!(parts.len(), 5, "header, three non-empty chunks, trailer");
        assert_eq!(
            parts.iter().map(|p| p.len() as u64).sum::<u64>(),
            exposition.gzip_len()
        );
        assert_eq!(gunzip_single_member(&parts), text);
        assert_eq!(exposition.to_text().as_bytes(), &text[..]);
    }

    #[test]
    fn an_empty_exposition_is_a_valid_empty_member() {
        let exposition = Exposition::new(vec![Chunk::compress(b""), Chunk::default()]);
        assert_eq!(exposition.text_len(), 0);
        assert!(gunzip_single_member(&exposition.gzip_parts()).is_empty());
        assert_eq!(exposition.to_text(), "");
    }

    #[test]
    fn a_wrong_crc_is_detected_on_the_identity_path() {
        let mut exposition = Exposition::new(vec![Chunk::compress(b"a 1\n")]);
        exposition.chunks[0].crc ^= 1;
        let mut text = String::new();
        assert!(exposition.text_reader().read_to_string(&mut text).is_err());
    }
}
