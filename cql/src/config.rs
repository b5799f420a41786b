//! Where and how to connect: the `scylla://` URL and the session built from
//! it.

use crate::{CqlError, Result};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::SerialConsistency;
use std::sync::Arc;
use std::time::Duration;

/// How long establishing the first connection to a node may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Replicas that must answer a read or write (the `consistency=` option).
///
/// Only levels at which a read overlaps every acknowledged write: the same
/// level serves both, and a sync that reads from a replica missing seq 8
/// but holding 9 would skip 8 for good. `one` and `local_one` are refused
/// for that reason. `local_quorum` gives read-your-writes within its data
/// center, which is where a node reads and writes.
///
/// Serial (LWT) consistency is not configurable: it is always LOCAL_SERIAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Quorum,
    LocalQuorum,
    EachQuorum,
    All,
}

/// The accepted spellings, as an error lists them.
const ALLOWED_CONSISTENCY: &str = "local_quorum, quorum, each_quorum, all";

impl Consistency {
    /// The URL spelling, case-insensitive.
    fn parse(text: &str) -> std::result::Result<Self, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "quorum" => Consistency::Quorum,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "all" => Consistency::All,
            level @ ("one" | "local_one") => {
                return Err(format!(
                    "consistency {level:?} can read a replica that misses an acknowledged \
                     write; use one of {ALLOWED_CONSISTENCY}"
                ));
            }
            other => {
                return Err(format!(
                    "unknown consistency {other:?}; use one of {ALLOWED_CONSISTENCY}"
                ));
            }
        })
    }

    /// The one place our levels meet the driver's.
    fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as Driver;
        match self {
            Consistency::Quorum => Driver::Quorum,
            Consistency::LocalQuorum => Driver::LocalQuorum,
            Consistency::EachQuorum => Driver::EachQuorum,
            Consistency::All => Driver::All,
        }
    }
}

/// Where and how to connect, parsed from
/// `scylla://host:port[,host:port...]/keyspace[?replication=N&dc=NAME&consistency=LEVEL&timeout_ms=N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScyllaConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Replicas per data center when the keyspace is created.
    pub replication: u32,
    pub datacenter: String,
    pub consistency: Consistency,
    pub request_timeout: Duration,
}

impl ScyllaConfig {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: String| CqlError::InvalidUrl {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| bad("expected scylla://host:port/keyspace".into()))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = location
            .split_once('/')
            .ok_or_else(|| bad("missing /keyspace".into()))?;
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() {
            return Err(bad("no hosts".into()));
        }
        // Names are spliced into CQL text: only identifier characters.
        let valid_keyspace = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && keyspace.starts_with(|c: char| c.is_ascii_alphabetic());
        if !valid_keyspace {
            return Err(bad(format!(
                "keyspace {keyspace:?} must be 1-48 of a-z A-Z 0-9 _, starting with a letter"
            )));
        }
        let mut config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_owned(),
            replication: 3,
            datacenter: "datacenter1".into(),
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(5),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not key=value")))?;
            match key {
                "replication" => {
                    config.replication =
                        value.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                            bad(format!("replication {value:?} is not a positive number"))
                        })?
                }
                "dc" => {
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                    {
                        return Err(bad(format!("dc {value:?} is not a data center name")));
                    }
                    config.datacenter = value.to_owned();
                }
                "consistency" => config.consistency = Consistency::parse(value).map_err(bad)?,
                "timeout_ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| bad(format!("timeout_ms {value:?}")))?;
                    config.request_timeout = Duration::from_millis(ms.max(1));
                }
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        Ok(config)
    }

    /// Connects and creates the keyspace if it does not exist.
    pub async fn connect(&self) -> Result<Arc<Session>> {
        let profile = ExecutionProfile::builder()
            .consistency(self.consistency.to_driver())
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(self.request_timeout))
            .build()
            .into_handle();
        let session = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(profile)
            // A write's timestamp is when it was issued, not when it reached
            // a coordinator: a write that lands late (a frozen process
            // resumed, a hint replayed) then never overwrites one issued
            // after it, by this node or by the writer that took over.
            .timestamp_generator(std::sync::Arc::new(
                scylla::policies::timestamp_generator::MonotonicTimestampGenerator::new(),
            ))
            .connection_timeout(CONNECTION_TIMEOUT)
            .build()
            .await
            .map_err(|e| CqlError::Unavailable {
                nodes: self.nodes.join(","),
                reason: e.to_string(),
            })?;
        let create = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'NetworkTopologyStrategy', '{}': {}}}",
            self.keyspace, self.datacenter, self.replication
        );
        session
            .query_unpaged(create, ())
            .await
            .map_err(CqlError::query)?;
        Ok(Arc::new(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let config = ScyllaConfig::parse("scylla://10.0.0.1:9042,10.0.0.2:9042/timeline").unwrap();
        assert_eq!(config.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(config.keyspace, "timeline");
        assert_eq!(
            (config.replication, config.consistency),
            (3, Consistency::LocalQuorum)
        );
        let config = ScyllaConfig::parse(
            "scylla://h:1/k?replication=1&consistency=quorum&dc=dc2&timeout_ms=250",
        )
        .unwrap();
        assert_eq!(config.replication, 1);
        assert_eq!(config.consistency, Consistency::Quorum);
        assert_eq!(config.datacenter, "dc2");
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        for bad in [
            "http://h:1/k",
            "scylla://h:1",
            "scylla:///k",
            "scylla://h:1/k;drop",
            "scylla://h:1/k?replication=0",
            "scylla://h:1/k?consistency=most",
            "scylla://h:1/k?color=blue",
            "scylla://h:1/k?dc=a'b",
        ] {
            assert!(ScyllaConfig::parse(bad).is_err(), "{bad}");
        }
    }

    /// A level under which a read may miss an acknowledged write lets a sync
    /// see seq 9 from a replica that lacks seq 8, and skip 8 for good.
    #[test]
    fn levels_without_read_your_writes_are_refused() {
        for level in ["one", "local_one", "ONE", "Local_One"] {
            let url = format!("scylla://h:1/k?consistency={level}");
            let error = ScyllaConfig::parse(&url).expect_err(&url).to_string();
            for allowed in ["local_quorum", "quorum", "each_quorum", "all"] {
                assert!(error.contains(allowed), "{error}");
            }
        }
        for (level, expected) in [
            ("quorum", Consistency::Quorum),
            ("local_quorum", Consistency::LocalQuorum),
            ("each_quorum", Consistency::EachQuorum),
            ("all", Consistency::All),
        ] {
            let url = format!("scylla://h:1/k?consistency={level}");
            assert_eq!(ScyllaConfig::parse(&url).unwrap().consistency, expected);
        }
    }
}
