//! What assembles backends into a running service: the registry of built-in and plugin
//! backends, the plugin loader, and the pieces of the `vfio-variant` command.

pub mod builtin;
pub mod cli;
pub mod lifecycle;
pub mod plugin;
pub mod registry;
