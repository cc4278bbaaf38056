//! CalDAV/CardDAV: appointments and tasks in a CalDAV calendar, contacts in a CardDAV address
//! book, as an [`crate::items::ItemStore`].
//!
//! - [`vobject`]: the iCalendar/vCard content-line codec (a generic tree of components and
//!   properties, so what serversync does not map — alarms, `X-` properties, unknown
//!   parameters — survives an update untouched).
//! - [`mapping`]: a calendar object or vCard ↔ the synchronized values
//!   (`serversync_model::itemvalues`).

pub mod client;
pub mod mapping;
pub mod vobject;
