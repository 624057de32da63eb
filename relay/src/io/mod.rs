//! The I/O shell around [`crate::turn::Server`].
