//! A handler deep in modules, and in a function body, stays an ordinary async fn.

mod outer {
    pub mod inner {
        use asdlc::prelude::*;

        #[event_handler(types = [PatchApplied], group = "nested")]
        pub async fn applied(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
            HandlerResult::ok_with_artifacts([format!("{}@{}", event.session_id, ctx.attempt())])
        }
    }
}

async fn call_directly() {
    use asdlc::prelude::*;

    #[event_handler(types = [PatchRejected], group = "nested")]
    async fn local(_: &AsdlcEvent) {}

    let event = AsdlcEvent::builder(EventType::PatchApplied, "s1")
        .build()
        .unwrap();
    let ctx = HandlerContext::detached();
    let result = outer::inner::applied(&event, &ctx).await;
    assert_eq!(result.artifacts(), ["s1@1"]);
    local(&event).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    call_directly().await;
    let names: Vec<&str> = asdlc::registered_handlers()
        .iter()
        .map(|r| r.name)
        .collect();
    assert!(
        names.contains(&&*format!("{}::outer::inner::applied", module_path!())),
        "{names:?}"
    );
    assert!(
        names.contains(&&*format!("{}::local", module_path!())),
        "{names:?}"
    );
}
