//! ClickSend stand-in (being written).
