//! Which lifecycle and alert events an endpoint receives (SPEC §6).

use super::{endpoint_id, require_current_schema, required, string_list};
use crate::error::{OrRaise, Result};
use crate::events;
use pgrx::prelude::*;

/// Replace the set of event types `endpoint` receives; '{}' clears it.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn subscribe_events(endpoint: Option<&str>, events: Option<Vec<Option<String>>>) {
    let run = || -> Result<()> {
        let name = required(endpoint, "endpoint")?;
        let events = required(string_list(events, "events")?, "events")?;
        let events = events::validate(&events)?;
        Spi::connect_mut(|client| -> Result<()> {
            require_current_schema(client)?;
            let id = endpoint_id(client, name)?;
            client.update(
                "UPDATE webhook.endpoint SET events = $2 WHERE id = $1",
                None,
                &[id.into(), events.into()],
            )?;
            Ok(())
        })
    };
    run().or_raise()
}
