//! Property tests for the normalisation that customer matching relies on.

use mapper::template::filters::{normalize_email, normalize_phone};
use proptest::prelude::*;

proptest! {
    /// Any way of writing a valid US number normalises to the same E.164 string.
    #[test]
    fn us_numbers_normalise_whatever_the_punctuation(
        area in 201u32..989, exchange in 200u32..999, line in 0u32..9999,
        style in 0usize..6,
    ) {
        let canonical = format!("+1{area}{exchange}{line:04}");
        prop_assume!(normalize_phone(&canonical, "US").is_some());
        let written = match style {
            0 => format!("({area}) {exchange}-{line:04}"),
            1 => format!("{area}-{exchange}-{line:04}"),
            2 => format!("+1 {area} {exchange} {line:04}"),
            3 => format!("1{area}{exchange}{line:04}"),
            4 => format!("+1-{area}-{exchange}-{line:04}"),
            _ => format!("{area}.{exchange}.{line:04}"),
        };
        prop_assert_eq!(normalize_phone(&written, "US"), Some(canonical));
    }

    /// Normalising is idempotent: an E.164 result normalises to itself.
    #[test]
    fn e164_is_a_fixed_point(raw in "[+]?[0-9 ()-]{4,20}") {
        if let Some(once) = normalize_phone(&raw, "US") {
            prop_assert!(once.starts_with('+'));
            prop_assert!(once[1..].chars().all(|c| c.is_ascii_digit()));
            prop_assert_eq!(normalize_phone(&once, "GB"), Some(once.clone()));
        }
    }

    /// Numbers that differ only in the country code never collide, unlike the
    /// seed's digits-only rule (+1-555-1234 → 5551234).
    #[test]
    fn country_code_is_kept(national in 2_000_000_000u64..9_999_999_999) {
        let us = normalize_phone(&format!("+1{national}"), "US");
        let other = normalize_phone(&format!("+44{national}"), "US");
        if let (Some(a), Some(b)) = (us, other) {
            prop_assert_ne!(a, b);
        }
    }

    /// Email matching is case- and whitespace-insensitive, and idempotent.
    #[test]
    fn emails_match_case_insensitively(local in "[a-zA-Z0-9._]{1,12}", domain in "[a-zA-Z]{1,10}", tld in "[a-zA-Z]{2,4}", pad in " {0,3}") {
        let addr = format!("{pad}{local}@{domain}.{tld}{pad}");
        let normal = normalize_email(&addr).unwrap();
        prop_assert_eq!(normalize_email(&addr.to_uppercase()), Some(normal.clone()));
        prop_assert_eq!(normalize_email(&normal), Some(normal.clone()));
        prop_assert_eq!(normal.clone(), normal.to_lowercase());
    }

    /// Text without an @ is never taken for an email.
    #[test]
    fn non_addresses_are_rejected(text in "[a-zA-Z0-9 .]{0,20}") {
        prop_assert_eq!(normalize_email(&text), None);
    }
}

#[test]
fn leading_zero_numbers_do_not_change_on_a_second_pass() {
    // Found by `e164_is_a_fixed_point`: a national part of zeros formatted to another number.
    for raw in ["+43000010", "+390612345678", "+4930123456"] {
        if let Some(once) = normalize_phone(raw, "US") {
            assert_eq!(normalize_phone(&once, "GB"), Some(once.clone()), "{raw}");
        }
    }
}
