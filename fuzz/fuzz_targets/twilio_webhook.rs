#![no_main]

// See rio_parse::harness::twilio_webhook for what is read and checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rio_parse::harness::twilio_webhook(data));
