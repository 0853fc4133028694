//! Text helpers of the pickle reader: Python 3's latin-1 round trip of raw bytes, and
//! printable excerpts for error messages.

/// `text.encode('latin1')` for `text` given as UTF-8: Python 3's protocol-2 spelling of
/// `bytes`. Latin1 text in UTF-8 is ASCII bytes and two-byte sequences led by 0xC2 or
/// 0xC3; the loop decodes and validates that without branching on the data, since pixel
/// bytes are as good as random and mispredicted branches made a `chars()` loop take
/// seconds on CIFAR-100 `train`.
pub(super) fn latin1_from_utf8(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; text.len()];
    let mut len = 0;
    let mut bad = false;
    let mut after_lead = false;
    let next_bytes = text.iter().skip(1).copied().chain(std::iter::once(0));
    for (&b, next) in text.iter().zip(next_bytes) {
        let lead = b & 0xFE == 0xC2;
        let continuation = b & 0xC0 == 0x80;
        // Other bytes >= 0xC0 start characters above U+00FF (or are not UTF-8), and a
        // continuation byte must follow a lead byte and nothing else.
        bad |= (b >= 0xC0 && !lead) | (continuation != after_lead);
        after_lead = lead;
        let decoded = if lead {
            ((b & 0x1F) << 6) | (next & 0x3F)
        } else {
            b
        };
        if let Some(slot) = out.get_mut(len) {
            *slot = decoded;
        }
        len += usize::from(!continuation);
    }
    if bad || after_lead {
        // Slow path, only to name the offending character.
        return Err(match std::str::from_utf8(text) {
            Err(_) => "unicode string is not valid UTF-8".to_owned(),
            Ok(s) => {
                let c = s
                    .chars()
                    .map(u32::from)
                    .find(|&c| c > 0xFF)
                    .unwrap_or(0xFFFD);
                format!("character U+{c:04X} cannot be encoded as latin1")
            }
        });
    }
    out.truncate(len);
    Ok(out)
}

/// A name from the input, safe to put in a message: lossy UTF-8, control characters
/// escaped, at most 100 characters.
pub(super) fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}
