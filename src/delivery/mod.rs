//! Delivery targets: where a credential's current key is handed to its consumers.
