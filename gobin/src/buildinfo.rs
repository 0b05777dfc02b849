//! The Go version a binary was built with, from its `.go.buildinfo`
//! section. Pure parsing over bytes the caller read; no IO of its own.
//!
//! The section starts with a 32-byte header: the 14-byte magic
//! `"\xff Go buildinf:"`, the pointer size (byte 14) and flags (byte 15:
//! bit 0 big endian, bit 1 strings inline). Go ≥ 1.18 sets bit 1 and puts
//! the version at byte 32 as a varint length and the bytes. Older Go puts
//! two pointers at byte 16, each to a Go string header (data pointer,
//! length) for the version and the module information.

use crate::elf::{Elf, Source, read_uint};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
/// Longest version string believed; real ones are under 100 bytes.
const MAX_VERSION_LEN: u64 = 1024;
/// Bytes of `.go.buildinfo` read: the header and the version are in its
/// first few hundred (the module list that follows is not needed).
pub(crate) const MAX_BUILDINFO_BYTES: u64 = 64 << 10;

/// The version string in a `.go.buildinfo` section (`section`), reading
/// pointed-to strings (pre-1.18 layout) through `elf`. `None` when the
/// section holds no readable version.
pub(crate) fn version<S: Source + ?Sized>(elf: &Elf<'_, S>, section: &[u8]) -> Option<String> {
    // The header is 16-byte aligned; it is at the start of the section in
    // every Go release, but look further in case a linker padded it.
    let start = (0..section.len())
        .step_by(16)
        .find(|&i| section.get(i..i + MAGIC.len()) == Some(MAGIC.as_slice()))?;
    let header = section.get(start..start.checked_add(HEADER_LEN)?)?;
    let ptr_size = usize::from(header[14]);
    let flags = header[15];
    if flags & 2 != 0 {
        let (len, used) = uvarint(section.get(start + HEADER_LEN..)?)?;
        if len > MAX_VERSION_LEN {
            return None;
        }
        let from = start + HEADER_LEN + used;
        let bytes = section.get(from..from.checked_add(usize::try_from(len).ok()?)?)?;
        return non_empty(bytes);
    }
    let little_endian = flags & 1 == 0;
    let string_header_address = read_uint(header.get(16..)?, ptr_size, little_endian)?;
    let string_header = elf.read_virtual(string_header_address, 2 * ptr_size as u64)?;
    let data_address = read_uint(&string_header, ptr_size, little_endian)?;
    let len = read_uint(string_header.get(ptr_size..)?, ptr_size, little_endian)?;
    if len > MAX_VERSION_LEN {
        return None;
    }
    non_empty(&elf.read_virtual(data_address, len)?)
}

fn non_empty(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes).into_owned();
    (!s.is_empty()).then_some(s)
}

/// Go's unsigned varint (encoding/binary.Uvarint): the value and the number
/// of bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Major and minor release of a Go version string: "go1.19.8" → (1, 19),
/// "go1.21rc2" → (1, 21), "go1.22.0 X:boringcrypto" → (1, 22),
/// "devel go1.23-1f0c044d60 Tue …" → (1, 23). `None` for strings that name
/// no release, such as old development builds ("devel +abc123 …").
pub fn parse_version(version: &str) -> Option<(u32, u32)> {
    version
        .split_whitespace()
        .find_map(|word| parse_release(word.strip_prefix("go")?))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let (major, rest) = release.split_once('.')?;
    let major = major.parse().ok()?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let minor = rest[..digits].parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_to_major_and_minor() {
        for (s, want) in [
            ("go1.19.8", Some((1, 19))),
            ("go1.21rc2", Some((1, 21))),
            ("go1.9", Some((1, 9))),
            ("go1.22.0 X:boringcrypto", Some((1, 22))),
            ("go1.20beta1", Some((1, 20))),
            ("devel go1.23-1f0c044d60 Tue Mar 5 2024", Some((1, 23))),
            ("devel +b7a5d0cf Mon Jan 1 2018", None),
            ("go", None),
            ("", None),
            ("go1.", None),
            ("gox.y", None),
        ] {
            assert_eq!(parse_version(s), want, "{s:?}");
        }
    }

    #[test]
    fn uvarint_reads_go_varints_and_rejects_overlong_ones() {
        assert_eq!(uvarint(&[0x08, 0xff]), Some((8, 1)));
        assert_eq!(uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(uvarint(&[0x80; 11]), None);
        assert_eq!(uvarint(&[]), None);
    }
}
