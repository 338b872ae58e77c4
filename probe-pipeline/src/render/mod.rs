//! Turning events and journeys into text for people or JSON Lines for programs. Every
//! renderer takes its words from [`facts`], so text and JSON of the same journey name the same
//! places, rewrites and outcome.

pub mod clock;
pub mod events;
pub mod facts;
pub mod timeline;

pub use clock::Clock;
pub use events::Renderer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}
