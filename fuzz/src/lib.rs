//! What the fuzz targets share.

use std::sync::Once;

/// libFuzzer's panic hook aborts at once, before a panic can unwind. `connectors::mime` and
/// `connectors::dsn` catch panics of mail-parser (its `debug_assert!`s, on in fuzz builds) and
/// treat the message as unreadable; for those panics this hook returns, so they unwind to
/// that guard, and the target checks what the guard made of the message. Every other panic
/// still aborts.
pub fn let_mail_parser_panics_unwind() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"));
            if !in_mail_parser {
                abort(info);
            }
        }));
    });
}
