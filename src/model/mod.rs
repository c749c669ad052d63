//! The shared vocabulary of every stage, depending on no other module of
//! the crate: object refs and the JSON text objects are held as, the marks
//! tidegate leaves on objects, the inventory, the record of a sync,
//! checksums and proxy settings.

pub mod address;
pub mod checksum;
pub mod inventory;
pub mod marks;
pub mod object;
pub mod proxy;
pub mod record;

pub use inventory::Inventory;
pub use object::{Json, ObjectRef, shown};

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // Some errors repeat their source's text; print it once.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
