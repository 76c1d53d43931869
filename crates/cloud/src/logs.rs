//! Log files read from disk: the last lines of a file within a byte cap, and
//! what was appended since the last read (by file offset); and the bounds
//! of a container log answer ([`MAX_TAIL_LINES`], [`LastBytes`]).
//!
//! Every function here that touches a file does blocking I/O; the API calls
//! them on tokio's blocking pool ([`tail`], [`Follower::next`]), never on an
//! async worker.

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Lines sent when a log request names no `tail`.
pub const DEFAULT_TAIL: usize = 1000;
/// The most bytes one log answer (or one follow stream's first part) holds.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// The most bytes one follow stream sends after its first part.
pub const MAX_FOLLOW_BYTES: u64 = 64 << 20;
/// The most lines asked of the engine for one container log answer:
/// `tail=all`, or a larger `tail`, asks for this many (the engine reads a
/// tail backwards, so the cost does not grow with the log).
pub const MAX_TAIL_LINES: usize = 10_000;
/// The most bytes read from disk at a time.
const CHUNK: u64 = 64 << 10;

/// What a tail read found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// The last lines, starting at a line boundary.
    pub bytes: Vec<u8>,
    /// Where the file ended when it was read (a [`Follower`] starts there).
    pub end: u64,
    /// The file's inode (0 when there was no file).
    pub ino: u64,
}

/// How many lines a `tail` query asks for: a number, `all` (as many as the
/// byte cap allows), or nothing ([`DEFAULT_TAIL`]).
pub fn parse_tail(tail: Option<&str>) -> Option<usize> {
    match tail.map(str::trim) {
        None | Some("") => Some(DEFAULT_TAIL),
        Some("all") => None,
        Some(n) => Some(n.parse().unwrap_or(DEFAULT_TAIL)),
    }
}

