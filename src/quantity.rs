//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`) as exact integers.
//!
//! The API server canonicalises quantities (`0.5` is stored as `500m`), so comparing a desired
//! value with a live one needs their numeric values. Floating point would round (`1.1Gi` has no
//! exact `f64`), so a quantity is held in nano-units in an `i128`: the API server itself keeps at
//! most nine decimal places, and the largest suffix (`Ei`, 2^60) times 10^9 still leaves room.

use std::cmp::Ordering;

/// The value of a quantity in units of 10^-9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nanos(i128);

const NANO: i128 = 1_000_000_000;

/// Parses a quantity, or `None` when it is malformed, has more than nine decimal places, or
/// does not fit.
pub fn parse(q: &str) -> Option<Nanos> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 9
    {
        return None;
    }
    // The number as an integer count of nano-units.
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_nanos: i128 = if fraction.is_empty() {
        0
    } else {
        let scale = 10i128.pow(u32::try_from(9 - fraction.len()).ok()?);
        fraction.parse::<i128>().ok()?.checked_mul(scale)?
    };
    let mut nanos = whole.checked_mul(NANO)?.checked_add(fraction_nanos)?;
    if negative {
        nanos = -nanos;
    }
    // Multiply (or divide, for the sub-unit suffixes) by the suffix.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, NANO),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            let p = 10i128.checked_pow(exp.unsigned_abs())?;
            if exp >= 0 { (p, 1) } else { (1, p) }
        }
        _ => return None,
    };
    let scaled = nanos.checked_mul(mul)?;
    // Below a nano-unit the API server rounds up; equal values round the same way.
    Some(Nanos(
        scaled.div_euclid(div) + i128::from(scaled.rem_euclid(div) != 0),
    ))
}

/// A quantity of whole units (bytes, say), or `None` when malformed, fractional or negative.
pub fn whole(q: &str) -> Option<u64> {
    let Nanos(n) = parse(q)?;
    (n % NANO == 0)
        .then(|| u64::try_from(n / NANO).ok())
        .flatten()
}

/// Compares two quantities by value; `None` when either is malformed.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exact() {
        assert_eq!(parse("500m"), parse("0.5"));
        assert_eq!(parse("1Gi"), Some(Nanos(1_073_741_824 * NANO)));
        assert_eq!(parse("2e3"), parse("2k"));
        assert_eq!(parse("1.1Gi"), Some(Nanos(1_181_116_006_400_000_000)));
        assert_eq!(parse("1024Mi"), parse("1Gi"));
        assert_eq!(parse("-1"), Some(Nanos(-NANO)));
        assert_eq!(parse("1n"), Some(Nanos(1)));
        assert_eq!(parse("8Ei"), Some(Nanos((8i128 << 60) * NANO)));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for q in [
            "",
            "x",
            "1x",
            "1.2.3",
            "..",
            "1.0000000001",
            "Gi",
            "1e",
            "--1",
        ] {
            assert_eq!(parse(q), None, "{q:?}");
        }
    }

    #[test]
    fn whole_units() {
        assert_eq!(whole("64Mi"), Some(64 << 20));
        assert_eq!(whole("1k"), Some(1000));
        assert_eq!(whole("500m"), None);
        assert_eq!(whole("-1"), None);
    }

    #[test]
    fn comparison() {
        assert_eq!(compare("2Gi", "1Gi"), Some(Ordering::Greater));
        assert_eq!(compare("1000m", "1"), Some(Ordering::Equal));
        assert_eq!(compare("100m", "1"), Some(Ordering::Less));
        assert_eq!(compare("1", "nonsense"), None);
        // f64 would call these equal.
        assert_eq!(
            compare("9007199254740993", "9007199254740992"),
            Some(Ordering::Greater)
        );
    }
}
