//! Completion queues (being written).
