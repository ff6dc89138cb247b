//! Request dialects: what the router reads from a request body and how it edits the body for
//! one attempt, without parsing or re-serialising what it does not touch.

pub mod openai;
