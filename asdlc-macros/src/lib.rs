//! The `#[event_handler]` attribute of asdlc.
//!
//! Use it through the `asdlc` crate (`asdlc::event_handler`, or `asdlc::prelude::*`); the
//! code it generates names only `::asdlc::__private`, so a project depends on `asdlc` alone.

mod args;
mod errors;
mod expand;
mod signature;
mod suggest;

use proc_macro::TokenStream;

/// Declares an `async fn` as the handler of some event types in a consumer group.
///
/// ```ignore
/// use asdlc::prelude::*;
///
/// #[event_handler(types = [TaskCreated, TaskDispatched], group = "development-handlers")]
/// async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
///     tracing::info!(task = ?event.task_id, attempt = ctx.attempt(), "working on it");
///     HandlerResult::ok()
/// }
/// ```
///
/// The function is kept as written, so it can still be called directly (in a unit test,
/// with `HandlerContext::detached()` and `State::new(value)` for its state, no Redis
/// needed). Beside it the attribute generates a
/// hidden `EventHandler` implementation that calls it, and registers that with the runtime,
/// which finds every handler of the program through `asdlc::registered_handlers()`.
///
/// The registration lives in the crate that declares the handler, and rustc links a
/// dependency only if the binary names it: handlers in a library crate the binary never
/// refers to are left out silently. Add `use that_crate as _;` to the binary; a runtime that
/// finds no handler at all fails with `RegistryError::NoHandlers`, which says so.
///
/// # The function
///
/// - It is an `async fn`: not `const`, `unsafe` or `extern`, without generic parameters,
///   `where` clause or `self`.
/// - It takes `(event: &AsdlcEvent)` or `(event: &AsdlcEvent, ctx: &HandlerContext)`, each
///   parameter a name or `_`, then any number of `State<T>` parameters (any pattern, like
///   `State(db): State<Db>`): the values of those types given to the runtime with
///   `.state(...)`. A runtime missing one fails at `build()` with
///   `RegistryError::MissingState`, naming the handler and the type.
/// - It returns `HandlerResult`, `()` (or nothing), `Result<HandlerResult, HandlerError>`
///   or `Result<(), HandlerError>`: anything implementing `IntoHandlerResult`. An `Err`
///   is retried unless it is `HandlerError::permanent`.
/// - Its future is `Send`: the runtime runs handlers on a multi-threaded executor, so a
///   handler cannot hold an `Rc` or a `std::sync::MutexGuard` across an `.await`.
///
/// ```ignore
/// use asdlc::prelude::*;
///
/// struct Db { url: String }
///
/// #[event_handler(types = [TaskCreated], group = "tasks")]
/// async fn store(event: &AsdlcEvent, ctx: &HandlerContext, State(db): State<Db>) {
///     tracing::info!(db = %db.url, attempt = ctx.attempt(), "storing {}", event.session_id);
/// }
///
/// // main: Runtime::builder().state(Db { url: "postgres://db".into() }).build().await?
/// // a unit test: store(&event, &HandlerContext::detached(), State::new(Db { .. })).await
/// ```
///
/// # Arguments
///
/// | argument | | |
/// |---|---|---|
/// | `types = [TaskCreated, ...]` | required | The event types handled: `EventType` variant names, at least one, each once. `EventType::TaskCreated` is accepted too. |
/// | `group = "..."` | required | The consumer group: 1 to 63 lowercase ASCII letters, digits, `-`, `_` or `.`. |
/// | `name = "..."` | | The name in logs, metrics and dead-letter entries. Default: the function's path, `module_path!()::fn_name`. |
/// | `max_deliveries = 5` | | Deliveries before the event is dead-lettered (at least 1). Default: the consumer's. |
/// | `timeout = "30s"` | | How long one call may run before it counts as a retryable failure: a whole number of `ms`, `s` or `m`. Default: the consumer's. |
/// | `concurrency = 4` | | How many events this handler may work on at once (at least 1). Default: the consumer's. |
/// | `ordered_by = session` | | Handles events with the same key one at a time, in stream order, across the group: `session` (the `session_id`) or `task` (the `task_id`; events without one are not ordered). Default: unordered. See the book's Ordering chapter. |
/// | `crate = "::asdlc"` | | The path of the asdlc crate, for a renamed dependency (`crate = "::my_asdlc"`) or a crate using `asdlc-runtime` directly (`crate = "::asdlc_runtime"`). |
///
/// ```ignore
/// use asdlc::prelude::*;
///
/// #[event_handler(
///     types = [PatchCreated],
///     group = "review",
///     name = "review-patch",
///     max_deliveries = 3,
///     timeout = "2m",
///     concurrency = 2,
/// )]
/// async fn review(event: &AsdlcEvent, _: &HandlerContext) -> Result<(), HandlerError> {
///     let Some(task) = &event.task_id else {
///         return Err(HandlerError::permanent("a patch event without a task"));
///     };
///     tracing::info!(%task, "reviewing");
///     Ok(())
/// }
/// ```
///
/// # Errors
///
/// Mistakes in the arguments or the function's shape are reported together, each at its
/// token ("unknown argument \`grup\`; did you mean \`group\`?"); the function is still
/// emitted, so the rest of the crate keeps compiling against it. An unknown event type,
/// wrong parameter types, an unsupported return type and a future that is not `Send` are
/// reported by rustc, at the type's name (with rustc's suggestion of the variant meant), the
/// parameter, the return type and the function name.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::event_handler(args.into(), item.into()).into()
}
