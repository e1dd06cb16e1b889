//! SMBIOS structure-table parser for type 17 (Memory Device), the source of per-DIMM size,
//! type, speed and slot names. Linux exposes the raw table at
//! `/sys/firmware/dmi/tables/DMI` (root-only). Layout per the DMTF SMBIOS specification:
//! each structure is a formatted area (type, length, handle, fields) followed by a set of
//! NUL-terminated strings ending with an extra NUL; fields refer to strings by 1-based index.
//! Fields are read only when the structure's length covers them, so tables of any SMBIOS
//! version (2.x short structures, 3.x long ones) parse.

use hy_planner::hardware::Dimm;

const TYPE_MEMORY_DEVICE: u8 = 17;
const TYPE_END_OF_TABLE: u8 = 127;

#[derive(Debug, PartialEq)]
pub enum SmbiosError {
    /// A structure header or formatted area runs past the end of the table.
    Truncated { offset: usize },
    /// A structure declares a formatted area shorter than its 4-byte header.
    BadLength { offset: usize, length: u8 },
}

impl std::fmt::Display for SmbiosError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmbiosError::Truncated { offset } => {
                write!(f, "SMBIOS structure at byte {offset} runs past the end of the table")
            }
            SmbiosError::BadLength { offset, length } => {
                write!(f, "SMBIOS structure at byte {offset} declares length {length} (< 4)")
            }
        }
    }
}

/// One raw structure: its formatted area (header included) and its strings.
struct Structure<'a> {
    kind: u8,
    formatted: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, off: usize) -> Option<u8> {
        self.formatted.get(off).copied()
    }

    fn word(&self, off: usize) -> Option<u16> {
        let b = self.formatted.get(off..off + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn dword(&self, off: usize) -> Option<u32> {
        let b = self.formatted.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The string a byte field at `off` refers to; `None` for index 0, a missing index, or
    /// a blank string. Trailing padding (common in manufacturer fields) is trimmed.
    fn string(&self, off: usize) -> Option<String> {
        let index = self.byte(off)? as usize;
        let raw = self.strings.get(index.checked_sub(1)?)?;
        let text = String::from_utf8_lossy(raw).trim().to_string();
        (!text.is_empty()).then_some(text)
    }
}

/// Splits a table into structures, stopping at the end-of-table structure or the end.
fn structures(table: &[u8]) -> Result<Vec<Structure<'_>>, SmbiosError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 4 <= table.len() {
        let kind = table[offset];
        let length = table[offset + 1];
        if length < 4 {
            return Err(SmbiosError::BadLength { offset, length });
        }
        let formatted_end = offset + length as usize;
        if formatted_end > table.len() {
            return Err(SmbiosError::Truncated { offset });
        }
        let (strings, next) = string_set(table, formatted_end, offset)?;
        out.push(Structure { kind, formatted: &table[offset..formatted_end], strings });
        if kind == TYPE_END_OF_TABLE {
            break;
        }
        offset = next;
    }
    Ok(out)
}

/// Reads the string set starting at `start`; returns the strings and the offset just past
/// the terminating double NUL.
fn string_set(table: &[u8], start: usize, offset: usize) -> Result<(Vec<&[u8]>, usize), SmbiosError> {
    let mut strings = Vec::new();
    let mut p = start;
    // A structure without strings still ends with two NULs.
    if table.get(p) == Some(&0) {
        return match table.get(p + 1) {
            Some(0) => Ok((strings, p + 2)),
            _ => Err(SmbiosError::Truncated { offset }),
        };
    }
    loop {
        let len = table[p..].iter().position(|&b| b == 0).ok_or(SmbiosError::Truncated { offset })?;
        strings.push(&table[p..p + len]);
        p += len + 1;
        match table.get(p) {
            Some(0) => return Ok((strings, p + 1)),
            Some(_) => {}
            None => return Err(SmbiosError::Truncated { offset }),
        }
    }
}

/// All populated memory devices (type 17 with a non-zero size) in table order.
pub fn parse_memory_devices(table: &[u8]) -> Result<Vec<Dimm>, SmbiosError> {
    Ok(structures(table)?.iter().filter(|s| s.kind == TYPE_MEMORY_DEVICE).filter_map(memory_device).collect())
}

