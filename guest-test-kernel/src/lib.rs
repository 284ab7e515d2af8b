//! Host-testable parts of the test guest (option parsing, patterns, statistics).
#![no_std]
