//! What `#[event_handler]` expands to.
//!
//! The function itself is emitted unchanged, so it stays an ordinary `async fn` a unit test
//! can call. Beside it, in an anonymous `const _: () = { ... };`, a unit struct implements
//! `EventHandler` by calling it, and `inventory::submit!` registers that struct. Everything
//! generated names `<crate>::__private::...`, so users depend on nothing but asdlc.
//!
//! The parameter types, the return type and the future's `Send`-ness are checked by rustc,
//! through code spanned on the user's own tokens, so its messages land where the mistake is.
//! Each `State<T>` parameter is taken from the context through `__private::StateParam`,
//! spanned on its type, and listed in `required_state` for the runtime's startup check.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::{Ident, ItemFn, Type};

use crate::args::{HandlerArgs, TypeNames, parse_args_keeping_types};
use crate::errors::Errors;
use crate::signature::{HandlerSignature, Param, check_signature};

/// Expands `#[event_handler(args)] item`.
///
/// On any error the output is the item, unchanged, followed by one `compile_error!` per
/// problem: the function keeps existing for the IDE and for the code that calls it, and no
/// follow-up errors about a half-generated handler bury the real ones. The event types named
/// are still checked (see [`type_check`]), so an unknown one is reported with the rest.
pub(crate) fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let (args, names) = parse_args_keeping_types(args);
    let args = errors.check(args);
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                "`#[event_handler]` goes on an `async fn`",
            ));
            return with_errors(item, errors, names.as_ref());
        }
    };
    let signature = errors.check(check_signature(&function.sig));
    match (args, signature) {
        (Some(args), Some(signature)) => expand(&function, &args, &signature),
        _ => with_errors(item, errors, names.as_ref()),
    }
}

fn with_errors(item: TokenStream, errors: Errors, names: Option<&TypeNames>) -> TokenStream {
    let check = names.map(type_check);
    let errors = errors.finish().err().map(|e| e.to_compile_error());
    quote!(#item #check #errors)
}

/// `#krate::__private`, the path generated code starts from.
fn private_path(krate: Option<&syn::Path>) -> TokenStream {
    match krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::asdlc::__private),
    }
}

