//! Lower-case hex of digests: one encoder for every module (inventory hashes, signatures,
//! backup manifests), with no dependencies of its own.

/// Lower-case hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    // A table, not `write!` per byte: every reconcile writes tens of thousands of digests.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(encode(&bytes), expected);
        assert_eq!(encode(&[]), "");
    }
}
