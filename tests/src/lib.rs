//! Multi-process integration tests for Timeline live in `tests/`; this library holds their shared harness.
