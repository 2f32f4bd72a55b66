//! gong-common against a real nats-server: provisioning, settling, dead-letter tools.

mod dlq_tools;
mod lease;
mod provisioning;
mod register;
