//! `crate = "..."`: generated code starts from the given path instead of `::asdlc`.

mod through_the_runtime {
    use asdlc_runtime::prelude::*;

    #[asdlc::event_handler(types = [TaskCreated], group = "override", crate = "::asdlc_runtime")]
    async fn handler(_: &AsdlcEvent) -> HandlerResult {
        HandlerResult::ok()
    }
}

mod through_a_renamed_path {
    // As a renamed dependency would be seen.
    extern crate asdlc as renamed;
    use renamed::prelude::*;

    #[event_handler(types = [TaskFailed], group = "override", crate = "renamed")]
    async fn handler(_: &AsdlcEvent) {}
}

fn main() {
    let names: Vec<&str> = asdlc::registered_handlers()
        .iter()
        .map(|r| r.name)
        .collect();
    assert!(
        names.contains(&&*format!(
            "{}::through_the_runtime::handler",
            module_path!()
        )),
        "{names:?}"
    );
    assert!(
        names.contains(&&*format!(
            "{}::through_a_renamed_path::handler",
            module_path!()
        )),
        "{names:?}"
    );
}
