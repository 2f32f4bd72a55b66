//! gong-load against a real nats-server (and moto for S3).

mod support;

mod consistency;
mod crash;
mod entities;
mod loading;
mod process;
mod ranges;
mod replay;
mod replicas;
mod robustness;
mod s3;
mod snowflake;
mod verify;
