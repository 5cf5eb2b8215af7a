//! The schemas of event bodies older than today's, frozen, and the upcasts that chain them to
//! today's types: 1 -> 2 -> 3 -> 4 -> 5 -> [`crate::event`] (schema 6).
//!
//! Postcard is not self-describing: an old body is read only with the old shapes exactly, variant
//! order included. So each schema module holds its own copy of every type it names, and a change to
//! today's types cannot change how an old body decodes. A new schema freezes today's types into a
//! new module here and adds one upcast step; a fixture of every event type of every schema stays in
//! `bus/tests/fixtures/` forever.

pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The frame around an event body; it has not changed since schema 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Framed<E> {
    pub id: Uuid,
    pub version: u64,
    pub at_ms: u64,
    pub correlation: Option<String>,
    pub traceparent: Option<String>,
    pub event: E,
}

/// A struct upcast field for field, each field converted by `From`; the compiler checks that both
/// sides have every listed field and that the newer one has no other.
macro_rules! field_for_field {
    ($from:ident => $to:ty { $($field:ident),* $(,)? }) => {
        impl From<$from> for $to {
            #[allow(clippy::useless_conversion)]
            fn from(e: $from) -> Self {
                Self { $($field: e.$field.into()),* }
            }
        }
    };
}

/// An enum of unit variants upcast variant for variant.
macro_rules! unit_for_unit {
    ($from:ident => $to:ty { $($variant:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(e: $from) -> Self {
                match e { $($from::$variant => <$to>::$variant),* }
            }
        }
    };
}

/// An enum of one-field variants upcast variant for variant, each payload by `From`.
macro_rules! variant_for_variant {
    ($from:ident => $to:ty { $($variant:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(e: $from) -> Self {
                match e { $($from::$variant(inner) => <$to>::$variant(inner.into())),* }
            }
        }
    };
}

pub(crate) use {field_for_field, unit_for_unit, variant_for_variant};
