//! ClickSend (being written).
