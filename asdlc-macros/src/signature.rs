//! Checking the shape of the handler function.
//!
//! Only the shape is checked here: the parameter and return *types* are left to rustc, which
//! sees them through the generated code with spans on the user's tokens (see `expand`).

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Pat, PatType, PathArguments, ReturnType, Signature, Type};

use crate::errors::Errors;

const SHAPE: &str = "an event handler takes `(event: &AsdlcEvent)`, then optionally \
                     `ctx: &HandlerContext`, then any number of `State<T>` parameters";

/// A handler function's signature, checked.
pub(crate) struct HandlerSignature {
    /// The event parameter.
    pub(crate) event: Param,
    /// The context parameter, if the function takes one.
    pub(crate) ctx: Option<Param>,
    /// The `State<T>` parameters, in order.
    pub(crate) state: Vec<Type>,
    /// The declared return type; `None` for `()`.
    pub(crate) output: Option<Type>,
}

/// One parameter of a handler function.
pub(crate) struct Param {
    /// Where its name (or `_`) is.
    pub(crate) name_span: Span,
    /// Its type, as written.
    pub(crate) ty: Type,
}

/// Checks that `sig` is `async fn name(event: &E)` or `async fn name(event: &E, ctx: &C)`,
/// followed by any number of `State<T>` parameters, reporting every problem at once.
pub(crate) fn check_signature(sig: &Signature) -> syn::Result<HandlerSignature> {
    let mut errors = Errors::default();

    if let Some(token) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            token,
            "an event handler cannot be a `const fn`",
        ));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "an event handler must be an `async fn`: add `async` before `fn`",
        ));
    }
    if let Some(token) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            token,
            "an event handler cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "an event handler cannot be `extern`",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "an event handler cannot have generic parameters: the runtime calls it with \
             `&AsdlcEvent` and `&HandlerContext`",
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            where_clause,
            "an event handler cannot have a `where` clause",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "an event handler cannot be variadic",
        ));
    }

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "an event handler cannot take `self`: write it as a free function, \
                 outside any `impl` block",
            )),
            FnArg::Typed(param) => params.push(param),
        }
    }
    if params.is_empty() && sig.receiver().is_none() && sig.variadic.is_none() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!("missing the event parameter: {SHAPE}"),
        ));
    }
    let event = params
        .first()
        .and_then(|p| errors.check(check_param(p, "event", "AsdlcEvent")));
    // The context is the second parameter unless that one is already a `State<T>`.
    let ctx_at = params.get(1).filter(|p| !is_state_like(&p.ty));
    let ctx = ctx_at.and_then(|p| errors.check(check_param(p, "ctx", "HandlerContext")));
    let first_state = if ctx_at.is_some() { 2 } else { 1 };
    let state = params
        .iter()
        .skip(first_state)
        .filter_map(|p| errors.check(check_state_param(p)))
        .collect();

    errors.finish()?;
    Ok(HandlerSignature {
        event: event.expect("a missing event parameter was reported above"),
        ctx,
        state,
        output: match &sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some((**ty).clone()),
        },
    })
}

fn check_param(param: &PatType, role: &str, type_name: &str) -> syn::Result<Param> {
    let mut errors = Errors::default();
    let simple = match &*param.pat {
        Pat::Ident(ident) => ident.by_ref.is_none() && ident.subpat.is_none(),
        Pat::Wild(_) => true,
        _ => false,
    };
    if !simple {
        errors.push(syn::Error::new_spanned(
            &param.pat,
            format!("expected a parameter name or `_`, like `{role}: &{type_name}`"),
        ));
    }
    match &*param.ty {
        Type::Reference(r) if r.mutability.is_some() => errors.push(syn::Error::new_spanned(
            r.mutability.to_token_stream(),
            format!("the {role} parameter must be a shared reference, like `{role}: &{type_name}`"),
        )),
        Type::Reference(r) if r.lifetime.as_ref().is_some_and(|l| l.ident != "_") => {
            errors.push(syn::Error::new_spanned(
                &r.lifetime,
                format!(
                    "write `&{type_name}` without a lifetime: the runtime lends it for the call"
                ),
            ));
        }
        Type::Reference(_) => {}
        ty if role == "ctx" => errors.push(syn::Error::new_spanned(
            ty,
            "the ctx parameter must be a reference, like `ctx: &HandlerContext`, or a state \
             parameter, like `State(db): State<Db>`",
        )),
        ty => errors.push(syn::Error::new_spanned(
            ty,
            format!("the {role} parameter must be a reference, like `{role}: &{type_name}`"),
        )),
    }
    errors.finish()?;
    Ok(Param {
        name_span: param.pat.span(),
        ty: (*param.ty).clone(),
    })
}

