//! Prometheus metrics and their HTTP listener.