/// Decodes one type 17 structure; `None` for an empty slot or unknown size.
fn memory_device(s: &Structure<'_>) -> Option<Dimm> {
    let size_bytes = device_size(s)?;
    Some(Dimm {
        locator: s.string(0x10).unwrap_or_else(|| "?".to_string()),
        bank_locator: s.string(0x11).filter(|b| !is_placeholder(b)),
        size_bytes,
        memory_type: s.byte(0x12).and_then(memory_type_name).map(str::to_string),
        speed_mts: speed(s, 0x15, 0x54),
        configured_mts: speed(s, 0x20, 0x58),
        manufacturer: s.string(0x17).filter(|m| !is_placeholder(m)),
        part_number: s.string(0x1A).filter(|p| !is_placeholder(p)),
        socket: None,
        channel: None,
    })
}

/// Size field at 0x0C: 0 = slot empty, 0xFFFF = unknown, 0x7FFF = see Extended Size
/// (0x1C, MiB in bits 30:0); otherwise bit 15 selects KiB (1) or MiB (0) units.
fn device_size(s: &Structure<'_>) -> Option<u64> {
    let size = s.word(0x0C)?;
    let bytes = match size {
        0 | 0xFFFF => return None,
        0x7FFF => u64::from(s.dword(0x1C)? & 0x7FFF_FFFF) << 20,
        v if v & 0x8000 != 0 => u64::from(v & 0x7FFF) << 10,
        v => u64::from(v) << 20,
    };
    (bytes > 0).then_some(bytes)
}

/// A speed word (MT/s since SMBIOS 3.3; 0 = unknown) with its 3.3 extended dword used
/// when the word is 0xFFFF.
fn speed(s: &Structure<'_>, word_off: usize, ext_off: usize) -> Option<u32> {
    let v = match s.word(word_off)? {
        0 => return None,
        0xFFFF => s.dword(ext_off)? & 0x7FFF_FFFF,
        v => u32::from(v),
    };
    (v > 0).then_some(v)
}

/// SMBIOS "Memory Device — Type" values (DMTF DSP0134, 7.18.2).
fn memory_type_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        0x0F => "SDRAM",
        0x03 => "DRAM",
        _ => return None,
    })
}

