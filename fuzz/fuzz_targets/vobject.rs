//! Bytes → the iCalendar/vCard codec (`connectors::dav::vobject`) and the CalDAV/CardDAV
//! mapping (`connectors::dav::mapping`). Never a panic; a parsed tree serializes to text that
//! parses to the same tree; values read from a text write back into it (as an update) without
//! a panic, to a text that parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serversync_connectors::dav::{mapping, vobject};
use serversync_model::webhook::RecordType;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tree) = vobject::parse(text) else {
        return;
    };
    for c in &tree {
        let written = c.to_text();
        let again = vobject::parse(&written)
            .unwrap_or_else(|e| panic!("serialized text does not parse: {e}\n{written}"));
        assert_eq!(again, vec![c.clone()], "{written}");
    }
    for kind in [RecordType::Appointment, RecordType::Task, RecordType::Contact] {
        let Ok(values) = mapping::to_values(kind, text) else {
            continue;
        };
        if let Ok(out) = mapping::from_values(kind, &values, Some(text)) {
            vobject::parse(&out)
                .unwrap_or_else(|e| panic!("written text does not parse: {e}\n{out}"));
        }
    }
});
