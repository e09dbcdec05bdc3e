//! Test support shared by several integration test files.
#![allow(dead_code)] // each test file uses a different part

pub mod hostile;