/// Firmware fills unused string fields with text like these.
fn is_placeholder(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    matches!(
        t.as_str(),
        "not specified" | "unknown" | "none" | "n/a" | "na" | "default string" | "to be filled by o.e.m."
    ) || t.starts_with("not specified")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds one structure: formatted area `fields` after the 4-byte header, then strings.
    pub fn structure(kind: u8, handle: u16, fields: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut out = vec![kind, (4 + fields.len()) as u8];
        out.extend_from_slice(&handle.to_le_bytes());
        out.extend_from_slice(fields);
        if strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }

    /// A type 17 structure of SMBIOS 3.3 length (0x5C) with strings
    /// 1 locator, 2 bank, 3 manufacturer, 4 serial, 5 asset, 6 part.
    pub fn type17(
        size_word: u16,
        ext_mib: u32,
        mem_type: u8,
        speed: u16,
        configured: u16,
        ext_speed: u32,
        ext_conf: u32,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 0x5C - 4];
        let mut put = |off: usize, bytes: &[u8]| f[off - 4..off - 4 + bytes.len()].copy_from_slice(bytes);
        put(0x04, &0xFFFEu16.to_le_bytes()); // array handle
        put(0x08, &80u16.to_le_bytes()); // total width
        put(0x0A, &64u16.to_le_bytes()); // data width
        put(0x0C, &size_word.to_le_bytes());
        put(0x0E, &[0x09]); // DIMM
        put(0x10, &[1, 2]); // locator, bank locator
        put(0x12, &[mem_type]);
        put(0x15, &speed.to_le_bytes());
        put(0x17, &[3, 4, 5, 6]);
        put(0x1C, &ext_mib.to_le_bytes());
        put(0x20, &configured.to_le_bytes());
        put(0x54, &ext_speed.to_le_bytes());
        put(0x58, &ext_conf.to_le_bytes());
        structure(17, 0x1100, &f, &["P0 CHANNEL A", "BANK 0", "Samsung", "0001", "Tag", "M321R8GA0PB0-CWMKJ  "])
    }

    #[test]
    fn decodes_extended_size_and_speeds() {
        let mut table = structure(0, 0, &[1, 2, 0, 0xF0], &["Vendor", "1.0"]);
        table.extend(type17(0x7FFF, 48 * 1024, 0x22, 6400, 6400, 0, 0));
        table.extend(structure(127, 0xFEFF, &[], &[]));
        let dimms = parse_memory_devices(&table).unwrap();
        assert_eq!(dimms.len(), 1);
        let d = &dimms[0];
        assert_eq!(d.size_bytes, 48 << 30);
        assert_eq!(d.memory_type.as_deref(), Some("DDR5"));
        assert_eq!(d.speed_mts, Some(6400));
        assert_eq!(d.configured_mts, Some(6400));
        assert_eq!(d.locator, "P0 CHANNEL A");
        assert_eq!(d.bank_locator.as_deref(), Some("BANK 0"));
        assert_eq!(d.manufacturer.as_deref(), Some("Samsung"));
        assert_eq!(d.part_number.as_deref(), Some("M321R8GA0PB0-CWMKJ"));
    }

    #[test]
    fn size_units_and_empty_slots() {
        // 16384 MiB in the word, KiB granularity, an empty slot and an unknown size.
        let mut table = type17(16384, 0, 0x1A, 3200, 2933, 0, 0);
        table.extend(type17(0x8000 | 512, 0, 0x1A, 3200, 0, 0, 0));
        table.extend(type17(0, 0, 0x02, 0, 0, 0, 0));
        table.extend(type17(0xFFFF, 0, 0x02, 0, 0, 0, 0));
        let dimms = parse_memory_devices(&table).unwrap();
        assert_eq!(dimms.len(), 2);
        assert_eq!(dimms[0].size_bytes, 16 << 30);
        assert_eq!(dimms[0].memory_type.as_deref(), Some("DDR4"));
        assert_eq!(dimms[0].configured_mts, Some(2933));
        assert_eq!(dimms[1].size_bytes, 512 << 10);
        assert_eq!(dimms[1].configured_mts, None);
    }

    #[test]
    fn extended_speed_fields() {
        let table = type17(0x7FFF, 256 * 1024, 0x22, 0xFFFF, 0xFFFF, 70000, 68000);
        let d = &parse_memory_devices(&table).unwrap()[0];
        assert_eq!(d.speed_mts, Some(70000));
        assert_eq!(d.configured_mts, Some(68000));
        assert_eq!(d.size_bytes, 256 << 30);
    }

    #[test]
    fn short_smbios_2_3_structure() {
        // SMBIOS 2.3: length 0x1B, no extended size / configured speed fields.
        let mut f = vec![0u8; 0x1B - 4];
        f[0x0C - 4..0x0E - 4].copy_from_slice(&2048u16.to_le_bytes());
        f[0x10 - 4] = 1;
        f[0x12 - 4] = 0x12;
        f[0x15 - 4..0x17 - 4].copy_from_slice(&400u16.to_le_bytes());
        let table = structure(17, 1, &f, &["DIMM0"]);
        let d = &parse_memory_devices(&table).unwrap()[0];
        assert_eq!(d.size_bytes, 2 << 30);
        assert_eq!(d.memory_type.as_deref(), Some("DDR"));
        assert_eq!(d.speed_mts, Some(400));
        assert_eq!(d.configured_mts, None);
        assert_eq!(d.bank_locator, None);
        assert_eq!(d.manufacturer, None);
    }

    #[test]
    fn stops_at_end_of_table() {
        let mut table = structure(127, 0, &[], &[]);
        table.extend(type17(8192, 0, 0x1A, 3200, 3200, 0, 0));
        assert!(parse_memory_devices(&table).unwrap().is_empty());
    }

    #[test]
    fn truncated_and_malformed_tables_are_errors() {
        let full = type17(8192, 0, 0x1A, 3200, 3200, 0, 0);
        assert_eq!(parse_memory_devices(&full[..40]).unwrap_err(), SmbiosError::Truncated { offset: 0 });
        // Strings without the final double NUL.
        assert!(parse_memory_devices(&full[..full.len() - 1]).is_err());
        assert_eq!(
            parse_memory_devices(&[17, 2, 0, 0, 0, 0]).unwrap_err(),
            SmbiosError::BadLength { offset: 0, length: 2 }
        );
        assert!(parse_memory_devices(&[]).unwrap().is_empty());
    }
}
