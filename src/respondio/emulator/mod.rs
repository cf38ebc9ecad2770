//! The respond.io emulator (being written).
