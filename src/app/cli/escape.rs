//! Text from a data directory or a server (object names, SQL values, error messages) shown on a
//! terminal: a name can carry escape sequences that would rewrite the screen.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with control characters, bidirectional overrides and `\` itself (so an escape cannot be
/// faked) written as `\u{..}` escapes; unchanged, and not copied, when it has none.
pub(super) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        // Bidirectional marks, embeddings, overrides and isolates reorder what follows them.
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(
            printable("café ada"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\ny\r\u{9b}"), "x\\u{a}y\\u{d}\\u{9b}");
        assert_eq!(printable("evil\u{202e}txt"), "evil\\u{202e}txt");
        // A literal backslash cannot pose as an escape.
        assert_eq!(printable("\\u{1b}"), "\\u{5c}u{1b}");
    }
}