/// `EventType::<name>` for each type named, each on the user's own token: rustc then reports
/// an unknown name there, with its suggestion of the variant meant, and the macro needs no
/// list of the variants of its own.
fn event_type_paths(private: &TokenStream, types: &[Ident]) -> Vec<TokenStream> {
    types
        .iter()
        .map(|t| {
            let private = respan(private.clone(), t.span());
            quote_spanned!(t.span()=> #private::EventType::#t)
        })
        .collect()
}

/// Only the check of the event types named, for an attribute with other mistakes.
fn type_check(names: &TypeNames) -> TokenStream {
    let private = private_path(names.krate.as_ref());
    let types = event_type_paths(&private, &names.types);
    quote! {
        const _: &[#private::EventType] = &[#(#types),*];
    }
}

fn expand(function: &ItemFn, args: &HandlerArgs, signature: &HandlerSignature) -> TokenStream {
    let private = private_path(args.krate.as_ref());
    let fn_name = &function.sig.ident;

    let name = match &args.name {
        Some(name) => name.to_token_stream(),
        None => {
            let fn_name = fn_name.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let group = &args.group;
    let types = event_type_paths(&private, &args.types);
    // `HandlerOptions` is non-exhaustive: built with its const setters, one per key given.
    let max_deliveries = args
        .max_deliveries
        .map(|n| quote!(.with_max_deliveries(#n)));
    let timeout = args
        .timeout_ms
        .map(|ms| quote!(.with_timeout(#private::Duration::from_millis(#ms))));
    let concurrency = args.concurrency.map(|n| {
        let n = proc_macro2::Literal::usize_unsuffixed(n);
        quote!(.with_concurrency(#n))
    });
    let ordered_by = args
        .ordered_by
        .as_ref()
        .map(|variant| quote!(.with_ordered_by(#private::OrderBy::#variant)));

    let event_check = param_check(&signature.event, "__asdlc_event_ref", "__asdlc_event");
    let (ctx_check, ctx_arg) = match &signature.ctx {
        Some(ctx) => {
            let check = param_check(ctx, "__asdlc_ctx_ref", "__asdlc_ctx");
            (check, quote!(, __asdlc_ctx))
        }
        None => (quote!(), quote!()),
    };
    let ctx_param = if signature.ctx.is_some() || !signature.state.is_empty() {
        quote!(__asdlc_ctx_ref)
    } else {
        quote!(_)
    };
    let ctx_reborrow = (signature.ctx.is_some() || !signature.state.is_empty())
        .then(|| quote!(let __asdlc_ctx_ref: &#private::HandlerContext = __asdlc_ctx_ref;));

    // One const per state parameter, the only place its type meets `StateParam`, under the
    // type's span: "`Db` is not a state parameter" is reported once, at `Db`.
    let state_consts: Vec<Ident> = (0..signature.state.len())
        .map(|i| Ident::new(&format!("__ASDLC_STATE_{i}"), Span::call_site()))
        .collect();
    let state_params = signature.state.iter().zip(&state_consts).map(|(ty, name)| {
        let at = user_span(first_span(ty));
        let param = {
            let private = respan(private.clone(), at);
            quote_spanned!(at=> #private::state_param::<#ty>())
        };
        quote!(const #name: #private::StateExtractor<#ty> = #param;)
    });
    let state_bindings: Vec<Ident> = (0..signature.state.len())
        .map(|i| Ident::new(&format!("__asdlc_state_{i}"), Span::call_site()))
        .collect();
    // Missing only when called past the startup check: a permanent failure naming the type,
    // rather than a panic in the consumer.
    let state_extract = state_consts
        .iter()
        .zip(&state_bindings)
        .map(|(name, binding)| {
            quote! {
                let #binding = match (#name.extract)(__asdlc_ctx_ref) {
                    ::core::option::Option::Some(state) => state,
                    ::core::option::Option::None => {
                        return #private::missing_state(__ASDLC_NAME, #name.ty);
                    }
                };
            }
        });

    // Under the return type's span: "`i32` is not a handler return type" points at `i32`.
    let convert = match &signature.output {
        Some(ty) if !mentions_impl(ty.to_token_stream()) => {
            let at = user_span(first_span(ty));
            let ty = ty.to_token_stream();
            quote_spanned!(at=> __asdlc_into_handler_result::<#ty>)
        }
        _ => quote!(__asdlc_into_handler_result),
    };
    // Under the function name's span: "future cannot be sent between threads safely" points
    // at the handler, with rustc's note on the value held across an `.await`.
    let at_fn = user_span(fn_name.span());
    let boxed = {
        let private = respan(private.clone(), at_fn);
        quote_spanned! {at_fn=>
            #private::Box::pin(async move { #convert(__asdlc_future.await) })
        }
    };

    quote! {
        #function

        const _: () = {
            struct __AsdlcHandler;

            const __ASDLC_NAME: &str = #name;

            // Named once, so an unknown type is reported once.
            const __ASDLC_TYPES: &[#private::EventType] = &[#(#types),*];

            #(#state_params)*

            const __ASDLC_STATE: &[#private::StateType] = &[#(#state_consts.ty),*];

            fn __asdlc_into_handler_result<T: #private::IntoHandlerResult>(
                output: T,
            ) -> #private::HandlerResult {
                #private::IntoHandlerResult::into_handler_result(output)
            }

            impl #private::EventHandler for __AsdlcHandler {
                fn name(&self) -> &str {
                    __ASDLC_NAME
                }

                fn can_handle(&self, event_type: #private::EventType) -> bool {
                    __ASDLC_TYPES.contains(&event_type)
                }

                fn required_state(&self) -> &[#private::StateType] {
                    __ASDLC_STATE
                }

                fn handle<'__asdlc>(
                    &'__asdlc self,
                    __asdlc_event_ref: &'__asdlc #private::AsdlcEvent,
                    #ctx_param: &'__asdlc #private::HandlerContext,
                ) -> #private::BoxFuture<'__asdlc, #private::HandlerResult> {
                    // Reborrowed, so a mismatch reads `&AsdlcEvent`, not `&'__asdlc AsdlcEvent`.
                    let __asdlc_event_ref: &#private::AsdlcEvent = __asdlc_event_ref;
                    #event_check
                    #ctx_reborrow
                    #ctx_check
                    #(#state_extract)*
                    let __asdlc_future = #fn_name(__asdlc_event #ctx_arg #(, #state_bindings)*);
                    #boxed
                }
            }

            #private::inventory::submit! {
                #private::HandlerRegistration {
                    name: __ASDLC_NAME,
                    group: #group,
                    types: __ASDLC_TYPES,
                    options: #private::HandlerOptions::new()
                        #max_deliveries
                        #timeout
                        #concurrency
                        #ordered_by,
                    handler: &__AsdlcHandler,
                    location: ::core::concat!(::core::file!(), ":", ::core::line!()),
                }
            }
        };
    }
}

/// `let <binding>: <the user's type> = <argument>;`, with the argument spanned on the user's
/// parameter name (the generated names are unlike any a user would give a handler, so the
/// function's own name is never shadowed): a wrong type reads "expected `&String`, found `&AsdlcEvent`" there, and
/// rustc underlines the type the expectation comes from.
fn param_check(param: &Param, argument: &str, binding: &str) -> TokenStream {
    let argument = Ident::new(argument, user_span(param.name_span));
    let binding = Ident::new(binding, Span::call_site());
    let ty = &param.ty;
    quote!(let #binding: #ty = #argument;)
}

/// A span that reports at `at` but resolves names like the rest of the generated code.
fn user_span(at: Span) -> Span {
    Span::call_site().located_at(at)
}

fn first_span(ty: &Type) -> Span {
    ty.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}

/// Gives every token of `tokens` the span `span`, so an expression built from them reports
/// at one place.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Whether a type mentions `impl Trait`, which cannot be named in a turbofish.
fn mentions_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => mentions_impl(group.stream()),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: TokenStream, item: TokenStream) -> String {
        event_handler(args, item).to_string()
    }

    fn compile_errors(output: &str) -> Vec<String> {
        output
            .split("compile_error !")
            .skip(1)
            .map(|rest| {
                let start = rest.find('"').unwrap() + 1;
                let end = start + rest[start..].find("\" }").unwrap();
                rest[start..end].to_owned()
            })
            .collect()
    }

    #[test]
    fn a_handler_expands_to_the_function_an_impl_and_a_registration() {
        let out = expand_str(
            quote!(
                types = [TaskCreated, TaskDispatched],
                group = "development-handlers"
            ),
            quote!(
                async fn on_task(event: &AsdlcEvent, ctx: &HandlerContext) -> HandlerResult {
                    HandlerResult::ok()
                }
            ),
        );
        assert!(out.starts_with("async fn on_task (event : & AsdlcEvent , ctx : & HandlerContext) -> HandlerResult { HandlerResult :: ok () }"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
        for expected in [
            "const _ : () =",
            "impl :: asdlc :: __private :: EventHandler for __AsdlcHandler",
            "const __ASDLC_TYPES : & [:: asdlc :: __private :: EventType] = & [:: asdlc :: __private :: EventType :: TaskCreated , :: asdlc :: __private :: EventType :: TaskDispatched] ;",
            "__ASDLC_TYPES . contains (& event_type)",
            "let __asdlc_event_ref : & :: asdlc :: __private :: AsdlcEvent = __asdlc_event_ref ; let __asdlc_event : & AsdlcEvent = __asdlc_event_ref ;",
            "let __asdlc_ctx_ref : & :: asdlc :: __private :: HandlerContext = __asdlc_ctx_ref ; let __asdlc_ctx : & HandlerContext = __asdlc_ctx_ref ;",
            "let __asdlc_future = on_task (__asdlc_event , __asdlc_ctx) ;",
            ":: asdlc :: __private :: Box :: pin (async move { __asdlc_into_handler_result :: < HandlerResult > (__asdlc_future . await) })",
            ":: asdlc :: __private :: inventory :: submit !",
            "const __ASDLC_NAME : & str = :: core :: concat ! (:: core :: module_path ! () , \"::\" , \"on_task\") ;",
            "group : \"development-handlers\"",
            "types : __ASDLC_TYPES ,",
            "options : :: asdlc :: __private :: HandlerOptions :: new () , handler",
            "handler : & __AsdlcHandler",
            "location : :: core :: concat ! (:: core :: file ! () , \":\" , :: core :: line ! ())",
        ] {
            assert!(out.contains(expected), "missing `{expected}` in\n{out}");
        }
    }

    #[test]
    fn options_and_the_crate_override_are_emitted() {
        let out = expand_str(
            quote!(
                types = [GateApproved],
                group = "gates",
                name = "approve",
                max_deliveries = 3,
                timeout = "2m",
                concurrency = 8,
                ordered_by = session,
                crate = "::asdlc_runtime"
            ),
            quote!(
                async fn approve(_: &AsdlcEvent) {}
            ),
        );
        for expected in [
            "const __ASDLC_NAME : & str = \"approve\" ;",
            "options : :: asdlc_runtime :: __private :: HandlerOptions :: new () . with_max_deliveries (3u32) . with_timeout (:: asdlc_runtime :: __private :: Duration :: from_millis (120000u64)) . with_concurrency (8) . with_ordered_by (:: asdlc_runtime :: __private :: OrderBy :: Session) ,",
            "impl :: asdlc_runtime :: __private :: EventHandler",
            "_ : & '__asdlc :: asdlc_runtime :: __private :: HandlerContext",
            "let __asdlc_future = approve (__asdlc_event) ;",
            "__asdlc_into_handler_result (__asdlc_future . await)",
        ] {
            assert!(out.contains(expected), "missing `{expected}` in\n{out}");
        }
        assert!(!out.contains(":: asdlc ::"), "{out}");
        assert!(!out.contains("__asdlc_ctx"), "{out}");
    }

    #[test]
    fn state_parameters_are_taken_from_the_context_and_listed() {
        let out = expand_str(
            quote!(types = [TaskCreated], group = "g"),
            quote!(
                async fn h(e: &AsdlcEvent, State(db): State<Db>, cache: asdlc::State<Cache>) {}
            ),
        );
        assert!(!out.contains("compile_error"), "{out}");
        for expected in [
            "const __ASDLC_STATE_0 : :: asdlc :: __private :: StateExtractor < State < Db > > = :: asdlc :: __private :: state_param :: < State < Db > > () ;",
            "const __ASDLC_STATE_1 : :: asdlc :: __private :: StateExtractor < asdlc :: State < Cache > > = :: asdlc :: __private :: state_param :: < asdlc :: State < Cache > > () ;",
            "const __ASDLC_STATE : & [:: asdlc :: __private :: StateType] = & [__ASDLC_STATE_0 . ty , __ASDLC_STATE_1 . ty] ;",
            "fn required_state (& self) -> & [:: asdlc :: __private :: StateType] { __ASDLC_STATE }",
            "__asdlc_ctx_ref : & '__asdlc :: asdlc :: __private :: HandlerContext",
            "let __asdlc_ctx_ref : & :: asdlc :: __private :: HandlerContext = __asdlc_ctx_ref ;",
            "let __asdlc_state_0 = match (__ASDLC_STATE_0 . extract) (__asdlc_ctx_ref) { :: core :: option :: Option :: Some (state) => state , :: core :: option :: Option :: None => { return :: asdlc :: __private :: missing_state (__ASDLC_NAME , __ASDLC_STATE_0 . ty) ; } } ;",
            "let __asdlc_state_1 = match (__ASDLC_STATE_1 . extract) (__asdlc_ctx_ref)",
            "let __asdlc_future = h (__asdlc_event , __asdlc_state_0 , __asdlc_state_1) ;",
        ] {
            assert!(out.contains(expected), "missing `{expected}` in\n{out}");
        }

        let plain = expand_str(
            quote!(types = [TaskCreated], group = "g"),
            quote!(
                async fn h(e: &AsdlcEvent, ctx: &HandlerContext) {}
            ),
        );
        assert!(
            plain.contains("const __ASDLC_STATE : & [:: asdlc :: __private :: StateType] = & [] ;"),
            "{plain}"
        );
        assert!(!plain.contains("state_param"), "{plain}");
    }

    #[test]
    fn raw_identifiers_are_named_without_the_prefix() {
        let out = expand_str(
            quote!(types = [TaskCreated], group = "g"),
            quote!(
                async fn r#match(e: &AsdlcEvent) {}
            ),
        );
        assert!(out.contains("\"::\" , \"match\""), "{out}");
        assert!(out.contains("r#match (__asdlc_event)"), "{out}");
    }

    #[test]
    fn impl_trait_returns_skip_the_turbofish() {
        let out = expand_str(
            quote!(types = [TaskCreated], group = "g"),
            quote!(
                async fn h(e: &AsdlcEvent) -> impl IntoHandlerResult {}
            ),
        );
        assert!(
            out.contains("async move { __asdlc_into_handler_result (__asdlc_future . await) }"),
            "{out}"
        );
    }

    #[test]
    fn errors_keep_the_function_and_add_every_message() {
        let out = expand_str(
            quote!(types = [TaskCreate], group = "Bad"),
            quote!(
                fn h(e: AsdlcEvent) {}
            ),
        );
        assert!(out.starts_with("fn h (e : AsdlcEvent) { }"), "{out}");
        assert!(!out.contains("EventHandler"), "{out}");
        assert!(!out.contains("submit"), "{out}");
        // The types are still named, for rustc to check.
        assert!(
            out.contains("const _ : & [:: asdlc :: __private :: EventType] = & [:: asdlc :: __private :: EventType :: TaskCreate] ;"),
            "{out}"
        );
        let errors = compile_errors(&out);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("invalid group `Bad`"));
        assert!(errors[1].starts_with("an event handler must be an `async fn`"));
        assert!(errors[2].starts_with("the event parameter must be a reference"));
    }

    #[test]
    fn anything_but_a_function_is_refused_and_kept() {
        let out = expand_str(
            quote!(types = [TaskCreated], group = "g"),
            quote!(
                struct NotAFunction;
            ),
        );
        assert!(out.starts_with("struct NotAFunction ;"), "{out}");
        assert_eq!(
            compile_errors(&out),
            ["`#[event_handler]` goes on an `async fn`"]
        );
    }

    #[test]
    fn helpers_respan_and_spot_impl_trait() {
        assert!(mentions_impl(quote!(Result<impl Send, E>)));
        assert!(!mentions_impl(quote!(Result<Implied, E>)));
        let out = respan(quote!(a::b(c)), Span::call_site());
        assert_eq!(out.to_string(), "a :: b (c)");
    }
}
