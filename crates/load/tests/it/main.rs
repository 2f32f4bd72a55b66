//! gong-load against a real nats-server (and moto for S3).

mod support;

mod crash;
mod loading;
mod process;
mod ranges;
mod replay;
mod s3;
mod snowflake;
