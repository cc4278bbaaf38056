//! Incoming email over POP3.

use super::{Ctx, Stop};
use crate::test_enable::Problem;

pub(super) async fn session(cx: &Ctx<'_>) -> Result<Stop, Stop> {
    Err(Stop::Failed(Problem::config(
        "connector_not_available",
        format!(
            "synchronization over POP3 is not available in this version yet ({})",
            cx.mailbox.email
        ),
    )))
}
