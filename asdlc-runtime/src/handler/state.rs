//! State handed to handlers: values of any `Send + Sync + 'static` type, given once to the
//! runtime ([`RuntimeBuilder::state`](crate::RuntimeBuilder::state)) or to a consumer
//! ([`EventConsumerBuilder::state`](crate::EventConsumerBuilder::state)), and lent by type to
//! every handler that asks: as a [`State<T>`] parameter of an `#[event_handler]` function, or
//! with [`HandlerContext::state`].
//!
//! A handler says which types it needs ([`EventHandler::required_state`]; the macro lists its
//! `State<T>` parameters), and `build()` refuses a handler whose state was not given, naming
//! the handler and the type, so a missing value is found at startup rather than at the first
//! event.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::{BoxFuture, EventHandler, HandlerContext, HandlerResult};

/// A shared value a handler was given, by type: the runtime's `.state(value)`, lent to every
/// handler that takes a `State<T>` parameter or calls [`HandlerContext::state`].
///
/// It derefs to `T`, and clones share the one value (the `Arc` inside). `T` may be unsized,
/// for a trait object given with `.state_arc(Arc::new(..) as Arc<dyn Trait>)`.
///
/// ```
/// use std::sync::Arc;
/// use asdlc_runtime::State;
///
/// struct Db {
///     url: String,
/// }
///
/// let State(db) = State::new(Db { url: "postgres://db".into() });
/// assert_eq!(db.url, "postgres://db");
/// let state = State(db.clone());
/// assert!(Arc::ptr_eq(&state.0, &db));
/// assert_eq!(state.url.len(), 13); // through `Deref`
/// ```
pub struct State<T: ?Sized>(pub Arc<T>);

impl<T> State<T> {
    /// Wraps `value`, for calling a handler function directly in a unit test.
    pub fn new(value: T) -> Self {
        State(Arc::new(value))
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        State(self.0.clone())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&&*self.0).finish()
    }
}

impl<T: ?Sized> From<Arc<T>> for State<T> {
    fn from(value: Arc<T>) -> Self {
        State(value)
    }
}

/// One state type a handler needs: what [`EventHandler::required_state`] lists, and what the
/// startup check looks up. Built in a `const` with [`StateType::of`].
///
/// ```
/// use asdlc_runtime::StateType;
///
/// struct Db;
/// const NEEDS: &[StateType] = &[StateType::of::<Db>(), StateType::of::<str>()];
/// assert_eq!(NEEDS[0], StateType::of::<Db>());
/// assert_ne!(NEEDS[0], NEEDS[1]);
/// assert!(NEEDS[0].type_name().ends_with("Db"));
/// ```
#[derive(Clone, Copy)]
pub struct StateType {
    // Functions, not values: `TypeId::of` and `type_name` are not usable in every `const`.
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl StateType {
    /// The state type `T`.
    pub const fn of<T: ?Sized + 'static>() -> Self {
        StateType {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }

    /// Its `TypeId`.
    pub fn type_id(&self) -> TypeId {
        (self.id)()
    }

    /// Its name, as `std::any::type_name` gives it (for messages only: not unique, not stable).
    pub fn type_name(&self) -> &'static str {
        (self.name)()
    }
}

impl PartialEq for StateType {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

impl Eq for StateType {}

impl std::hash::Hash for StateType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.type_id().hash(state);
    }
}

impl fmt::Debug for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StateType").field(&self.type_name()).finish()
    }
}

impl fmt::Display for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// The values given to a runtime or a consumer, one per type. Cheap to clone: clones share
/// the map until one of them adds a value.
#[derive(Clone, Default)]
pub(crate) struct StateMap {
    // Each value is an `Arc<T>` under its `T`'s id, so `T` may be unsized. `None` until the
    // first value, so a context without state costs no allocation.
    values: Option<Arc<HashMap<TypeId, Entry>>>,
}

#[derive(Clone)]
struct Entry {
    name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

impl StateMap {
    /// Adds `value` under its type, replacing an earlier value of that type.
    pub(crate) fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, value: Arc<T>) {
        let values = Arc::make_mut(self.values.get_or_insert_default());
        values.insert(
            TypeId::of::<T>(),
            Entry {
                name: std::any::type_name::<T>(),
                value: Arc::new(value),
            },
        );
    }

    /// The value of type `T`, if one was given.
    pub(crate) fn get<T: ?Sized + 'static>(&self) -> Option<State<T>> {
        let entry = self.values.as_ref()?.get(&TypeId::of::<T>())?;
        entry.value.downcast_ref::<Arc<T>>().cloned().map(State)
    }

    /// Whether a value of type `ty` was given.
    pub(crate) fn contains(&self, ty: StateType) -> bool {
        self.values
            .as_ref()
            .is_some_and(|values| values.contains_key(&ty.type_id()))
    }

    /// The first type `handler` needs that was not given.
    pub(crate) fn missing_for(&self, handler: &dyn EventHandler) -> Option<StateType> {
        handler
            .required_state()
            .iter()
            .copied()
            .find(|ty| !self.contains(*ty))
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self
            .values
            .iter()
            .flat_map(|values| values.values().map(|e| e.name))
            .collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

/// A parameter of an `#[event_handler]` function filled from the handler's state: `State<T>`.
/// What the macro's expansion extracts each such parameter with; not a public API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a state parameter of an event handler",
    label = "expected `asdlc::State<T>`",
    note = "after the event and the context, a handler takes only `asdlc::State<T>` \
            parameters, filled from the `.state(...)` values of the runtime"
)]
pub trait StateParam: Sized {
    /// The state type it needs.
    const TYPE: StateType;

