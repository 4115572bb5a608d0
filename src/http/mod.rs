//! What the relay serves over HTTP besides the webhook and the consent pages: the admin
//! listener ([`admin`]), the pages' templates ([`html`]), and who a request comes from
//! ([`client_address`]).

pub mod admin;
pub mod client_address;
pub mod consent;
pub mod html;
pub mod status;
