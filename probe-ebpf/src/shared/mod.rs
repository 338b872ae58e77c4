//! What the attach points share: the maps every program writes, the globals userspace fills
//! in at load time (configuration, kernel layout), packet parsing (from a tc context or an skb
//! in kernel memory), the filter, latency mode's in-kernel histograms and watch mode's counts.

pub mod config;
pub mod filter;
pub mod latency;
pub mod layout;
pub mod maps;
pub mod nesting;
pub mod netns;
pub mod packet;
pub mod skb;
pub mod watch;
