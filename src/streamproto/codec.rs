//! The stream protocol's frames: reading one (its size checked against the
//! negotiated frame max before anything is allocated), parsing its fields
//! (`Fields`: big-endian integers, int16-length strings, int32-length
//! bytes and arrays, every length checked against what is left), and
//! building replies (`Out`).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read or parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The peer closed the connection (between frames).
    Closed,
    /// I/O failed (or the peer closed mid-frame).
    Io(String),
    /// The frame is larger than the negotiated frame max.
    TooLarge(u32),
    /// The frame's fields do not parse.
    Malformed,
}

/// The smallest frame: key and version.
const MIN_FRAME: u32 = 4;

/// Reads one frame's body (without its size field). `max`: the largest
/// frame accepted, size field included (0: unlimited).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Bytes, FrameError> {
    let mut size = [0u8; 4];
    match r.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e.to_string())),
    }
    let size = u32::from_be_bytes(size);
    check_size(size, max)?;
    let mut body = BytesMut::zeroed(size as usize);
    r.read_exact(&mut body)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(body.freeze())
}

/// A frame of `size` bytes (after the size field) under `max`.
pub fn check_size(size: u32, max: u32) -> Result<(), FrameError> {
    if size < MIN_FRAME {
        return Err(FrameError::Malformed);
    }
    if max != 0 && u64::from(size) + 4 > u64::from(max) {
        return Err(FrameError::TooLarge(size));
    }
    Ok(())
}

/// A parser over a frame's bytes.
#[derive(Debug)]
pub struct Fields {
    data: Bytes,
    at: usize,
}

type P<T> = Result<T, FrameError>;

impl Fields {
    /// Parses `data` from its start.
    pub fn new(data: Bytes) -> Fields {
        Fields { data, at: 0 }
    }

    fn take(&mut self, n: usize) -> P<&[u8]> {
        let end = self.at.checked_add(n).ok_or(FrameError::Malformed)?;
        let s = self.data.get(self.at..end).ok_or(FrameError::Malformed)?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> P<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// uint8
    pub fn u8(&mut self) -> P<u8> {
        Ok(self.take(1)?[0])
    }
    /// uint16
    pub fn u16(&mut self) -> P<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    /// uint32
    pub fn u32(&mut self) -> P<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// uint64
    pub fn u64(&mut self) -> P<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// int64
    pub fn i64(&mut self) -> P<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// string: int16 length (-1: null, read as empty), UTF-8 bytes.
    pub fn string(&mut self) -> P<String> {
        let len = self.u16()? as i16;
        if len < 0 {
            return Ok(String::new());
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Malformed)
    }

    /// bytes: int32 length (-1: null, read as empty), then the bytes
    /// (shared with the frame, not copied).
    pub fn bytes(&mut self) -> P<Bytes> {
        let len = self.u32()? as i32;
        if len < 0 {
            return Ok(Bytes::new());
        }
        let start = self.at;
        self.take(len as usize)?;
        Ok(self.data.slice(start..self.at))
    }

    /// An array's int32 count, checked against the bytes left: each
    /// element is at least `min_size` bytes, so a lying count fails here
    /// instead of reserving memory.
    pub fn count(&mut self, min_size: usize) -> P<usize> {
        let n = self.u32()? as i32;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(FrameError::Malformed);
        }
        Ok(n)
    }

    /// [Key Value] string pairs.
    pub fn string_map(&mut self) -> P<Vec<(String, String)>> {
        let n = self.count(4)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.string()?, self.string()?));
        }
        Ok(out)
    }

    /// Bytes not yet parsed.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.at
    }
}

/// A frame being built: the size is filled in by `finish`.
#[derive(Debug)]
pub struct Out {
    buf: BytesMut,
}

impl Out {
    /// A frame with `key` and `version`.
    pub fn new(key: u16, version: u16) -> Out {
        Out::within(BytesMut::with_capacity(64), key, version)
    }

    /// A frame with `key` and `version`, built in `buf` (emptied first;
    /// `into_inner` gives it back).
    pub fn within(mut buf: BytesMut, key: u16, version: u16) -> Out {
        buf.clear();
        buf.put_u32(0);
        buf.put_u16(key);
        buf.put_u16(version);
        Out { buf }
    }

    /// The frame, its size set, in the memory it was built in.
    pub fn into_inner(mut self) -> BytesMut {
        self.set_size();
        self.buf
    }

