//! Integration tests, built as one binary to spare link time.

mod support;

mod backfill;
mod catalog;
mod changes;
mod cluster;
mod console;
mod end_to_end;
mod follow;
mod forget;
mod gates;
mod history;
mod http;
mod incremental;
mod layers;
mod lock;
mod pg;
mod predictive;
mod preview;
mod publishing;
mod reference;
mod s3;
mod s3_server;
mod serve;
mod sources;
mod state_segments;
mod tag_cases;
mod tags_family;
mod tasks;
