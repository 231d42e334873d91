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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_and_id_numbers_are_masked_for_logs() {
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_id_number("51010419900101123X"), "5101**********123X");
        assert_eq!(mask_phone("123"), "***");
    }
}
