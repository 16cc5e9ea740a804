//! asdlc: declarative event handlers on Redis Streams.
//!
//! ```no_run
//! use asdlc::prelude::*;
//!
//! #[asdlc::event_handler(types = [TaskCreated, TaskDispatched], group = "development-handlers")]
//! async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
//!     tracing::info!(task = ?event.task_id, attempt = ctx.attempt(), "working on it");
//!     HandlerResult::ok()
//! }
//! ```
//!
//! What a handler needs (a pool, a client, settings) is given to the runtime once and taken
//! by type, as a `State<T>` parameter after the event (and the context); a runtime missing
//! one fails at `build()` with [`RegistryError::MissingState`], naming the handler and the
//! type. The function stays callable: a unit test passes `State::new(value)`.
//!
//! ```no_run
//! use asdlc::prelude::*;
//!
//! struct Db {
//!     url: String,
//! }
//!
//! #[asdlc::event_handler(types = [TaskCompleted], group = "reporting")]
//! async fn record(event: &AsdlcEvent, State(db): State<Db>) {
//!     tracing::info!(db = %db.url, session = %event.session_id, "recording");
//! }
//!
//! # async fn demo() -> Result<(), asdlc::RuntimeError> {
//! Runtime::builder()
//!     .state(Db { url: "postgres://db/reports".into() })
//!     .build()
//!     .await?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The runtime finds every handler linked into the program. Handlers declared in a library
//! crate are linked only if the binary names that crate: add `use that_crate as _;` to the
//! binary, or they are left out (a runtime that finds none fails with
//! [`RegistryError::NoHandlers`], which says so).
//!
//! Everything here is re-exported from `asdlc-runtime`; see its modules for the details.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use asdlc_macros::event_handler;
pub use asdlc_runtime::*;

/// The operator's web dashboard (feature `dashboard`): [`dashboard::router`] to mount in an
/// axum application, [`dashboard::serve`] to run it alone. See the book's Dashboard chapter.
#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub use asdlc_dashboard as dashboard;

/// The names nearly every handler module uses, and the attribute.
pub mod prelude {
    pub use asdlc_macros::event_handler;
    pub use asdlc_runtime::prelude::*;
}

/// The user guide's chapters (`book/src`), so `cargo test --doc` compiles every Rust sample in
/// them, and runs those that need no server.
#[cfg(doctest)]
mod book {
    #[doc = include_str!("../book/src/introduction.md")]
    mod introduction {}
    #[doc = include_str!("../book/src/quickstart.md")]
    mod quickstart {}
    #[doc = include_str!("../book/src/concepts.md")]
    mod concepts {}
    #[doc = include_str!("../book/src/handlers.md")]
    mod handlers {}
    #[doc = include_str!("../book/src/macro-errors.md")]
    mod macro_errors {}
    #[doc = include_str!("../book/src/ordering.md")]
    mod ordering {}
    #[doc = include_str!("../book/src/runtime.md")]
    mod runtime {}
    #[doc = include_str!("../book/src/multi-tenancy.md")]
    mod multi_tenancy {}
    #[doc = include_str!("../book/src/recovery.md")]
    mod recovery {}
    #[doc = include_str!("../book/src/scheduling.md")]
    mod scheduling {}
    #[doc = include_str!("../book/src/operations.md")]
    mod operations {}
    #[cfg(feature = "dashboard")]
    #[doc = include_str!("../book/src/dashboard.md")]
    mod dashboard {}
    #[doc = include_str!("../book/src/cluster.md")]
    mod cluster {}
    #[doc = include_str!("../book/src/performance.md")]
    mod performance {}
    #[doc = include_str!("../book/src/reliability.md")]
    mod reliability {}
    #[doc = include_str!("../book/src/migration.md")]
    mod migration {}
    #[doc = include_str!("../README.md")]
    mod readme {}
}
