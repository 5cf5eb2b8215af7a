//! Recording a command for a node's hive: the node aggregate's rules decide what it records
//! ([`rbee_projections::aggregate::node`]); the hive reads it through its durable consumer.

use rbee_bus::{EventLog, Expected, Meta};
use rbee_projections::aggregate::node::{self, NodeCommand};

use crate::error::{CliError, CliResult};
use crate::live::unavailable;

pub async fn send(log: &EventLog, command: NodeCommand, meta: &Meta) -> CliResult<()> {
    let events = node::decide(&command)
        .map_err(|code| CliError::new(code, format!("the command is not well-formed: {command:?}")))?;
    for event in events {
        // A command goes after whatever the node's subject holds: commands do not race each other.
        log.append(event, Expected::Any, meta).await.map_err(unavailable)?;
    }
    Ok(())
}
