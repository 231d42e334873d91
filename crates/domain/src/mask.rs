//! Masking of personal numbers for logs, messages and the API (PIPL): a phone
//! or ID number is never printed in full.

/// "13812345678" → "138****5678".
pub fn mask_phone(p: &str) -> String {
    let c: Vec<char> = p.chars().collect();
    if c.len() < 7 {
        return "*".repeat(c.len());
    }
    format!("{}{}{}", c[..3].iter().collect::<String>(), "*".repeat(c.len() - 7), c[c.len() - 4..].iter().collect::<String>())
}

/// "51010419900101123X" → "5101**********123X".
pub fn mask_id_number(id: &str) -> String {
    let c: Vec<char> = id.chars().collect();
    if c.len() < 8 {
        return "*".repeat(c.len());
    }
    format!("{}{}{}", c[..4].iter().collect::<String>(), "*".repeat(c.len() - 8), c[c.len() - 4..].iter().collect::<String>())
}

/// Every mobile number inside `text` masked: a run of 11 digits starting
/// with 1 (optionally after +86 or 86), as an SMS service quotes them back.
pub fn mask_phones_in(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let end = b[i..].iter().position(|c| !c.is_ascii_digit()).map_or(b.len(), |n| i + n);
            let run = &text[i..end];
            let local = run.strip_prefix("86").filter(|r| r.len() == 11).unwrap_or(run);
            if local.len() == 11 && local.starts_with('1') {
                out.push_str(&run[..run.len() - 11]);
                out.push_str(&mask_phone(local));
            } else {
                out.push_str(run);
            }
            i = end;
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_quoted_inside_a_service_answer_are_masked() {
        let t = r#"{"PhoneNumber":"+8613800001111","Fee":1,"SerialNo":"2433:1234567890123","to":"13900002222,13700003333"}"#;
        let m = mask_phones_in(t);
        for p in ["13800001111", "13900002222", "13700003333"] {
            assert!(!m.contains(p), "{m}");
        }
        assert!(m.contains("+86138****1111") && m.contains("139****2222"), "{m}");
        assert!(m.contains("1234567890123"), "a 13-digit serial is no phone: {m}");
        assert_eq!(mask_phones_in("电话：13800001111。"), "电话：138****1111。");
    }

    #[test]
    fn phone_and_id_numbers_are_masked_for_logs() {
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_id_number("51010419900101123X"), "5101**********123X");
        assert_eq!(mask_phone("123"), "***");
    }
}
