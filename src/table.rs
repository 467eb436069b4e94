//! Plain-text tables (`cnnc info`, profiles): padding that stays correct for any cell
//! width, and thousands separators.

/// `cell` padded with spaces on the right to `width` characters. (`format!("{:<w$}")`
/// panics for widths over 65,535, and a layer name may be that long.)
pub fn pad_right(cell: &str, width: usize) -> String {
    let n = cell.chars().count();
    format!("{cell}{}", " ".repeat(width.saturating_sub(n)))
}

/// `cell` padded with spaces on the left to `width` characters.
pub fn pad_left(cell: &str, width: usize) -> String {
    let n = cell.chars().count();
    format!("{}{cell}", " ".repeat(width.saturating_sub(n)))
}

/// `12345678` -> `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_by_three() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(12345678), "12,345,678");
    }
}
