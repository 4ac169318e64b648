//! NGINX's time and size values (`1m30s`, `500ms`, `10m` bytes, …).

/// A time as NGINX writes it, in milliseconds: a bare number is seconds;
/// `ms`, `s`, `m`, `h`, `d`, `w`, `M` (30 days) and `y` (365 days) may be
/// combined, largest first (`1h30m`).
pub fn time_ms(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok()?.checked_mul(1000);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    let mut last_unit = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let unit = match rest.chars().next()? {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 7 * 86_400_000,
                'M' => 30 * 86_400_000,
                'y' => 365 * 86_400_000,
                _ => return None,
            };
            (unit, 1)
        };
        if unit >= last_unit {
            return None;
        }
        last_unit = unit;
        rest = &rest[len..];
        total = total.checked_add(number.checked_mul(unit)?)?;
    }
    Some(total)
}

/// A size as NGINX writes it, in bytes: a number with an optional `k`, `m`
/// or `g` (either case).
pub fn size_bytes(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1 << 10),
        (i, 'm' | 'M') => (&text[..i], 1 << 20),
        (i, 'g' | 'G') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse::<u64>().ok()?.checked_mul(unit)
}

/// A whole number (`weight=3`, `keepalive 32`).
pub fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(time_ms("30"), Some(30_000));
        assert_eq!(time_ms("0"), Some(0));
    }

    #[test]
    fn units_combine_largest_first() {
        assert_eq!(time_ms("500ms"), Some(500));
        assert_eq!(time_ms("10s"), Some(10_000));
        assert_eq!(time_ms("1m30s"), Some(90_000));
        assert_eq!(time_ms("1h"), Some(3_600_000));
        assert_eq!(time_ms("1d12h"), Some(129_600_000));
        assert_eq!(time_ms("1w"), Some(604_800_000));
    }

    #[test]
    fn a_malformed_time_is_refused() {
        for bad in [
            "",
            "s",
            "10x",
            "1s1m",
            "1m1m",
            "-1s",
            "1.5s",
            "99999999999999999999d",
        ] {
            assert_eq!(time_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_take_k_m_and_g_in_either_case() {
        assert_eq!(size_bytes("512"), Some(512));
        assert_eq!(size_bytes("8k"), Some(8192));
        assert_eq!(size_bytes("10M"), Some(10 << 20));
        assert_eq!(size_bytes("1g"), Some(1 << 30));
        assert_eq!(size_bytes("0"), Some(0));
    }

    #[test]
    fn a_malformed_size_is_refused() {
        for bad in ["", "m", "1.5m", "10t", "-1"] {
            assert_eq!(size_bytes(bad), None, "{bad}");
        }
    }
}
