//! The command line, the top layer: flags ([`args`]), what each command does
//! ([`commands`]), how results are shown ([`render`]) and stopping on signals ([`signals`]).
//!
//! Owns: everything a user types and reads on a terminal. Must not: be imported by the
//! library; everything below it is usable without it.

pub mod args;
pub mod commands;
mod render;
mod signals;