/// Where the last `lines` lines of `data` start, if `data` holds that many
/// (a final newline ends the last line, it does not start an empty one).
fn tail_start(data: &[u8], lines: usize) -> Option<usize> {
    if lines == 0 {
        return Some(data.len());
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The last `lines` lines of the file at `path` (as many as fit when
/// `None`), at most `max_bytes`, read backwards from the end in chunks, so a
/// large log costs only what is sent. A missing file is empty.
pub fn tail(path: &Path, lines: Option<usize>, max_bytes: u64) -> io::Result<Tail> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Tail::default()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let len = meta.len();
    let mut pos = len;
    let mut data: Vec<u8> = Vec::new();
    loop {
        if let Some(n) = lines
            && let Some(start) = tail_start(&data, n)
        {
            data.drain(..start);
            return Ok(Tail {
                bytes: data,
                end: len,
                ino: meta.ino(),
            });
        }
        let budget = max_bytes.saturating_sub(len - pos);
        if pos == 0 || budget == 0 {
            break;
        }
        let step = CHUNK.min(pos).min(budget);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact_at(&mut chunk, pos)?;
        chunk.extend_from_slice(&data);
        data = chunk;
    }
    if pos > 0 {
        // Cut by the byte cap: start at the first whole line.
        match data.iter().position(|b| *b == b'\n') {
            Some(i) => {
                data.drain(..=i);
            }
            None => data.clear(),
        }
    }
    Ok(Tail {
        bytes: data,
        end: len,
        ino: meta.ino(),
    })
}

/// The lines a container log read asks of the engine for a `tail` (all
/// when `None`): never more than [`MAX_TAIL_LINES`].
pub fn engine_tail(tail: Option<usize>) -> usize {
    tail.map_or(MAX_TAIL_LINES, |n| n.min(MAX_TAIL_LINES))
}

/// The last `max` bytes of a stream, kept while it is read: it never holds
/// more than `max` and a quarter (plus the chunk being pushed), however
/// long the stream.
#[derive(Debug)]
pub struct LastBytes {
    max: usize,
    buf: Vec<u8>,
    cut: bool,
}

impl LastBytes {
    /// Keeps at most the last `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            cut: false,
        }
    }

    /// Appends `chunk`, dropping from the front what is beyond the cap.
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= self.max {
            self.cut |= !self.buf.is_empty() || chunk.len() > self.max;
            self.buf.clear();
            self.buf.extend_from_slice(&chunk[chunk.len() - self.max..]);
            return;
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > self.max + self.max / 4 {
            let excess = self.buf.len() - self.max;
            self.buf.drain(..excess);
            self.cut = true;
        }
    }

    /// The last `max` bytes as text (invalid UTF-8 replaced); when the
    /// front was cut, from the first whole line on.
    pub fn into_text(self) -> String {
        String::from_utf8(self.into_bytes())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// The last `max` bytes; when the front was cut, from the first whole
    /// line on.
    pub fn into_bytes(mut self) -> Vec<u8> {
        if self.buf.len() > self.max {
            let excess = self.buf.len() - self.max;
            self.buf.drain(..excess);
            self.cut = true;
        }
        if self.cut {
            match self.buf.iter().position(|b| *b == b'\n') {
                Some(i) => drop(self.buf.drain(..=i)),
                None => self.buf.clear(),
            }
        }
        self.buf
    }
}

/// Reads what is appended to a file, from an offset it keeps. A file that
/// was replaced (another inode) or truncated is read again from its start.
#[derive(Clone, Debug)]
pub struct Follower {
    path: PathBuf,
    pos: u64,
    ino: u64,
}

impl Follower {
    /// Follows `path` from where `tail` left it.
    pub fn after(path: PathBuf, tail: &Tail) -> Self {
        Self {
            path,
            pos: tail.end,
            ino: tail.ino,
        }
    }

    /// Up to `max` new bytes (empty when nothing is new).
    pub fn next(&mut self, max: u64) -> io::Result<Vec<u8>> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if meta.ino() != self.ino || meta.len() < self.pos {
            self.ino = meta.ino();
            self.pos = 0;
        }
        let n = meta.len().saturating_sub(self.pos).min(max);
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, self.pos)?;
        self.pos += n;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-logs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("serial.log");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn tail_takes_the_last_lines_across_chunks() {
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let p = file("lines", text.as_bytes());
        let t = tail(&p, Some(3), MAX_ANSWER_BYTES).unwrap();
        assert_eq!(t.bytes, b"line 19997\nline 19998\nline 19999\n");
        assert_eq!(t.end, text.len() as u64);
        assert_eq!(tail(&p, Some(0), MAX_ANSWER_BYTES).unwrap().bytes, b"");
        // More lines than the file has: the whole file.
        let short = file("short", b"a\nb");
        assert_eq!(tail(&short, Some(5), 100).unwrap().bytes, b"a\nb");
        assert_eq!(tail(&short, Some(1), 100).unwrap().bytes, b"b");
    }

    #[test]
    fn tail_stops_at_the_byte_cap_on_a_line_boundary() {
        let text: String = (0..1000).map(|i| format!("{i:09}\n")).collect();
        let p = file("cap", text.as_bytes());
        let t = tail(&p, None, 105).unwrap();
        // 105 bytes hold 10 whole lines and the end of an eleventh.
        assert_eq!(t.bytes.len(), 100);
        assert!(t.bytes.starts_with(b"000000990\n"));
        assert!(tail(&p, Some(500), 105).unwrap().bytes.len() <= 105);
    }

    #[test]
    fn last_bytes_keeps_the_end_from_a_whole_line() {
        let mut all = LastBytes::new(100);
        all.push(b"one\ntwo\n");
        assert_eq!(all.into_bytes(), b"one\ntwo\n");
        let mut last = LastBytes::new(25);
        for i in 0..10_000 {
            last.push(format!("line {i:05}\n").as_bytes());
            assert!(last.buf.len() <= 25 + 6 + 11);
        }
        // 25 bytes hold the end of one line and two whole lines.
        assert_eq!(last.into_bytes(), b"line 09998\nline 09999\n");
        let mut big = LastBytes::new(8);
        big.push(b"a\n");
        big.push(b"0123456789\nabcdef\n");
        assert_eq!(big.into_bytes(), b"abcdef\n");
        assert_eq!(engine_tail(None), MAX_TAIL_LINES);
        assert_eq!(engine_tail(Some(5)), 5);
        assert_eq!(engine_tail(Some(usize::MAX)), MAX_TAIL_LINES);
    }

    #[test]
    fn follower_reads_only_what_is_new_and_restarts_on_a_new_file() {
        use std::io::Write;
        let p = file("follow", b"old\n");
        let t = tail(&p, Some(10), 1000).unwrap();
        let mut f = Follower::after(p.clone(), &t);
        assert_eq!(f.next(1000).unwrap(), b"");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"new 1\nnew 2\n")
            .unwrap();
        assert_eq!(f.next(6).unwrap(), b"new 1\n");
        assert_eq!(f.next(1000).unwrap(), b"new 2\n");
        // Rotated: a new file under the same name is read from its start.
        let tmp = p.with_extension("new");
        std::fs::write(&tmp, b"rotated\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(f.next(1000).unwrap(), b"rotated\n");
    }
}
