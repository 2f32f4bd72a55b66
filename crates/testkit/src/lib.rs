//! Test-only helpers shared by every crate's integration tests, the benches and the simulator.
//!
//! - [`nats::NatsServer`]: a real `nats-server -js` per test (free port, own store), stoppable
//!   and restartable on the same port and store, killed and cleaned up on drop.
//! - [`webhook`]: Gong-shaped webhook bodies and RS256 signing exactly as Gong signs them.
//! - [`s3::MotoServer`]: moto's S3 server on a free port, for stage tests.
//! - [`wait`]: polling observable state under a timeout (never sleeping for state).
//! - [`gong_double`]: the Gong REST API double; [`sim`]: it as the `gong-sim serve` server.
//! - [`proxy::Proxy`]: a TCP proxy switchable down (connections refused, open ones cut) and up.
//! - [`snowpipe_double`]: the Snowpipe REST API double (key-pair JWT, `insertFiles`,
//!   `insertReport`, `loadHistoryScan`, scripted load outcomes).

pub mod cluster;
pub mod gong_double;
pub mod nats;
pub mod proxy;
pub mod s3;
pub mod sim;
pub mod snowpipe_double;
pub mod wait;
pub mod webhook;

pub use nats::NatsServer;
pub use wait::wait_until;