/// The path of a type that names `State` (`State<Db>`, `asdlc::State<Db>`), however its
/// arguments are written; `None` for any other type.
fn state_path(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .filter(|segment| segment.ident == "State"),
        Type::Group(group) => state_path(&group.elem),
        Type::Paren(paren) => state_path(&paren.elem),
        _ => None,
    }
}

/// Checks a parameter after the event and the context: `State<T>`, under any pattern (the
/// function is emitted unchanged, so rustc checks that the pattern is irrefutable).
fn check_state_param(param: &PatType) -> syn::Result<Type> {
    let Some(segment) = state_path(&param.ty) else {
        let message = match &*param.ty {
            Type::Reference(r) if state_path(&r.elem).is_some() => {
                return Err(syn::Error::new_spanned(
                    r.and_token,
                    "a state parameter is taken by value, like `State(db): State<Db>`",
                ));
            }
            Type::Reference(r) if names(&r.elem, "HandlerContext") => {
                "`ctx: &HandlerContext` goes right after the event parameter".to_owned()
            }
            _ => format!("expected a `State<T>` parameter: {SHAPE}"),
        };
        return Err(syn::Error::new_spanned(&param.ty, message));
    };
    let one_type = match &segment.arguments {
        PathArguments::AngleBracketed(args) => {
            args.args.len() == 1 && matches!(args.args.first(), Some(GenericArgument::Type(_)))
        }
        _ => false,
    };
    if !one_type {
        return Err(syn::Error::new_spanned(
            segment,
            "`State` takes the state's type, like `State<Db>`",
        ));
    }
    Ok((*param.ty).clone())
}

/// Whether `ty` is a `State<..>` or a reference to one: a state parameter, right or wrong.
fn is_state_like(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => state_path(&r.elem).is_some(),
        ty => state_path(ty).is_some(),
    }
}

