//! Kubernetes byte quantities (`64Mi`, `1G`, `4096`), as the API server
//! accepts them for memory, restricted to whole bytes.

/// Parses a byte quantity: a non-negative integer with an optional binary
/// (`Ki Mi Gi Ti`) or decimal (`k M G T`) suffix. Errors name the fix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a byte quantity; use an integer with an optional suffix \
             Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000), e.g. 64Mi"
        )
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let (num, suffix) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large; use at most a few Ti"))
}

/// Formats bytes the way `kubectl` users read them: the largest binary unit
/// that divides evenly (`65536` → `64Ki`).
pub fn format_bytes(n: u64) -> String {
    for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("2Ki"), Ok(2048));
    }

    #[test]
    fn bad_input_names_the_fix() {
        for s in ["", "Mi", "64mb", "-1", "1.5Gi", "64 Mi"] {
            let e = parse_bytes(s).unwrap_err();
            assert!(e.contains("e.g. 64Mi"), "{s}: {e}");
        }
        assert!(
            parse_bytes("99999999999Ti")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn format_round_trips() {
        for n in [0u64, 1, 4096, 65536, 64 << 20, 3 << 30, 12345] {
            assert_eq!(parse_bytes(&format_bytes(n)), Ok(n));
        }
        assert_eq!(format_bytes(64 << 20), "64Mi");
    }
}
