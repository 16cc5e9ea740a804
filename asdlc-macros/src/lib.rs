//! The `#[event_handler]` attribute of asdlc.

use proc_macro::TokenStream;

/// Declares an async function as an event handler (placeholder while the macro is built).
#[proc_macro_attribute]
pub fn event_handler(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}
