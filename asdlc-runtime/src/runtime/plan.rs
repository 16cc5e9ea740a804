//! The plan: which groups run with which handlers. The handler set is checked here, once, before
//! anything is consumed (valid group names, one handler per name and per event type in a group,
//! requested groups that exist, the state each handler takes), and each group gets the template
//! its consumers are built from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{Config, Valid};
use crate::consume::{ConsumerOptions, EventConsumer, HandlerSpec};
use crate::error::ConsumeError;
use crate::event::EventType;
use crate::handler::{EventHandler, HandlerOptions, HandlerRegistration, StateMap};
use crate::keys::validate_group;
use crate::tenancy::TenantId;

use super::error::RegistryError;
use super::report::HandlerInfo;

/// One handler as found, and how a consumer runs it.
pub(super) struct PlannedHandler {
    pub(super) info: HandlerInfo,
    pub(super) spec: HandlerSpec,
}

impl PlannedHandler {
    /// A handler registered with `#[event_handler]`.
    pub(super) fn registered(reg: &'static HandlerRegistration) -> Self {
        PlannedHandler {
            info: HandlerInfo {
                name: reg.name.to_owned(),
                group: reg.group.to_owned(),
                types: reg.types.to_vec(),
                location: Some(reg.location.to_owned()),
            },
            spec: HandlerSpec::registered(reg),
        }
    }

    /// A hand-written handler added to `group`; it handles the types its `can_handle` accepts.
    pub(super) fn added(
        group: &str,
        handler: Arc<dyn EventHandler>,
        options: HandlerOptions,
    ) -> Self {
        let types = EventType::ALL
            .iter()
            .copied()
            .filter(|t| handler.can_handle(*t))
            .collect();
        PlannedHandler {
            info: HandlerInfo {
                name: handler.name().to_owned(),
                group: group.to_owned(),
                types,
                location: None,
            },
            spec: HandlerSpec::with_options(handler, options),
        }
    }
}

/// Adjusts one group's consumer options; called with the group name.
pub(super) type Configure = Box<dyn Fn(&str, &mut ConsumerOptions) + Send + Sync>;

/// Everything needed to build another consumer of one group (for a tenant in a new cluster
/// slot, found while running).
#[derive(Clone)]
pub(super) struct GroupTemplate {
    pub(super) group: String,
    pub(super) specs: Vec<HandlerSpec>,
    pub(super) consumer_name: Option<String>,
    pub(super) configure: Arc<Vec<Configure>>,
    pub(super) config: Valid<Config>,
    pub(super) state: StateMap,
}

impl GroupTemplate {
    pub(super) async fn build(
        &self,
        tenants: Vec<TenantId>,
    ) -> Result<EventConsumer, ConsumeError> {
        let mut builder = EventConsumer::builder_checked(self.config.clone(), self.group.clone());
        for t in tenants {
            builder = builder.tenant(t);
        }
        for spec in &self.specs {
            builder = builder.handler_spec(spec.clone());
        }
        builder
            .state_map(self.state.clone())
            .configure(|o| {
                if let Some(name) = &self.consumer_name {
                    o.consumer = Some(name.clone());
                }
                for f in self.configure.iter() {
                    f(&self.group, o);
                }
            })
            .build()
            .await
    }
}

/// One planned group: how to build its consumers, and its handlers.
pub(super) struct GroupRun {
    pub(super) template: GroupTemplate,
    pub(super) handlers: Vec<HandlerInfo>,
}

/// Sorts the handlers into groups, checks the set, and keeps the groups in `only` (all of them
/// without it).
pub(super) fn plan_groups(
    all: Vec<PlannedHandler>,
    only: Option<&[String]>,
) -> Result<BTreeMap<String, Vec<PlannedHandler>>, RegistryError> {
    if all.is_empty() {
        return Err(RegistryError::NoHandlers);
    }
    let mut by_group: BTreeMap<String, Vec<PlannedHandler>> = BTreeMap::new();
    for h in all {
        validate_group(&h.info.group).map_err(|source| RegistryError::InvalidGroup {
            handler: h.info.name.clone(),
            source,
        })?;
        by_group.entry(h.info.group.clone()).or_default().push(h);
    }
    for (group, handlers) in &by_group {
        let mut owner: HashMap<EventType, &HandlerInfo> = HashMap::new();
        let mut names: HashMap<&str, &HandlerInfo> = HashMap::new();
        for h in handlers {
            if let Some(prev) = names.insert(&h.info.name, &h.info) {
                return Err(RegistryError::DuplicateName {
                    group: group.clone(),
                    name: h.info.name.clone(),
                    first: describe(prev),
                    second: describe(&h.info),
                });
            }
            for t in &h.info.types {
                if let Some(prev) = owner.insert(*t, &h.info) {
                    return Err(RegistryError::Conflict {
                        group: group.clone(),
                        event_type: *t,
                        first: describe(prev),
                        second: describe(&h.info),
                    });
                }
            }
        }
    }
    if let Some(only) = only {
        let known: Vec<String> = by_group.keys().cloned().collect();
        for g in only {
            if !by_group.contains_key(g) {
                return Err(RegistryError::UnknownGroup {
                    group: g.clone(),
                    known: known.join(", "),
                });
            }
        }
        let wanted: BTreeSet<&String> = only.iter().collect();
        by_group.retain(|g, _| wanted.contains(g));
    }
    Ok(by_group)
}

