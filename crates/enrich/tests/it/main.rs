//! gong-enrich against a real nats-server and the Gong double.

mod support;

mod enrichment;
mod entities;
mod faults;
mod pacing;
mod process;
mod quota;
mod replay;
mod sweep;
