//! In-database tests (`cargo pgrx test`): argument validation and payload capture, read back
//! from the queue inside the test's transaction.