    fn set_size(&mut self) {
        let size = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&size.to_be_bytes());
    }

    /// A response: key with the response bit, version 1, correlation id
    /// and code.
    pub fn response(key: u16, correlation: u32, code: u16) -> Out {
        let mut o = Out::new(key | 0x8000, 1);
        o.u32(correlation).u16(code);
        o
    }

    /// uint8
    pub fn u8(&mut self, v: u8) -> &mut Out {
        self.buf.put_u8(v);
        self
    }
    /// uint16
    pub fn u16(&mut self, v: u16) -> &mut Out {
        self.buf.put_u16(v);
        self
    }
    /// uint32
    pub fn u32(&mut self, v: u32) -> &mut Out {
        self.buf.put_u32(v);
        self
    }
    /// uint64
    pub fn u64(&mut self, v: u64) -> &mut Out {
        self.buf.put_u64(v);
        self
    }
    /// int64
    pub fn i64(&mut self, v: i64) -> &mut Out {
        self.buf.put_i64(v);
        self
    }
    /// string (cut to 32767 bytes at a character boundary).
    pub fn string(&mut self, s: &str) -> &mut Out {
        let mut end = s.len().min(i16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.buf.put_u16(end as u16);
        self.buf.put_slice(&s.as_bytes()[..end]);
        self
    }
    /// bytes
    pub fn bytes(&mut self, b: &[u8]) -> &mut Out {
        self.buf.put_u32(b.len() as u32);
        self.buf.put_slice(b);
        self
    }
    /// Raw bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Out {
        self.buf.put_slice(b);
        self
    }
    /// Room for `n` more bytes without growing.
    pub fn reserve(&mut self, n: usize) -> &mut Out {
        self.buf.reserve(n);
        self
    }
    /// Bytes written so far (the size field included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether nothing follows the size, key and version (never).
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= 8
    }
    /// The bytes written from `at` on.
    pub fn since(&self, at: usize) -> &[u8] {
        &self.buf[at..]
    }
    /// Overwrites the bytes at `at` with `b` (a field written before its
    /// value was known).
    pub fn set(&mut self, at: usize, b: &[u8]) {
        self.buf[at..at + b.len()].copy_from_slice(b);
    }
    /// [Key Value] string pairs.
    pub fn string_map(&mut self, pairs: &[(&str, &str)]) -> &mut Out {
        self.u32(pairs.len() as u32);
        for (k, v) in pairs {
            self.string(k).string(v);
        }
        self
    }

    /// The frame, its size set.
    pub fn finish(&mut self) -> Bytes {
        self.set_size();
        std::mem::take(&mut self.buf).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_round_trips() {
        let mut o = Out::new(0x0015, 1);
        o.u32(7)
            .string("/vhost")
            .string_map(&[("a", "b")])
            .bytes(b"xyz");
        o.u64(u64::MAX).i64(-2).u8(3);
        let frame = o.finish();
        let mut r = &frame[..];
        let body = read_frame(&mut r, 1024).await.unwrap();
        let mut f = Fields::new(body);
        assert_eq!((f.u16().unwrap(), f.u16().unwrap()), (0x0015, 1));
        assert_eq!(f.u32().unwrap(), 7);
        assert_eq!(f.string().unwrap(), "/vhost");
        assert_eq!(f.string_map().unwrap(), vec![("a".into(), "b".into())]);
        assert_eq!(&f.bytes().unwrap()[..], b"xyz");
        assert_eq!(f.u64().unwrap(), u64::MAX);
        assert_eq!(f.i64().unwrap(), -2);
        assert_eq!(f.u8().unwrap(), 3);
        assert_eq!(f.remaining(), 0);
        assert_eq!(f.u8(), Err(FrameError::Malformed));
    }

    #[tokio::test]
    async fn oversized_truncated_and_tiny_frames_are_refused() {
        let big = 2_000_000u32.to_be_bytes();
        assert_eq!(
            read_frame(&mut &big[..], 8192).await,
            Err(FrameError::TooLarge(2_000_000))
        );
        let mut cut = 100u32.to_be_bytes().to_vec();
        cut.extend_from_slice(&[0; 10]);
        assert!(matches!(
            read_frame(&mut &cut[..], 8192).await,
            Err(FrameError::Io(_))
        ));
        let tiny = 2u32.to_be_bytes();
        assert_eq!(
            read_frame(&mut &tiny[..], 0).await,
            Err(FrameError::Malformed)
        );
        assert_eq!(read_frame(&mut &[][..], 0).await, Err(FrameError::Closed));
        // Exactly at the limit (size field included) is accepted.
        let mut ok = 4u32.to_be_bytes().to_vec();
        ok.extend_from_slice(&[0, 0x17, 0, 1]);
        assert!(read_frame(&mut &ok[..], 8).await.is_ok());
        assert!(read_frame(&mut &ok[..], 7).await.is_err());
    }

    #[test]
    fn lying_lengths_and_counts_are_malformed() {
        let mut f = Fields::new(Bytes::from_static(&[0, 50, b'a']));
        assert_eq!(f.string(), Err(FrameError::Malformed));
        let mut f = Fields::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 1]));
        assert_eq!(f.bytes(), Err(FrameError::Malformed));
        let mut f = Fields::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
        assert_eq!(f.string_map(), Err(FrameError::Malformed));
        let mut f = Fields::new(Bytes::from_static(&[0, 2, 0xff, 0xfe]));
        assert_eq!(f.string(), Err(FrameError::Malformed));
        let mut f = Fields::new(Bytes::from_static(&[0xff, 0xff]));
        assert_eq!(f.string().unwrap(), "");
    }
}