/// Whether `ty` is a path whose last segment is `name`.
fn names(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::ItemFn;

    fn check(item: proc_macro2::TokenStream) -> syn::Result<HandlerSignature> {
        check_signature(&syn::parse2::<ItemFn>(item).unwrap().sig)
    }

    fn errors(item: proc_macro2::TokenStream) -> Vec<String> {
        match check(item) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn both_shapes_are_accepted() {
        let one = check(quote!(
            async fn h(event: &AsdlcEvent) {}
        ))
        .unwrap();
        assert!(one.ctx.is_none() && one.output.is_none());
        let two = check(quote!(
            pub async fn h(_: &AsdlcEvent, mut ctx: &HandlerContext) -> HandlerResult {
                HandlerResult::ok()
            }
        ))
        .unwrap();
        assert!(two.ctx.is_some());
        assert_eq!(two.output.to_token_stream().to_string(), "HandlerResult");
        check(quote!(
            async fn h(e: &'_ AsdlcEvent) {}
        ))
        .unwrap();
    }

    #[test]
    fn function_qualifiers_are_rejected() {
        assert_eq!(
            errors(quote!(
                fn h(e: &AsdlcEvent) {}
            )),
            ["an event handler must be an `async fn`: add `async` before `fn`"]
        );
        let e = errors(quote!(
            const async unsafe extern "C" fn h(e: &AsdlcEvent) {}
        ));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("`const fn`"));
        assert!(e[1].contains("`unsafe`"));
        assert!(e[2].contains("`extern`"));
    }

    #[test]
    fn generics_and_where_clauses_are_rejected() {
        let e = errors(quote!(
            async fn h<T: Send>(e: &AsdlcEvent)
            where
                T: Sync,
            {
            }
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("an event handler cannot have generic parameters"));
        assert!(e[1].starts_with("an event handler cannot have a `where` clause"));
    }

    #[test]
    fn parameter_count_is_checked() {
        assert!(
            errors(quote!(
                async fn h() {}
            ))[0]
                .starts_with("missing the event parameter")
        );
        let e = errors(quote!(
            async fn h(a: &AsdlcEvent, b: &HandlerContext, c: &u8, d: u8) {}
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter()
                .all(|e| e.starts_with("expected a `State<T>` parameter"))
        );
        assert!(
            errors(quote!(
                async fn h(&self, e: &AsdlcEvent) {}
            ))[0]
                .contains("`self`")
        );
    }

    #[test]
    fn state_parameters_follow_the_event_and_the_context() {
        let with_ctx = check(quote!(
            async fn h(
                e: &AsdlcEvent,
                ctx: &HandlerContext,
                State(db): State<Db>,
                cache: asdlc::State<Cache>,
                _: State<dyn Mailer>,
            ) {
            }
        ))
        .unwrap();
        assert!(with_ctx.ctx.is_some());
        let types: Vec<String> = with_ctx
            .state
            .iter()
            .map(|t| t.to_token_stream().to_string())
            .collect();
        assert_eq!(
            types,
            [
                "State < Db >",
                "asdlc :: State < Cache >",
                "State < dyn Mailer >"
            ]
        );
        let without_ctx = check(quote!(
            async fn h(e: &AsdlcEvent, State(db): State<Db>) {}
        ))
        .unwrap();
        assert!(without_ctx.ctx.is_none());
        assert_eq!(without_ctx.state.len(), 1);
    }

    #[test]
    fn state_parameters_are_checked() {
        assert_eq!(
            errors(quote!(
                async fn h(e: &AsdlcEvent, s: State, t: State<A, B>, u: State<'static>) {}
            )),
            ["`State` takes the state's type, like `State<Db>`"; 3]
        );
        assert_eq!(
            errors(quote!(
                async fn h(e: &AsdlcEvent, s: &State<Db>) {}
            )),
            ["a state parameter is taken by value, like `State(db): State<Db>`"]
        );
        assert_eq!(
            errors(quote!(
                async fn h(e: &AsdlcEvent, s: State<Db>, ctx: &HandlerContext) {}
            )),
            ["`ctx: &HandlerContext` goes right after the event parameter"]
        );
        assert!(
            errors(quote!(
                async fn h(e: &AsdlcEvent, s: u8) {}
            ))[0]
                .starts_with("the ctx parameter must be a reference")
        );
    }

    #[test]
    fn parameters_must_be_simple_references() {
        assert!(
            errors(quote!(
                async fn h(event: AsdlcEvent) {}
            ))[0]
                .starts_with("the event parameter must be a reference")
        );
        assert!(
            errors(quote!(
                async fn h(e: &AsdlcEvent, ctx: HandlerContext) {}
            ))[0]
                .starts_with("the ctx parameter must be a reference")
        );
        assert!(
            errors(quote!(
                async fn h(e: &mut AsdlcEvent) {}
            ))[0]
                .contains("shared reference")
        );
        assert!(
            errors(quote!(
                async fn h(e: &'static AsdlcEvent) {}
            ))[0]
                .contains("without a lifetime")
        );
        assert!(
            errors(quote!(
                async fn h((a, b): &(u8, u8)) {}
            ))[0]
                .starts_with("expected a parameter name or `_`")
        );
        assert!(
            errors(quote!(
                async fn h(ref e: &AsdlcEvent) {}
            ))[0]
                .starts_with("expected a parameter name or `_`")
        );
    }
}