/// A handler's name, with `file:line` for an `#[event_handler]`.
fn describe(h: &HandlerInfo) -> String {
    match &h.location {
        Some(loc) => format!("{} ({loc})", h.name),
        None => h.name.clone(),
    }
}

/// Checks that every planned handler's state was given.
pub(super) fn check_state(
    plan: &BTreeMap<String, Vec<PlannedHandler>>,
    state: &StateMap,
) -> Result<(), RegistryError> {
    for (group, handlers) in plan {
        for h in handlers {
            if let Some(missing) = state.missing_for(&*h.spec.handler) {
                return Err(RegistryError::MissingState {
                    group: group.clone(),
                    handler: describe(&h.info),
                    type_name: missing.type_name().to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AsdlcEvent, BoxFuture, HandlerContext, HandlerResult};

    struct H(&'static str, &'static [EventType]);
    impl EventHandler for H {
        fn name(&self) -> &str {
            self.0
        }
        fn can_handle(&self, t: EventType) -> bool {
            self.1.contains(&t)
        }
        fn handle<'a>(
            &'a self,
            _: &'a AsdlcEvent,
            _: &'a HandlerContext,
        ) -> BoxFuture<'a, HandlerResult> {
            Box::pin(async { HandlerResult::ok() })
        }
    }

    fn planned(group: &str, h: H) -> PlannedHandler {
        PlannedHandler::added(group, Arc::new(h), HandlerOptions::default())
    }

    #[test]
    fn conflicting_handlers_are_named() {
        let err = plan_groups(
            vec![
                planned("g", H("a", &[EventType::TaskCreated])),
                planned(
                    "g",
                    H("b", &[EventType::TaskDispatched, EventType::TaskCreated]),
                ),
            ],
            None,
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                RegistryError::Conflict {
                    event_type: EventType::TaskCreated,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("`a`") && msg.contains("`b`"), "{msg}");
    }

    struct NeedsState;
    impl EventHandler for NeedsState {
        fn name(&self) -> &str {
            "needs-state"
        }
        fn can_handle(&self, t: EventType) -> bool {
            t == EventType::TaskCreated
        }
        fn handle<'a>(
            &'a self,
            _: &'a AsdlcEvent,
            _: &'a HandlerContext,
        ) -> BoxFuture<'a, HandlerResult> {
            Box::pin(async { HandlerResult::ok() })
        }
        fn required_state(&self) -> &[crate::StateType] {
            const NEEDS: &[crate::StateType] =
                &[crate::StateType::of::<u8>(), crate::StateType::of::<str>()];
            NEEDS
        }
    }

    #[test]
    fn a_handler_whose_state_was_not_given_is_named_with_the_type() {
        let plan = || {
            let needs = PlannedHandler::added("g", Arc::new(NeedsState), HandlerOptions::default());
            plan_groups(
                vec![needs, planned("g", H("a", &[EventType::GateApproved]))],
                None,
            )
            .unwrap()
        };
        let mut state = StateMap::default();
        state.insert(Arc::new(1u8));
        let err = check_state(&plan(), &state).unwrap_err();
        assert_eq!(
            err,
            RegistryError::MissingState {
                group: "g".into(),
                handler: "needs-state".into(),
                type_name: "str".into(),
            }
        );
        assert!(
            err.to_string()
                .contains("add `.state(...)` with a value of type `str`"),
            "{err}"
        );
        state.insert::<str>(Arc::from("s"));
        check_state(&plan(), &state).unwrap();
    }

    #[test]
    fn same_type_in_two_groups_is_fine() {
        let plan = plan_groups(
            vec![
                planned("g1", H("a", &[EventType::TaskCreated])),
                planned("g2", H("b", &[EventType::TaskCreated])),
            ],
            None,
        )
        .unwrap();
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn groups_can_be_selected_and_unknown_ones_are_refused() {
        let all = || {
            vec![
                planned("g1", H("a", &[EventType::TaskCreated])),
                planned("g2", H("b", &[EventType::TaskCreated])),
            ]
        };
        let plan = plan_groups(all(), Some(&["g2".to_owned()])).unwrap();
        assert_eq!(plan.keys().collect::<Vec<_>>(), vec!["g2"]);
        let err = plan_groups(all(), Some(&["g3".to_owned()])).err().unwrap();
        assert!(err.to_string().contains("g1, g2"), "{err}");
        assert_eq!(
            plan_groups(Vec::new(), None).err().unwrap(),
            RegistryError::NoHandlers
        );
        let err = plan_groups(
            vec![planned("Bad Group", H("a", &[EventType::TaskCreated]))],
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, RegistryError::InvalidGroup { .. }));
        let err = plan_groups(
            vec![
                planned("g", H("a", &[EventType::TaskCreated])),
                planned("g", H("a", &[EventType::GateApproved])),
            ],
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, RegistryError::DuplicateName { .. }));
    }
}
