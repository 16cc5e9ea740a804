//! Handlers named like the generated code's parameters, and handlers declared by a
//! `macro_rules!` macro.

use asdlc::prelude::*;

mod named_event {
    use asdlc::prelude::*;

    #[event_handler(types = [TaskCreated], group = "names")]
    pub async fn event(event: &AsdlcEvent, ctx: &HandlerContext) {
        let _ = (event, ctx);
    }
}

mod named_ctx {
    use asdlc::prelude::*;

    #[event_handler(types = [TaskCreated], group = "names")]
    pub async fn ctx(event: &AsdlcEvent, ctx: &HandlerContext) {
        let _ = (event, ctx);
    }
}

macro_rules! declare_handler {
    ($name:ident, $event_type:ident, $group:literal) => {
        #[event_handler(types = [$event_type], group = $group)]
        async fn $name(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
            let _ = (event, ctx);
            HandlerResult::ok()
        }
    };
}

declare_handler!(from_a_macro, GateExpired, "macros");

fn main() {
    let names: Vec<&str> = asdlc::registered_handlers()
        .iter()
        .map(|r| r.name)
        .collect();
    for expected in ["named_event::event", "named_ctx::ctx", "from_a_macro"] {
        let expected = format!("{}::{expected}", module_path!());
        assert!(names.contains(&expected.as_str()), "{names:?}");
    }
}
