//! Checks that a file is a well-formed GGUF model before it is registered: the magic, a known
//! version, and a header (metadata and tensor table) that parses within the file's bounds. Catches
//! truncated, corrupt and non-GGUF files without loading any weights.

use std::io::{BufReader, Read};
use std::path::Path;

const MAX_COUNT: u64 = 1 << 20;
const MAX_STRING: u64 = 1 << 24;

/// Why a file is not a usable GGUF model.
pub fn check(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = Reader { inner: BufReader::new(file), read: 0, size };
    let magic = r.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err("bad magic: not a GGUF file".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version} (2 and 3 are)"));
    }
    let tensors = r.count("tensor")?;
    let entries = r.count("metadata entry")?;
    for _ in 0..entries {
        r.string()?;
        let kind = r.u32()?;
        r.value(kind, 0)?;
    }
    for _ in 0..tensors {
        r.string()?;
        let dims = r.u32()?;
        if dims == 0 || dims > 8 {
            return Err(format!("a tensor has {dims} dimensions"));
        }
        for _ in 0..dims {
            r.u64()?;
        }
        r.u32()?; // type
        let offset = r.u64()?;
        if offset > size {
            return Err(format!("a tensor's data offset {offset} lies beyond the file's {size} bytes"));
        }
    }
    Ok(())
}

struct Reader<R> {
    inner: R,
    read: u64,
    size: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|_| format!("header truncated at byte {}", self.read))?;
        self.read += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn count(&mut self, what: &str) -> Result<u64, String> {
        let n = self.u64()?;
        if n > MAX_COUNT {
            return Err(format!("implausible {what} count {n}"));
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if self.read + n > self.size {
            return Err(format!("header field of {n} bytes runs past the end of the file"));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
        if copied != n {
            return Err("header truncated".into());
        }
        self.read += n;
        Ok(())
    }

    fn string(&mut self) -> Result<(), String> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(format!("implausible string length {len}"));
        }
        self.skip(len)
    }

    /// Skips one metadata value of GGUF type `kind`.
    fn value(&mut self, kind: u32, depth: u32) -> Result<(), String> {
        match kind {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => self.string(),
            9 if depth == 0 => {
                let item = self.u32()?;
                let n = self.count("array item")?;
                match item {
                    0 | 1 | 7 => self.skip(n),
                    2 | 3 => self.skip(n * 2),
                    4..=6 => self.skip(n * 4),
                    10..=12 => self.skip(n * 8),
                    _ => (0..n).try_for_each(|_| self.value(item, depth + 1)),
                }
            }
            other => Err(format!("unknown metadata type {other}")),
        }
    }
}

/// A minimal GGUF v3 (one metadata entry, one tensor, some data), for tests.
#[cfg(test)]
pub fn tiny_gguf() -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(8u32.to_le_bytes());
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    b.extend(4u64.to_le_bytes());
    b.extend(b"t0.w");
    b.extend(1u32.to_le_bytes());
    b.extend(16u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend([0u8; 64]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bytes(name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = std::env::temp_dir().join(format!("rbee-gguf-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let result = check(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn a_well_formed_header_passes() {
        check_bytes("ok", &tiny_gguf()).unwrap();
    }

    #[test]
    fn corrupt_headers_are_named() {
        let good = tiny_gguf();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(check_bytes("magic", &bad_magic).unwrap_err().contains("magic"));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert!(check_bytes("version", &bad_version).unwrap_err().contains("version"));
        let mut huge_count = good.clone();
        huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_bytes("count", &huge_count).unwrap_err().contains("implausible"));
        assert!(check_bytes("short", &good[..30]).is_err());
        for cut in 0..good.len() - 64 {
            assert!(check_bytes("cut", &good[..cut]).is_err(), "a header cut at {cut} passed");
        }
    }
}

/// VAL-6 for GGUF headers: any bytes are a well-formed header or a named reason, never a panic,
/// and never a read past the file's end. The corpus is a tiny well-formed file and the first
/// 64 KiB of the real model when the cache holds it.
#[cfg(test)]
mod fuzz {
    use rbee_bus::fuzz::{Mutator, cases};

    #[test]
    fn mutated_headers_never_panic_the_check() {
        let mut corpus = vec![super::tiny_gguf()];
        let model = std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .map(|h| h.join(".cache/rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
        if let Some(bytes) = model.and_then(|p| std::fs::read(p).ok()) {
            corpus.push(bytes[..bytes.len().min(64 << 10)].to_vec());
        }
        let dir = std::env::temp_dir().join(format!("rbee-gguf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("case.gguf");
        let mut mutator = Mutator::new(0x5eed_0003);
        for case in 0..cases() {
            let bytes = mutator.input(&corpus);
            std::fs::write(&path, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| super::check(&path));
            assert!(result.is_ok(), "case {case} panicked");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
