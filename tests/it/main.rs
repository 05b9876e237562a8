//! Integration tests: one binary (one link on a 2-core machine), modules by concern.

mod support;

mod admin;
mod alerts;
mod backups;
mod canonical;
mod cluster;
mod config;
mod console;
mod container;
mod crs;
mod events;
mod forwarding;
mod hardening;
mod lifecycle;
mod multipart;
mod network;
mod posture;
mod security;
mod sessions;
mod timeouts;
mod upstreams;
mod waf;
