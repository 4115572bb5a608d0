//! Microsoft's side of the relay: Entra ID ([`tokens`], with the [`certs`] that sign its
//! client assertions), the Management Activity API ([`management`], which owns the error
//! vocabulary), and the one parser for the blobs Microsoft announces ([`notification`]).
//! Tokens are only ever sent to the configured Entra and Management origins
//! (docs/OPERATIONS.md, "Security model").

pub mod management;
pub mod notification;
pub mod tokens;
