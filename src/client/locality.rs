//! Where a process runs, as the mesh client needs it to choose instances: its zone and the
//! datacenters its calls fail over to (flags every service and the gateway take; see
//! [`super::zone`] and [`super::discovery`]).

use clap::Args;

/// Where a process runs, as the mesh client needs it to choose instances (the gateway and every
/// service take these flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Locality {
    /// The zone this process runs in: an instance writes it to its Consul meta `zone`, and calls
    /// prefer instances of the same zone while they are healthy and not overloaded.
    #[arg(long, env = "PROTOMESH_ZONE", value_parser = parse_zone)]
    pub zone: Option<String>,

    /// Datacenters to call, in this order, when a service has no passing instance in the local
    /// one (comma-separated; the Consul datacenters must be joined over the WAN).
    #[arg(
        long = "failover-datacenters",
        env = "PROTOMESH_FAILOVER_DATACENTERS",
        value_delimiter = ',',
        value_parser = parse_datacenter
    )]
    pub failover_datacenters: Vec<String>,
}

/// A zone name: 1 to 64 letters, digits, `-` or `_` (it goes into Consul meta and logs as is).
fn parse_zone(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err("expected 1 to 64 letters, digits, '-' or '_'".to_owned())
    }
}

/// A datacenter name as Consul accepts it (it lowercases the names it is given and checks them
/// against `^[a-z0-9_-]+$`), so that it matches the datacenter's own name.
fn parse_datacenter(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err("expected a Consul datacenter name: lowercase letters, digits, '-' or '_'".to_owned())
    }
}
