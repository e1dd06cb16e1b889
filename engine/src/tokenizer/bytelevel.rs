//! GPT-2 byte-level alphabet: every byte maps to one printable char, so byte-level BPE
//! vocabularies (HF `ByteLevel`, GGUF `gpt2`) store arbitrary bytes as text.

use std::sync::OnceLock;

struct Tables {
    to_char: [char; 256],
    /// Indexed by code point; the alphabet only uses U+0021..=U+0143.
    to_byte: Vec<Option<u8>>,
}

/// Bytes that map to the char of the same code point (printable Latin-1).
fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            to_char[b as usize] = if is_direct(b) {
                char::from(b)
            } else {
                // Non-printable bytes take the next free code points from U+0100 on.
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                c
            };
        }
        let mut to_byte = vec![None; next as usize];
        for (b, c) in to_char.iter().enumerate() {
            to_byte[*c as usize] = Some(b as u8);
        }
        Tables { to_char, to_byte }
    })
}

/// The alphabet char that stands for byte `b`.
pub(crate) fn byte_to_char(b: u8) -> char {
    tables().to_char[b as usize]
}

/// The byte an alphabet char stands for; `None` for chars outside the alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    tables().to_byte.get(c as usize).copied().flatten()
}

/// Encodes raw bytes as byte-level text.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// Decodes byte-level text to bytes; `None` if any char is outside the alphabet (the
/// token is then not byte-level text, e.g. an added token such as `<｜User｜>`).
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    text.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_round_trips_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(decode("Ġworld"), Some(b" world".to_vec()));
        assert_eq!(decode("｜"), None);
    }
}
