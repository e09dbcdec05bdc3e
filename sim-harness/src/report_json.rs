//! The one JSON writer of every report `vdpa-emu` prints (validate, migrate, scenario, bench):
//! serde_json, pretty-printed, so strings are escaped per RFC 8259 section 7 (quotes,
//! backslashes and every control character below U+0020).

use serde::Serialize;

/// `value` as pretty-printed JSON. A value serde cannot serialize (a map with non-string keys,
/// a failing custom impl) becomes `{"error": "..."}`, still valid JSON.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("serializing the report: {e}") }).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let s = "tab\there, bell\u{7}, nul\u{0}, quote \" backslash \\ newline\n";
        let j = to_json(&serde_json::json!({ "s": s }));
        assert!(!j.contains('\u{7}') && !j.contains('\u{0}') && !j.contains('\t'));
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["s"], s);
    }
}
