//! Allocations, their permissions and channels, and the table that finds
//! them by client five-tuple and by relay socket.
