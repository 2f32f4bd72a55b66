//! gong-ingest against a real nats-server.

mod support;

mod auth_modes;
mod bounds;
mod hostile;
mod outages;
mod process;
