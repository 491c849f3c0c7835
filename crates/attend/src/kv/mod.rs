//! Key/value caches.