    /// Takes it from the context; `None` if the context was not given it.
    fn from_context(ctx: &HandlerContext) -> Option<Self>;
}

impl<T: ?Sized + Send + Sync + 'static> StateParam for State<T> {
    const TYPE: StateType = StateType::of::<T>();

    fn from_context(ctx: &HandlerContext) -> Option<Self> {
        ctx.state::<T>()
    }
}

/// How a generated handler gets one state parameter of type `S`: its type, for
/// `required_state`, and its extraction, for `handle`. One `const` per parameter, built by
/// [`state_param`], so a type that is no state parameter is reported once.
#[doc(hidden)]
pub struct StateExtractor<S> {
    /// The state type, for `required_state`.
    pub ty: StateType,
    /// Takes the parameter from a context.
    pub extract: fn(&HandlerContext) -> Option<S>,
}

/// The [`StateExtractor`] of parameter type `S`.
#[doc(hidden)]
pub const fn state_param<S: StateParam>() -> StateExtractor<S> {
    StateExtractor {
        ty: S::TYPE,
        extract: S::from_context,
    }
}

/// What a generated handler reports when its state is missing: only possible when it is
/// called past the startup check (by hand, with a context that was not given the state).
/// Permanent, as no retry can bring the value.
#[doc(hidden)]
pub fn missing_state(handler: &str, missing: StateType) -> BoxFuture<'static, HandlerResult> {
    let result = HandlerResult::permanent(format!(
        "handler `{handler}` needs state of type `{missing}`, which its context was not given: \
         add `.state(...)` of type `{missing}` to the runtime (or consumer) builder, or \
         `.with_state(...)` to a hand-made context"
    ));
    Box::pin(std::future::ready(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self) -> String;
    }
    struct English;
    impl Greeter for English {
        fn greet(&self) -> String {
            "hello".into()
        }
    }

    #[test]
    fn values_are_found_by_type_and_shared() {
        let mut map = StateMap::default();
        assert!(map.get::<u32>().is_none());
        let number = Arc::new(7u32);
        map.insert(number.clone());
        map.insert(Arc::new(String::from("config")));
        let got = map.get::<u32>().unwrap();
        assert!(Arc::ptr_eq(&got.0, &number));
        assert_eq!(&*map.get::<String>().unwrap(), "config");
        assert!(map.get::<u64>().is_none());
        assert!(map.contains(StateType::of::<u32>()));
        assert!(!map.contains(StateType::of::<u64>()));
        assert_eq!(format!("{map:?}"), r#"{"alloc::string::String", "u32"}"#);
    }

    #[test]
    fn a_later_value_replaces_one_of_the_same_type_and_clones_stay_apart() {
        let mut map = StateMap::default();
        map.insert(Arc::new(1u8));
        let before = map.clone();
        map.insert(Arc::new(2u8));
        assert_eq!(*map.get::<u8>().unwrap(), 2);
        assert_eq!(*before.get::<u8>().unwrap(), 1);
    }

    #[test]
    fn unsized_state_is_stored_by_its_own_type() {
        let mut map = StateMap::default();
        map.insert::<dyn Greeter>(Arc::new(English));
        map.insert::<str>(Arc::from("name"));
        assert_eq!(map.get::<dyn Greeter>().unwrap().greet(), "hello");
        assert_eq!(&*map.get::<str>().unwrap(), "name");
        assert!(map.get::<English>().is_none());
    }

    #[test]
    fn state_types_compare_by_type_and_print_their_name() {
        const TYPES: [StateType; 2] = [StateType::of::<u8>(), StateType::of::<dyn Greeter>()];
        assert_eq!(TYPES[0], StateType::of::<u8>());
        assert_ne!(TYPES[0], TYPES[1]);
        assert_eq!(TYPES[0].to_string(), "u8");
        assert_eq!(format!("{:?}", TYPES[0]), r#"StateType("u8")"#);
        assert_eq!(TYPES[0].type_id(), TypeId::of::<u8>());
    }

    #[test]
    fn state_derefs_clones_and_debugs() {
        let s = State::new(vec![1, 2]);
        let t = s.clone();
        assert!(Arc::ptr_eq(&s.0, &t.0));
        assert_eq!(t.len(), 2);
        assert_eq!(format!("{s:?}"), "State([1, 2])");
    }

    #[tokio::test]
    async fn a_missing_parameter_is_a_permanent_failure_naming_it() {
        const PARAM: StateExtractor<State<u8>> = state_param::<State<u8>>();
        let ctx = HandlerContext::detached();
        assert!((PARAM.extract)(&ctx).is_none());
        assert_eq!(PARAM.ty, StateType::of::<u8>());
        let result = missing_state("h", PARAM.ty).await;
        assert!(result.is_permanent());
        let msg = result.error_message().unwrap();
        assert!(
            msg.starts_with("handler `h` needs state of type `u8`"),
            "{msg}"
        );
        let ctx = ctx.with_state(3u8);
        assert_eq!(*(PARAM.extract)(&ctx).unwrap(), 3);
    }
}
